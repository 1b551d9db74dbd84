//! The grids and blocks that flora's CUDA kernels (`kernels.cu`) are launched with, apart from
//! the CUDA bindings so that the kernel emulator's tests (`kernel_emulator.rs`) launch them the
//! same way on machines without a GPU.

/// Threads per block of the element and row kernels.
pub const BLOCK: u32 = 256;

/// A launch's grid (blocks) and block (threads), each CUDA's (x, y, z).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    /// Blocks in x, y and z.
    pub grid: [u32; 3],
    /// Threads per block in x, y and z.
    pub block: [u32; 3],
}

/// One thread per element of `len`.
pub fn elementwise(len: usize) -> LaunchShape {
    LaunchShape {
        grid: [(len as u32).div_ceil(BLOCK).max(1), 1, 1],
        block: [BLOCK, 1, 1],
    }
}

/// One block per row of `n`: up to 256 threads, a multiple of 32.
pub fn per_row(rows: usize, n: usize) -> LaunchShape {
    let threads = (n as u32).div_ceil(32).clamp(1, BLOCK / 32) * 32;
    LaunchShape {
        grid: [rows as u32, 1, 1],
        block: [threads, 1, 1],
    }
}

/// One row of blocks per row of a (rows, width) matrix (blockIdx.x), blocks of 256 columns
/// across it (blockIdx.y): element kernels whose index arithmetic works on rows and columns.
pub fn rows_by_columns(rows: usize, width: usize) -> LaunchShape {
    LaunchShape {
        grid: [rows as u32, (width as u32).div_ceil(BLOCK).max(1), 1],
        block: [BLOCK, 1, 1],
    }
}

/// Adjacent columns per thread of the kernels launched by [`rows_by_column_groups`].
pub const GROUP: usize = 8;

/// One row of blocks per row of a (rows, width) matrix (blockIdx.x), each thread [`GROUP`]
/// adjacent columns, blocks of 256 threads across the row (blockIdx.y): element kernels that
/// move eight elements at a time.
pub fn rows_by_column_groups(rows: usize, width: usize) -> LaunchShape {
    rows_by_columns(rows, width.div_ceil(GROUP))
}

/// One thread per [`GROUP`] adjacent elements of `len`.
pub fn element_groups(len: usize) -> LaunchShape {
    elementwise(len.div_ceil(GROUP))
}

/// One warp per row of `rows`: eight rows to a block of 256 threads.
pub fn warp_per_row(rows: usize) -> LaunchShape {
    LaunchShape {
        grid: [(rows as u32).div_ceil(BLOCK / 32).max(1), 1, 1],
        block: [BLOCK, 1, 1],
    }
}

/// Rows per chunk of the two-stage column sums, and the number of chunks, for `rows`.
pub fn chunks(rows: usize) -> (usize, usize) {
    let per = rows.div_ceil(512).max(64);
    (per, rows.div_ceil(per).max(1))
}

/// Blocks of (32, 8) threads over 32 columns by chunks of rows.
pub fn column_chunks(n: usize, chunks: usize) -> LaunchShape {
    LaunchShape {
        grid: [(n as u32).div_ceil(32), chunks as u32, 1],
        block: [32, 8, 1],
    }
}

/// Blocks of (32, 8) threads over 256 columns, a thread to [`GROUP`] adjacent columns, by chunks
/// of rows.
pub fn column_group_chunks(n: usize, chunks: usize) -> LaunchShape {
    column_chunks(n.div_ceil(GROUP), chunks)
}

/// Elements of a parameter tensor per block of LAMB's multi-tensor kernels: 64 per thread.
pub const LAMB_CHUNK: usize = 64 * BLOCK as usize;

/// The number of [`LAMB_CHUNK`]-element chunks of a tensor of `n` elements.
pub fn lamb_chunks(n: usize) -> usize {
    n.div_ceil(LAMB_CHUNK)
}

/// One block of 256 threads per item of `count` (chunks of tensors, or tensors); one block for
/// a count of 0 or 1.
pub fn blocks_of_256(count: usize) -> LaunchShape {
    LaunchShape {
        grid: [count.max(1) as u32, 1, 1],
        block: [BLOCK, 1, 1],
    }
}

/// Warps per block of the flash attention kernels (`FLASH_WARPS` in kernels.cu), each over 16
/// queries (or keys).
pub const FLASH_WARPS: u32 = 4;

/// The flash attention kernels' grid: tiles of 16 x [`FLASH_WARPS`] queries (or keys) of `len`
/// (blockIdx.x) by `batch_heads` heads (blockIdx.y).
pub fn flash_tiles(len: usize, batch_heads: usize) -> LaunchShape {
    LaunchShape {
        grid: [
            (len as u32).div_ceil(16 * FLASH_WARPS).max(1),
            batch_heads as u32,
            1,
        ],
        block: [32 * FLASH_WARPS, 1, 1],
    }
}
