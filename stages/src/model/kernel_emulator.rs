//! flora's CUDA kernels (`kernels.cu`) run on the CPU, so that every kernel is tested against its
//! CPU twin on machines without a GPU, CI's included. The kernels, the emulation of CUDA's
//! execution model in `kernel_emulator.hpp` (threads as fibers, `__syncthreads`, warp shuffles,
//! `__shared__` memory) and a launcher generated from the kernels' names are compiled with the
//! system's C++ compiler (`$CXX`, else `c++`) once per test run and loaded as a library.
//!
//! The tests launch each kernel with the shapes of `launch_shapes.rs`, as `fused_cuda.rs` does
//! on a GPU. They check what a kernel computes, including its indexing at ragged edges, its
//! barriers (a barrier some threads skip is an error here, a hang there), races that no barrier
//! orders (each launch runs with its threads in index order and in reverse, and the two results
//! must agree) and reads of shared memory that the block never wrote (it starts poisoned), not
//! its speed or the card's memory model: the GPU tests (`fused_cuda.rs`, `gpu_`) still check the
//! real thing.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::marker::PhantomData;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::launch_shapes::LaunchShape;

const KERNELS: &str = include_str!("kernels.cu");
const EMULATION: &str = include_str!("kernel_emulator.hpp");

/// Kernels that test the emulator itself, compiled beside `kernels.cu`'s.
const SELF_TEST_KERNELS: &str = r#"
// y[t] = x[t ^ mask] within each warp, through one shuffle.
extern "C" __global__ void emulator_shuffle(const float *x, float *y, int mask) {
  const int t = threadIdx.x;
  y[t] = __shfl_xor_sync(0xffffffffu, x[t], mask);
}

// Each thread writes its index to shared memory, then reads its neighbour's after a barrier.
extern "C" __global__ void emulator_shared(int *y) {
  __shared__ int sh[64];
  sh[threadIdx.x] = threadIdx.x + 100 * blockIdx.x;
  __syncthreads();
  y[blockIdx.x * blockDim.x + threadIdx.x] = sh[(threadIdx.x + 1) % blockDim.x];
}

// emulator_shared without its barrier: a thread may read its neighbour's slot before or after
// the neighbour writes it.
extern "C" __global__ void emulator_racy_shared(int *y) {
  __shared__ int sh[64];
  sh[threadIdx.x] = threadIdx.x + 100 * blockIdx.x;
  y[blockIdx.x * blockDim.x + threadIdx.x] = sh[(threadIdx.x + 1) % blockDim.x];
}

// Every block writes y[0]: which block's value stays depends on the order the blocks run.
extern "C" __global__ void emulator_racy_blocks(int *y) {
  if (threadIdx.x == 0) y[0] = blockIdx.x;
}

// Each block reads shared memory before writing it: poison (-1), whatever earlier blocks left.
extern "C" __global__ void emulator_fresh_shared(int *y) {
  __shared__ int sh[32];
  y[blockIdx.x * blockDim.x + threadIdx.x] = sh[threadIdx.x];
  __syncthreads();
  sh[threadIdx.x] = 7;
}

// Each lane writes the row that the next lane loads, and the warp loads them through ldmatrix
// with no barrier between: a row is read before or after its write depending on the lanes' order.
extern "C" __global__ void emulator_racy_ldmatrix(const bf16_bits *src, unsigned int *y) {
  __shared__ __align__(16) bf16_bits tile[32][8];
  const int lane = threadIdx.x & 31, next = (lane + 1) & 31;
  for (int c = 0; c < 8; c++) tile[next][c] = src[8 * next + c];
  unsigned int x[4];
  ldmatrix4(x, tile[lane]);
  for (int m = 0; m < 4; m++) y[4 * lane + m] = x[m];
}

// Every thread of the block writes, whatever n: past the end of a buffer of n.
extern "C" __global__ void emulator_unguarded(float *y, int n) {
  y[threadIdx.x] = (float)n;
}

// kernels.cu's bf16 conversions: x rounded to bf16 bits into y, and widened back into back.
extern "C" __global__ void emulator_bf16_round(const float *x, bf16_bits *y, float *back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    store(y, i, x[i]);
    back[i] = load(y, i);
  }
}

// Threads below n wait at two barriers, the others at one: undefined behaviour in CUDA.
extern "C" __global__ void emulator_divergent_barrier(int n) {
  if ((int)threadIdx.x < n) {
    __syncthreads();
  }
  __syncthreads();
}
"#;

/// A kernel argument: a buffer, borrowed for the launch, or a scalar.
pub struct Arg<'a> {
    value: Value,
    _borrow: PhantomData<&'a mut [u8]>,
}

enum Value {
    /// A buffer's start, its length in bytes, and whether the kernel may write it.
    Buffer(*mut u8, usize, bool),
    /// The address of the buffer's copy between guard bands, passed to the kernel.
    Address(*mut c_void),
    I32(i32),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl Arg<'_> {
    fn new(value: Value) -> Arg<'static> {
        Arg {
            value,
            _borrow: PhantomData,
        }
    }

    /// The type tag that `kernel_emulator.hpp`'s launcher checks against the kernel's parameter.
    fn tag(&self) -> u8 {
        match self.value {
            Value::Buffer(..) | Value::Address(_) => b'p',
            Value::I32(_) => b'i',
            Value::U64(_) => b'U',
            Value::F32(_) => b'f',
            Value::F64(_) => b'd',
        }
    }

    /// Where the value is, as cuLaunchKernel takes each argument.
    fn address(&mut self) -> *mut c_void {
        match &mut self.value {
            Value::Buffer(..) => unreachable!("buffers are staged before the launch"),
            Value::Address(p) => (p as *mut *mut c_void).cast(),
            Value::I32(v) => (v as *mut i32).cast(),
            Value::U64(v) => (v as *mut u64).cast(),
            Value::F32(v) => (v as *mut f32).cast(),
            Value::F64(v) => (v as *mut f64).cast(),
        }
    }
}

/// A buffer the kernel reads (of plain numbers: f32, i32, u32).
pub fn input<T: Copy>(x: &[T]) -> Arg<'_> {
    Arg {
        value: Value::Buffer(x.as_ptr() as *mut u8, std::mem::size_of_val(x), false),
        _borrow: PhantomData,
    }
}

/// A buffer the kernel writes.
pub fn output<T: Copy>(x: &mut [T]) -> Arg<'_> {
    Arg {
        value: Value::Buffer(x.as_mut_ptr().cast(), std::mem::size_of_val(x), true),
        _borrow: PhantomData,
    }
}

/// Bytes of guard band on each side of a buffer's copy: a kernel that writes outside its buffer
/// (a missing bounds check in the last block) changes them instead of the test's heap.
const GUARD: usize = 64 * 1024;

/// The byte the guard bands are filled with.
const CANARY: u8 = 0xA5;

/// A buffer argument's copy between guard bands, for the launch.
struct Staged {
    bytes: Vec<u8>,
    original: *mut u8,
    len: usize,
    writable: bool,
}

impl Staged {
    fn new(original: *mut u8, len: usize, writable: bool) -> Staged {
        let mut bytes = vec![CANARY; GUARD + len + GUARD];
        // SAFETY: `original` is a live buffer of `len` bytes, borrowed by the argument.
        #[allow(unsafe_code)]
        let data = unsafe { std::slice::from_raw_parts(original, len) };
        bytes[GUARD..GUARD + len].copy_from_slice(data);
        Staged {
            bytes,
            original,
            len,
            writable,
        }
    }

    /// Checks the guard bands and copies a written buffer back; which side of the buffer
    /// (described by `what`) was written, if one was.
    fn finish(&self, what: &str) -> Result<(), String> {
        let before = self.bytes[..GUARD].iter().any(|&b| b != CANARY);
        let after = self.bytes[GUARD + self.len..].iter().any(|&b| b != CANARY);
        if before || after {
            let side = if before { "before" } else { "after" };
            return Err(format!("the kernel wrote {side} {what}"));
        }
        let data = &self.bytes[GUARD..GUARD + self.len];
        if self.writable {
            // SAFETY: `original` is the live, mutably borrowed buffer of `len` bytes.
            #[allow(unsafe_code)]
            unsafe { std::slice::from_raw_parts_mut(self.original, self.len) }
                .copy_from_slice(data);
        } else {
            // SAFETY: as above, borrowed shared.
            #[allow(unsafe_code)]
            let original = unsafe { std::slice::from_raw_parts(self.original, self.len) };
            if original != data {
                return Err(format!("the kernel wrote {what}, an input"));
            }
        }
        Ok(())
    }
}

/// An `int` parameter.
pub fn int(v: usize) -> Arg<'static> {
    Arg::new(Value::I32(
        i32::try_from(v).expect("an int argument fits in i32"),
    ))
}

/// An `unsigned long long` parameter.
pub fn ulong(v: u64) -> Arg<'static> {
    Arg::new(Value::U64(v))
}

/// A `float` parameter.
pub fn float(v: f32) -> Arg<'static> {
    Arg::new(Value::F32(v))
}

/// A `double` parameter.
pub fn double(v: f64) -> Arg<'static> {
    Arg::new(Value::F64(v))
}

/// Buffers that a kernel reaches through a table of addresses (LAMB's multi-tensor kernels)
/// rather than as arguments: each is staged between guard bands as an argument is, and
/// [`Referenced::finish`] checks the bands and copies the written ones back after the launch.
#[derive(Default)]
pub struct Referenced<'a> {
    staged: Vec<Staged>,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> Referenced<'a> {
    /// The address, for the table, of a buffer the kernel reads.
    pub fn input<T: Copy>(&mut self, x: &'a [T]) -> u64 {
        self.stage(x.as_ptr() as *mut u8, std::mem::size_of_val(x), false)
    }

    /// The address, for the table, of a buffer the kernel writes.
    pub fn output<T: Copy>(&mut self, x: &'a mut [T]) -> u64 {
        self.stage(x.as_mut_ptr().cast(), std::mem::size_of_val(x), true)
    }

    fn stage(&mut self, original: *mut u8, len: usize, writable: bool) -> u64 {
        let mut copy = Staged::new(original, len, writable);
        let start = copy.bytes.as_mut_ptr();
        let label = format!("the buffer at table address {}", self.staged.len());
        REFERENCED.with(|r| r.borrow_mut().push((start, copy.bytes.len(), label)));
        self.staged.push(copy);
        start.wrapping_add(GUARD) as u64
    }

    /// Checks every buffer's guard bands and copies the written buffers back: the error names
    /// the buffer (in the order they were added) that the kernels wrote outside of, or wrote
    /// though it was an input.
    pub fn finish(self) -> Result<(), String> {
        for (k, staged) in self.staged.iter().enumerate() {
            staged.finish(&format!("the buffer at table address {k}"))?;
        }
        Ok(())
    }
}

impl Drop for Referenced<'_> {
    /// The copies leave the race check's list with the table.
    fn drop(&mut self) {
        let mine: Vec<*mut u8> = self
            .staged
            .iter_mut()
            .map(|s| s.bytes.as_mut_ptr())
            .collect();
        REFERENCED.with(|r| r.borrow_mut().retain(|(start, ..)| !mine.contains(start)));
    }
}

thread_local! {
    /// The staged copies of this thread's live [`Referenced`] tables (start, length with the
    /// guard bands, name): a launch can write them, so the race check compares them too.
    static REFERENCED: RefCell<Vec<(*mut u8, usize, String)>> = const { RefCell::new(Vec::new()) };
}

/// The emulator's schedules (`kernel_emulator.hpp`'s `schedule`): the block's threads, and the
/// grid's blocks, in reverse order, and each warp run up to its next block-wide barrier before
/// the next warp runs.
const REVERSE_THREADS: u32 = 1;
const REVERSE_BLOCKS: u32 = 2;
const WARP_AT_A_TIME: u32 = 4;

/// Bytes a launch can write: a staged copy with its guard bands, and its name for a message.
struct Region {
    start: *mut u8,
    len: usize,
    name: String,
}

impl Region {
    /// The region's bytes now.
    fn read(&self) -> Vec<u8> {
        // SAFETY: `start` is a staged copy of `len` bytes that lives until after the launch,
        // and no kernel runs while it is read.
        #[allow(unsafe_code)]
        unsafe { std::slice::from_raw_parts(self.start, self.len) }.to_vec()
    }

    /// Puts `bytes` (read from this region) back.
    fn restore(&self, bytes: &[u8]) {
        // SAFETY: as in `read`; nothing else holds a reference into the copy.
        #[allow(unsafe_code)]
        unsafe { std::slice::from_raw_parts_mut(self.start, self.len) }.copy_from_slice(bytes);
    }
}

/// The launcher's signature: kernel name, grid, block, argument tags, argument addresses, the
/// schedule, whether the launch made atomic adds (written), and a buffer for the error message.
type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    *const c_char,
    *mut *mut c_void,
    u32,
    *mut i32,
    *mut c_char,
    usize,
) -> i32;

/// The compiled kernels, loaded.
struct Emulator {
    library: libloading::Library,
}

/// The names of the kernels (`extern "C" __global__ void name(`) in `source`, in order.
pub fn kernel_names(source: &str) -> Vec<String> {
    source
        .split("__global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .map(|name| name.trim().to_string())
        .collect()
}

/// The launcher's source: the emulation, the kernels, and a dispatch on the kernel's name.
fn launcher_source() -> String {
    let mut src = String::from(
        "#include \"kernel_emulator.hpp\"\n#include \"kernels.cu\"\n#include \"self_test.cu\"\n\n\
         static int dispatch(const char *name, const unsigned *grid, const unsigned *block,\n\
         \x20   const char *tags, void **args, char *err, size_t err_len) {\n",
    );
    let names = kernel_names(KERNELS)
        .into_iter()
        .chain(kernel_names(SELF_TEST_KERNELS));
    for name in names {
        src.push_str(&format!(
            "  if (strcmp(name, \"{name}\") == 0)\n    return flora_emu::launch({name}, name, \
             grid, block, tags, args, err, err_len);\n"
        ));
    }
    src.push_str("  snprintf(err, err_len, \"no kernel named %s\", name);\n  return 2;\n}\n");
    src.push_str(
        "\nextern \"C\" int flora_emulated_launch(const char *name, const unsigned *grid,\n\
         \x20   const unsigned *block, const char *tags, void **args, unsigned schedule,\n\
         \x20   int *atomics, char *err, size_t err_len) {\n\
         \x20 flora_emu::schedule = schedule;\n\
         \x20 const int status = dispatch(name, grid, block, tags, args, err, err_len);\n\
         \x20 *atomics = flora_emu::atomics;\n\
         \x20 return status;\n}\n",
    );
    src
}

/// Writes the sources into a fresh directory and compiles them into a library. The directory
/// goes when this returns: the loaded library stays mapped, and the emulator lives in a static,
/// which is never dropped.
fn build() -> Result<Emulator, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).map_err(|e| format!("writing {name}: {e}"))
    };
    write("kernel_emulator.hpp", EMULATION)?;
    write("kernels.cu", KERNELS)?;
    write("self_test.cu", SELF_TEST_KERNELS)?;
    write("launcher.cpp", &launcher_source())?;
    let library = dir.path().join("libflora_kernels_emulated.so");
    compile(dir.path(), &library)?;
    // SAFETY: the library is the one just compiled; its initialisers only set up globals.
    #[allow(unsafe_code)]
    let library = unsafe { libloading::Library::new(&library) }
        .map_err(|e| format!("loading the emulated kernels: {e}"))?;
    Ok(Emulator { library })
}

/// Runs the C++ compiler on `dir`'s launcher.
fn compile(dir: &Path, library: &Path) -> Result<(), String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(library)
        .arg(dir.join("launcher.cpp"))
        .output()
        .map_err(|e| format!("running `{cxx}` (scripts/setup.sh installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cxx}` could not compile kernels.cu with the emulator:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let warnings = String::from_utf8_lossy(&out.stderr);
    if !warnings.trim().is_empty() {
        return Err(format!("`{cxx}` warned about kernels.cu:\n{warnings}"));
    }
    Ok(())
}

/// The emulator, built on first use. One launch at a time: the emulation's state and the
/// kernels' `__shared__` variables are globals.
fn emulator() -> &'static Mutex<Emulator> {
    static EMULATOR: OnceLock<Mutex<Emulator>> = OnceLock::new();
    EMULATOR.get_or_init(|| Mutex::new(build().unwrap_or_else(|e| panic!("{e}"))))
}

impl Emulator {
    /// Runs kernel `name` once with `schedule`: whether it made atomic adds, or the emulator's
    /// message.
    fn run(
        &self,
        name: &CString,
        shape: &LaunchShape,
        tags: &CString,
        addresses: &mut [*mut c_void],
        schedule: u32,
    ) -> Result<bool, String> {
        let mut err = vec![0u8; 512];
        let mut atomics = 0i32;
        // SAFETY: the symbol is the launcher generated with this signature; every address
        // points to a value in the caller's arguments, each buffer address into a staged copy
        // that lives until after the call, and the launcher checks the values' types against
        // the kernel's parameters before it calls the kernel.
        #[allow(unsafe_code)]
        let status = unsafe {
            let launch: libloading::Symbol<LaunchFn> = self
                .library
                .get(b"flora_emulated_launch\0")
                .map_err(|e| format!("the launcher: {e}"))?;
            launch(
                name.as_ptr(),
                shape.grid.as_ptr(),
                shape.block.as_ptr(),
                tags.as_ptr(),
                addresses.as_mut_ptr(),
                schedule,
                &mut atomics,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if status != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(String::from_utf8_lossy(&err[..end]).into_owned());
        }
        Ok(atomics != 0)
    }
}

/// Launches kernel `name` with `shape` and `args` on the CPU and waits for it; the emulator's
/// message when the kernel is unknown, its arguments do not match, a barrier is reached
/// divergently, the kernel writes outside its output buffers, or its result depends on the order
/// its threads run. Each buffer is copied between guard bands for the launch, and the written
/// ones copied back.
///
/// The race check: the kernel runs twice from the same bytes, its threads (and blocks) in index
/// order, and then in reverse and a warp at a time. That reverses the order of every two threads
/// between two barriers, and lets each warp run past its shuffles before the warps after it
/// start. Results that differ are a race that no barrier orders, which on a card gives one result
/// or the other by timing. Blocks keep their order in the second run when the kernel made atomic
/// adds: the order of those across blocks is not fixed on a card either.
pub fn try_launch(name: &str, shape: LaunchShape, mut args: Vec<Arg<'_>>) -> Result<(), String> {
    let emulator = emulator().lock().unwrap_or_else(|e| e.into_inner());
    let mut staged: Vec<(usize, Staged)> = Vec::new();
    for (k, arg) in args.iter_mut().enumerate() {
        if let Value::Buffer(p, len, writable) = arg.value {
            let mut copy = Staged::new(p, len, writable);
            arg.value = Value::Address(copy.bytes.as_mut_ptr().wrapping_add(GUARD).cast());
            staged.push((k, copy));
        }
    }
    let mut regions: Vec<Region> = staged
        .iter_mut()
        .map(|(k, copy)| Region {
            start: copy.bytes.as_mut_ptr(),
            len: copy.bytes.len(),
            name: format!("its buffer argument {k}"),
        })
        .collect();
    REFERENCED.with(|r| {
        regions.extend(r.borrow().iter().map(|(start, len, name)| Region {
            start: *start,
            len: *len,
            name: name.clone(),
        }))
    });
    let c_name = CString::new(name).expect("a kernel name");
    let tags = CString::new(args.iter().map(Arg::tag).collect::<Vec<u8>>()).expect("tags");
    let mut addresses: Vec<*mut c_void> = args.iter_mut().map(Arg::address).collect();
    let before: Vec<Vec<u8>> = regions.iter().map(Region::read).collect();
    let atomics = emulator.run(&c_name, &shape, &tags, &mut addresses, 0)?;
    let in_order: Vec<Vec<u8>> = regions.iter().map(Region::read).collect();
    for (region, bytes) in regions.iter().zip(&before) {
        region.restore(bytes);
    }
    let (reversed, which) = if atomics {
        (
            REVERSE_THREADS | WARP_AT_A_TIME,
            "each block's threads in reverse order, a warp at a time",
        )
    } else {
        (
            REVERSE_THREADS | REVERSE_BLOCKS | WARP_AT_A_TIME,
            "its threads and blocks in reverse order, a warp at a time",
        )
    };
    emulator
        .run(&c_name, &shape, &tags, &mut addresses, reversed)
        .map_err(|e| format!("with {which}: {e}"))?;
    for (region, want) in regions.iter().zip(&in_order) {
        let got = region.read();
        if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
            return Err(format!(
                "its result depends on the order its threads run (a race that no barrier \
                 orders): {} differs at byte {} between a run in index order and one with {which}",
                region.name,
                at as isize - GUARD as isize
            ));
        }
    }
    staged
        .iter()
        .try_for_each(|(k, copy)| copy.finish(&format!("its buffer argument {k}")))
}

/// [`try_launch`], panicking with the emulator's message.
pub fn launch(name: &str, shape: LaunchShape, args: Vec<Arg<'_>>) {
    if let Err(e) = try_launch(name, shape, args) {
        panic!("{name}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention_probs::Elem;
    use super::super::flash_attention::Dims;
    use super::super::fused::{
        gelu_and_slope, layer_norm_rows, layer_norm_rows_backward, softmax_in_place,
    };
    use super::super::gpu_ops::keep;
    use super::super::launch_shapes::{
        chunks, column_chunks, column_group_chunks, element_groups, elementwise, per_row,
        rows_by_column_groups, rows_by_columns, warp_per_row,
    };
    use super::super::layers::normal;
    use super::*;
    use crate::rng::Rng;
    use std::collections::HashMap;

    /// A launch of `blocks` blocks of `threads` threads, both along x.
    fn line(blocks: u32, threads: u32) -> LaunchShape {
        LaunchShape {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
        }
    }

    fn random(len: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| normal(&mut rng) * scale).collect()
    }

    /// Largest |a - b| / max(1, |b|).
    fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0, f32::max)
    }

    /// Elements of f32 or bf16 as f32.
    fn widen<T: Elem>(v: &[T]) -> Vec<f32> {
        v.iter().map(|x| x.get()).collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        let d = max_rel_diff(got, want);
        assert!(d < tol, "{what}: the emulated kernel differs by {d}");
    }

    #[test]
    fn every_kernel_has_an_emulated_test() {
        let this = include_str!("kernel_emulator.rs");
        let names = kernel_names(KERNELS);
        assert!(names.len() >= 12, "kernels.cu has {names:?}");
        for name in names {
            assert!(
                this.contains(&format!("\"{name}\",")),
                "kernel `{name}` of kernels.cu has no test here"
            );
        }
    }

    #[test]
    fn the_emulator_shuffles_within_warps() {
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        for mask in [1, 4, 16] {
            let mut y = vec![0f32; 64];
            let shape = line(1, 64);
            launch(
                "emulator_shuffle",
                shape,
                vec![input(&x), output(&mut y), int(mask)],
            );
            let want: Vec<f32> = (0..64).map(|i| (i ^ mask) as f32).collect();
            assert_eq!(y, want, "mask {mask}");
        }
    }

    #[test]
    fn the_emulator_shares_memory_within_a_block_after_a_barrier() {
        let mut y = vec![0i32; 3 * 40];
        let shape = line(3, 40);
        launch("emulator_shared", shape, vec![output(&mut y)]);
        for b in 0..3 {
            for t in 0..40 {
                assert_eq!(y[b * 40 + t], ((t + 1) % 40 + 100 * b) as i32);
            }
        }
    }

    /// Each launch runs twice, in index order and in reverse: a race between threads, or between
    /// blocks, that no barrier orders gives two results, and the launch fails saying so.
    #[test]
    fn the_emulator_finds_a_race_that_no_barrier_orders() {
        let shape = line(3, 40);
        let mut y = vec![0i32; 3 * 40];
        let err = try_launch("emulator_racy_shared", shape, vec![output(&mut y)]).unwrap_err();
        assert!(
            err.starts_with(
                "its result depends on the order its threads run (a race that no barrier \
                 orders): its buffer argument 0 differs at byte "
            ) && err.ends_with("its threads and blocks in reverse order, a warp at a time"),
            "{err}"
        );
        let mut y = vec![0i32; 1];
        let err = try_launch("emulator_racy_blocks", shape, vec![output(&mut y)]).unwrap_err();
        assert!(
            err.contains("its buffer argument 0 differs at byte 0 "),
            "{err}"
        );
        // Each lane reads its ldmatrix row as it arrives, not after the warp has gathered.
        let src: Vec<u16> = (0..256).collect();
        let mut y = vec![0u32; 128];
        let one_warp = line(1, 32);
        let args = vec![input(&src), output(&mut y)];
        let err = try_launch("emulator_racy_ldmatrix", one_warp, args).unwrap_err();
        assert!(err.contains("its buffer argument 1 differs"), "{err}");
        // Atomic adds across blocks keep their blocks' order in the second run: those sums are
        // in no fixed order on a card either. Three rows add into row 1 of the table, where
        // 1 + 1e8 - 1e8 is 0 in f32 and -1e8 + 1e8 + 1 is 1.
        let g: Vec<f32> = [1f32, 1e8, -1e8].iter().flat_map(|&x| [x; 40]).collect();
        let ids = [1u32, 1, 1];
        let mut table = vec![0f32; 2 * 40];
        launch(
            "scatter_add_rows",
            line(3, 40),
            vec![input(&g), input(&ids), output(&mut table), int(40)],
        );
        assert!(table[40..].iter().all(|&x| x == 0.0), "{table:?}");
    }

    /// Shared memory holds no values when a block starts (on a card, what the last block on the
    /// SM left): the emulator poisons it, so a read of an element no thread wrote shows.
    #[test]
    fn each_block_starts_with_poisoned_shared_memory() {
        let mut y = vec![0i32; 3 * 32];
        let shape = line(3, 32);
        launch("emulator_fresh_shared", shape, vec![output(&mut y)]);
        assert!(y.iter().all(|&v| v == -1), "{y:?}");
    }

    #[test]
    fn the_emulator_reports_a_barrier_that_some_threads_skip() {
        let shape = line(2, 64);
        let err = try_launch("emulator_divergent_barrier", shape, vec![int(32)]).unwrap_err();
        assert!(
            err.contains("waits at the __syncthreads on line")
                && err.contains("while others wait at line"),
            "{err}"
        );
        // Every thread reaching it is fine.
        try_launch("emulator_divergent_barrier", shape, vec![int(64)]).unwrap();
    }

    #[test]
    fn the_emulator_catches_writes_outside_a_buffer() {
        let mut y = vec![0f32; 40];
        let shape = line(1, 64);
        let err = try_launch("emulator_unguarded", shape, vec![output(&mut y), int(40)]);
        assert_eq!(
            err.unwrap_err(),
            "the kernel wrote after its buffer argument 0"
        );
        let mut y = vec![0f32; 64];
        try_launch("emulator_unguarded", shape, vec![output(&mut y), int(64)]).unwrap();
        assert!(y.iter().all(|&v| v == 64.0));
        // A kernel writing an input.
        let y = vec![0f32; 64];
        let err = try_launch("emulator_unguarded", shape, vec![input(&y), int(64)]);
        assert_eq!(
            err.unwrap_err(),
            "the kernel wrote its buffer argument 0, an input"
        );
    }

    #[test]
    fn the_emulator_rejects_arguments_of_the_wrong_type_or_number() {
        let x = vec![0f32; 4];
        let mut y = vec![0f32; 4];
        let err = try_launch(
            "gelu_fwd",
            elementwise(4),
            vec![input(&x), output(&mut y), int(4)],
        )
        .unwrap_err();
        assert!(err.contains("typed \"ppU\", given \"ppi\""), "{err}");
        let err = try_launch("no_such_kernel", elementwise(4), vec![int(4)]).unwrap_err();
        assert!(err.contains("no kernel named no_such_kernel"), "{err}");
    }

    #[test]
    fn layer_norm_matches_the_cpu() {
        // Rows narrower than a warp's multiple, as wide as the paper's model's (768), and wider
        // than a warp keeps in registers (1,100); a last block of rows that is not full.
        for (rows, n) in [(5, 50), (3, 256), (4, 300), (11, 768), (9, 1100)] {
            let x = random(rows * n, 1.5, 1);
            let (w, b) = (random(n, 1.0, 2), random(n, 1.0, 3));
            let mut y = vec![0f32; rows * n];
            launch(
                "ln_fwd",
                warp_per_row(rows),
                vec![
                    input(&x),
                    input(&w),
                    input(&b),
                    output(&mut y),
                    int(rows),
                    int(n),
                    float(1e-5),
                ],
            );
            assert_close("ln_fwd", &y, &layer_norm_rows(&x, &w, &b, 1e-5), 1e-5);
        }
    }

    /// `ln_bwd_rows` and `ln_bwd_cols` (with `plus`, their `_plus_{suffix}` twins, which add a
    /// second gradient `extra` as they read g), then `sum_chunks`, against the CPU's backward pass
    /// of the summed gradient.
    fn check_layer_norm_backward<E: Elem>(plus: Option<(&str, &[E])>, n: usize) {
        // 150 rows: three chunks of the column sums, the last one short.
        let rows = 150;
        let x = random(rows * n, 1.5, 4);
        let w = random(n, 1.0, 5);
        let g = random(rows * n, 1.0, 6);
        let len = rows * n;
        let (rows_kernel, cols_kernel) = match plus {
            Some((suffix, _)) => (
                format!("ln_bwd_rows_plus_{suffix}"),
                format!("ln_bwd_cols_plus_{suffix}"),
            ),
            None => ("ln_bwd_rows".to_string(), "ln_bwd_cols".to_string()),
        };
        let extra = plus.map(|(_, e)| e);
        let mut packed = vec![f32::NAN; len + 2 * n];
        let mut stats = vec![f32::NAN; 2 * rows];
        let mut args = vec![input(&x), input(&w), input(&g)];
        args.extend(extra.map(input));
        args.extend([
            output(&mut packed),
            output(&mut stats),
            int(rows),
            int(n),
            float(1e-5),
        ]);
        launch(&rows_kernel, warp_per_row(rows), args);
        let (per, count) = chunks(rows);
        assert_eq!(count, 3);
        let mut partial = vec![f32::NAN; count * 2 * n];
        let mut args = vec![input(&x), input(&g)];
        args.extend(extra.map(input));
        args.extend([
            input(&stats),
            output(&mut partial),
            int(rows),
            int(n),
            int(per),
        ]);
        launch(&cols_kernel, column_chunks(n, count), args);
        launch(
            "sum_chunks",
            elementwise(2 * n),
            vec![
                input(&partial),
                output(&mut packed),
                ulong(len as u64),
                int(2 * n),
                int(count),
            ],
        );
        let total: Vec<f32> = match plus {
            Some((_, e)) => g.iter().zip(e).map(|(g, e)| g + e.get()).collect(),
            None => g.clone(),
        };
        let (mut dx, mut dw, mut db) = (vec![0f32; len], vec![0f32; n], vec![0f32; n]);
        layer_norm_rows_backward(&x, &w, &total, 1e-5, &mut dx, (&mut dw, &mut db));
        assert_close(&format!("{rows_kernel} dx"), &packed[..len], &dx, 1e-4);
        assert_close(
            &format!("{cols_kernel} dw"),
            &packed[len..len + n],
            &dw,
            1e-4,
        );
        assert_close(&format!("{cols_kernel} db"), &packed[len + n..], &db, 1e-4);
    }

    #[test]
    fn layer_norm_backward_matches_the_cpu() {
        // "ln_bwd_rows", "ln_bwd_cols", "sum_chunks",
        // Rows that a warp keeps in registers, and rows longer than that.
        for n in [70, 1100] {
            check_layer_norm_backward::<f32>(None, n);
        }
    }

    #[test]
    fn layer_norm_backward_adds_a_second_gradient_in_f32_and_bf16() {
        // "ln_bwd_rows_plus_f32", "ln_bwd_cols_plus_f32",
        // "ln_bwd_rows_plus_bf16", "ln_bwd_cols_plus_bf16",
        for n in [70, 1100] {
            let extra = random(150 * n, 1.0, 7);
            check_layer_norm_backward(Some(("f32", &extra)), n);
            let extra: Vec<half::bf16> = extra.iter().map(|&v| half::bf16::from_f32(v)).collect();
            check_layer_norm_backward(Some(("bf16", &extra)), n);
        }
    }

    /// `bias_dropout_add_ln_{suffix}` on products of `T`, against its CPU twin (the dense
    /// epilogue, the sum, LayerNorm): without dropout the sums bit for bit; with it, within the
    /// kernel's multiplication by 1 / (1 - p) against the CPU's division.
    fn residual_layer_norm_matches<T: Elem>(suffix: &str) {
        use super::super::dense::Epilogue;
        use super::super::dense_epilogue::bias_epilogue_from;
        let name = format!("bias_dropout_add_ln_{suffix}");
        for (rows, n) in [(5, 50), (4, 300), (9, 1100)] {
            let product: Vec<T> = random(rows * n, 1.0, 11)
                .iter()
                .map(|&v| T::put(v))
                .collect();
            let r = random(rows * n, 2.0, 12);
            let (w, b, dense_bias) = (random(n, 1.0, 13), random(n, 1.0, 14), random(n, 1.0, 15));
            for p in [0.0f32, 0.3] {
                let (mut sum, mut out) = (vec![f32::NAN; rows * n], vec![f32::NAN; rows * n]);
                launch(
                    &name,
                    warp_per_row(rows),
                    vec![
                        input(&product),
                        input(&dense_bias),
                        input(&r),
                        input(&w),
                        input(&b),
                        output(&mut sum),
                        output(&mut out),
                        int(rows),
                        int(n),
                        float(p),
                        ulong(23),
                        float(1e-5),
                    ],
                );
                let epilogue = match p {
                    0.0 => Epilogue::None,
                    rate => Epilogue::Dropout { rate, seed: 23 },
                };
                let mut want = vec![0f32; rows * n];
                bias_epilogue_from(&product, &dense_bias, epilogue, 0, &mut want);
                want.iter_mut().zip(&r).for_each(|(y, r)| *y += r);
                if p == 0.0 {
                    assert_eq!(sum, want, "{name}'s sums");
                }
                assert_close(&format!("{name} p {p} sums"), &sum, &want, 1e-6);
                let normed = layer_norm_rows(&sum, &w, &b, 1e-5);
                assert_close(&format!("{name} p {p}"), &out, &normed, 1e-5);
            }
        }
    }

    #[test]
    fn the_dense_output_residual_add_and_layer_norm_match_the_cpu() {
        // "bias_dropout_add_ln_f32", "bias_dropout_add_ln_bf16",
        residual_layer_norm_matches::<f32>("f32");
        residual_layer_norm_matches::<half::bf16>("bf16");
    }

    /// `ln_bwd_rows_to_{suffix}` (with `extra`, `ln_bwd_rows_plus_to_{suffix}`, whose second
    /// gradient is of `U` too): dx as `ln_bwd_rows` writes it, and beside it dx through dropout
    /// at p in `U`, against the CPU's backward pass then `dropout_to_from`.
    fn check_layer_norm_backward_to<U: Elem>(suffix: &str, extra: Option<&[U]>, p: f32, n: usize) {
        use super::super::dense_epilogue::dropout_to_from;
        let rows = 37;
        let len = rows * n;
        let x = random(len, 1.5, 4);
        let w = random(n, 1.0, 5);
        let g = random(len, 1.0, 6);
        let name = match extra {
            Some(_) => format!("ln_bwd_rows_plus_to_{suffix}"),
            None => format!("ln_bwd_rows_to_{suffix}"),
        };
        let mut dx = vec![f32::NAN; len];
        let mut stats = vec![f32::NAN; 2 * rows];
        let mut dz = vec![U::put(f32::NAN); len];
        let mut args = vec![input(&x), input(&w), input(&g)];
        args.extend(extra.map(input));
        args.extend([
            output(&mut dx),
            output(&mut stats),
            output(&mut dz),
            int(rows),
            int(n),
            float(1e-5),
            float(p),
            ulong(29),
        ]);
        launch(&name, warp_per_row(rows), args);
        let total: Vec<f32> = match extra {
            Some(e) => g.iter().zip(e).map(|(g, e)| g + e.get()).collect(),
            None => g.clone(),
        };
        let (mut want, mut dw, mut db) = (vec![0f32; len], vec![0f32; n], vec![0f32; n]);
        layer_norm_rows_backward(&x, &w, &total, 1e-5, &mut want, (&mut dw, &mut db));
        assert_close(&format!("{name} p {p} dx"), &dx, &want, 1e-4);
        // dz from the kernel's own dx: the mask and the rounding, exactly but for 1 / (1 - p).
        let mut want_dz = vec![U::put(0.0); len];
        dropout_to_from(&dx, p, 29, 0, &mut want_dz);
        let (got, want_dz) = (widen(&dz), widen(&want_dz));
        if p == 0.0 {
            assert_eq!(got, want_dz, "{name} p {p} dz");
        }
        assert_close(&format!("{name} p {p} dz"), &got, &want_dz, 1e-5);
        let zeros = got.iter().filter(|&&v| v == 0.0).count();
        assert_eq!(
            zeros,
            want_dz.iter().filter(|&&v| v == 0.0).count(),
            "{name}: the mask"
        );
    }

    #[test]
    fn layer_norm_backward_writes_the_dense_layers_gradient_in_f32_and_bf16() {
        // "ln_bwd_rows_to_f32", "ln_bwd_rows_plus_to_f32",
        // "ln_bwd_rows_to_bf16", "ln_bwd_rows_plus_to_bf16",
        for n in [70, 1100] {
            for p in [0.0, 0.25] {
                let extra = random(37 * n, 1.0, 7);
                check_layer_norm_backward_to::<f32>("f32", None, p, n);
                check_layer_norm_backward_to::<f32>("f32", Some(&extra), p, n);
                let extra: Vec<half::bf16> =
                    extra.iter().map(|&v| half::bf16::from_f32(v)).collect();
                check_layer_norm_backward_to::<half::bf16>("bf16", None, p, n);
                check_layer_norm_backward_to::<half::bf16>("bf16", Some(&extra), p, n);
            }
        }
    }

    /// `qkv_heads_{suffix}` and `qkv_merge_{suffix}` on values of `T`, against their CPU twins in
    /// `qkv.rs`: the same values, placed the same.
    fn qkv_kernels_match<T: Elem + Default>(suffix: &str) {
        use super::super::qkv::Heads;
        // Heads of 23 features, 4 of them, 2 sequences of 7: no length a multiple of another, so
        // every group of eight columns goes element by element.
        qkv_kernels_match_at::<T>(
            suffix,
            Heads {
                batch: 2,
                len: 7,
                heads: 4,
                head_dim: 23,
            },
        );
        // Heads of 232 features (groups of eight that stay inside a head, aligned), rows of 2,088
        // columns: one block of 256 groups and a ragged second.
        qkv_kernels_match_at::<T>(
            suffix,
            Heads {
                batch: 2,
                len: 5,
                heads: 3,
                head_dim: 232,
            },
        );
    }

    fn qkv_kernels_match_at<T: Elem + Default>(suffix: &str, s: super::super::qkv::Heads) {
        use super::super::qkv::{heads_layout_cpu, qkv_heads_cpu, qkv_merge_cpu};
        // The context's heads layout, both ways.
        let n = s.rows() * s.hidden();
        let x: Vec<T> = random(n, 1.0, 60).iter().map(|&v| T::put(v)).collect();
        let shape_args = || [int(s.len), int(s.heads), int(s.head_dim), int(s.rows())];
        for (way, to_heads) in [("split", true), ("merge", false)] {
            let mut y = vec![T::default(); n];
            let mut args = vec![input(&x), output(&mut y)];
            args.extend(shape_args());
            let name = format!("heads_{way}_{suffix}");
            launch(&name, rows_by_column_groups(s.rows(), s.hidden()), args);
            assert_eq!(
                widen(&y),
                widen(&heads_layout_cpu(&x, s, to_heads)),
                "{name}"
            );
        }
        let width = 3 * s.hidden();
        let total = s.rows() * width;
        let product: Vec<T> = random(total, 1.0, 61).iter().map(|&v| T::put(v)).collect();
        let bias = random(width, 1.0, 62);
        let mut heads_out = vec![T::default(); total];
        let grid = rows_by_column_groups(s.rows(), width);
        assert_eq!(grid.grid[1] as usize, 1 + usize::from(width > 2048));
        let mut args = vec![input(&product), input(&bias), output(&mut heads_out)];
        args.extend(shape_args());
        launch(&format!("qkv_heads_{suffix}"), grid, args);
        let want = qkv_heads_cpu(&product, &bias, s);
        assert_eq!(widen(&heads_out), widen(&want), "qkv_heads_{suffix}");
        let g: Vec<T> = random(total, 1.0, 63).iter().map(|&v| T::put(v)).collect();
        let per = total / 3;
        let (dq, dk, dv) = (&g[..per], &g[per..2 * per], &g[2 * per..]);
        let mut merged = vec![T::default(); total];
        let mut args = vec![input(dq), input(dk), input(dv), output(&mut merged)];
        args.extend(shape_args());
        launch(&format!("qkv_merge_{suffix}"), grid, args);
        let want = qkv_merge_cpu([dq, dk, dv], s);
        assert_eq!(widen(&merged), widen(&want), "qkv_merge_{suffix}");
    }

    #[test]
    fn the_projections_heads_and_their_merge_match_the_cpu() {
        // "qkv_heads_f32", "qkv_merge_f32", "qkv_heads_bf16", "qkv_merge_bf16", "heads_split_f32",
        // "heads_merge_f32", "heads_split_bf16", "heads_merge_bf16",
        qkv_kernels_match::<f32>("f32");
        qkv_kernels_match::<half::bf16>("bf16");
    }

    #[test]
    fn softmax_and_its_backward_match_the_cpu() {
        let (rows, n) = (6, 37);
        let mut x = random(rows * n, 3.0, 7);
        // A masked key, as the attention's additive mask makes.
        x[5] = -1e9;
        let mut y = vec![0f32; rows * n];
        launch(
            "softmax_fwd",
            per_row(rows, n),
            vec![input(&x), output(&mut y), int(n)],
        );
        let mut want = x.clone();
        want.chunks_mut(n).for_each(softmax_in_place);
        assert_close("softmax_fwd", &y, &want, 1e-6);
        assert_eq!(y[5], 0.0);

        let g = random(rows * n, 1.0, 8);
        let mut dx = vec![0f32; rows * n];
        launch(
            "softmax_bwd",
            per_row(rows, n),
            vec![input(&y), input(&g), output(&mut dx), int(n)],
        );
        let want: Vec<f32> = y
            .chunks(n)
            .zip(g.chunks(n))
            .flat_map(|(y, g)| {
                let s: f64 = y.iter().zip(g).map(|(a, b)| (a * b) as f64).sum();
                y.iter()
                    .zip(g)
                    .map(move |(a, b)| (*a as f64 * (*b as f64 - s)) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_close("softmax_bwd", &dx, &want, 1e-6);
    }

    #[test]
    fn bf16_conversions_round_to_nearest_even_as_half_does() {
        let mut x = crate::testing::bf16_rounding_cases();
        // NaNs, one whose payload would round away.
        x.extend([f32::NAN, f32::from_bits(0x7f80_0001)]);
        x.extend(random(1000, 100.0, 31));
        let n = x.len();
        let mut y = vec![half::bf16::ZERO; n];
        let mut back = vec![0f32; n];
        launch(
            "emulator_bf16_round",
            elementwise(n),
            vec![input(&x), output(&mut y), output(&mut back), int(n)],
        );
        for i in 0..n {
            let want = half::bf16::from_f32(x[i]);
            if x[i].is_nan() {
                assert!(y[i].is_nan() && back[i].is_nan(), "{}: {:?}", x[i], y[i]);
                continue;
            }
            assert_eq!(y[i].to_bits(), want.to_bits(), "{} rounds to {want}", x[i]);
            assert_eq!(back[i].to_bits(), want.to_f32().to_bits(), "{}", x[i]);
        }
    }

    /// The scores, key mask and dropout of an attention problem: (batch, heads, queries, keys).
    fn attention_problem(dims: (usize, usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
        let (b, h, q, k) = dims;
        let scores = random(b * h * q * k, 3.0, 41);
        // The second sequence's last three keys are padding.
        let mask = (0..b * k)
            .map(|i| {
                if i / k == 1 && i % k >= k - 3 {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        (scores, mask)
    }

    /// `attention_probs_{suffix}` and `attention_probs_grad_{suffix}` on elements of type `T`,
    /// against their CPU twins in `attention_probs.rs`, within `tol`.
    fn attention_probs_kernels_match<T>(suffix: &str, tol: f32)
    where
        T: super::super::attention_probs::Elem + Default + PartialEq + std::fmt::Debug,
    {
        use super::super::attention_probs::{probs_grad_row, probs_row};
        let to_t = |v: &[f32]| v.iter().map(|&x| T::put(x)).collect::<Vec<T>>();
        // Keys fewer than a warp (and 30 rows: a block of eight rows and a ragged last), more
        // than a block's threads, and more than a warp keeps in registers (read again in each
        // pass).
        for dims in [(2, 3, 5, 19), (2, 2, 3, 300), (2, 1, 3, 600)] {
            let (_, h, q, k) = dims;
            let (scores, mask) = attention_problem(dims);
            let scores = to_t(&scores);
            let len = scores.len();
            let (scale, seed) = (0.125f32, 77u64);
            for p in [0.0f32, 0.2] {
                let mut probs = vec![T::default(); len];
                let mut dropped = vec![T::default(); len];
                launch(
                    &format!("attention_probs_{suffix}"),
                    warp_per_row(len / k),
                    vec![
                        input(&scores),
                        input(&mask),
                        output(&mut probs),
                        output(&mut dropped),
                        int(len / k),
                        int(k),
                        int(h * q),
                        float(scale),
                        float(p),
                        ulong(seed),
                    ],
                );
                let (mut want_p, mut want_d) = (vec![T::default(); len], vec![T::default(); len]);
                for r in 0..len / k {
                    let rows = r * k..(r + 1) * k;
                    let batch = r / (h * q);
                    probs_row(
                        &scores[rows.clone()],
                        &mask[batch * k..(batch + 1) * k],
                        scale,
                        Some((p, seed)),
                        (r * k) as u64,
                        (&mut want_p[rows.clone()], &mut want_d[rows]),
                    );
                }
                let what = format!("attention_probs_{suffix} {dims:?} p {p}");
                assert_close(&what, &widen(&probs), &widen(&want_p), tol);
                if p > 0.0 {
                    assert_close(&what, &widen(&dropped), &widen(&want_d), tol);
                } else {
                    // Without dropout there is no copy: the context product reads probs.
                    assert!(dropped.iter().all(|x| *x == T::default()), "{what}: a copy");
                }
                // The padding keys of the second sequence get nothing.
                let row = (h * q) * k; // the second sequence's first row
                assert!(widen(&probs[row + k - 3..row + k])
                    .iter()
                    .all(|&v| v == 0.0));

                let grad = to_t(&random(len, 1.0, 43));
                let mut ds = vec![T::default(); len];
                launch(
                    &format!("attention_probs_grad_{suffix}"),
                    warp_per_row(len / k),
                    vec![
                        input(&probs),
                        input(&dropped),
                        input(&grad),
                        output(&mut ds),
                        int(len / k),
                        int(k),
                        float(scale),
                        float(p),
                    ],
                );
                let mut want = vec![T::default(); len];
                for (r, w) in want.chunks_mut(k).enumerate() {
                    let rows = r * k..(r + 1) * k;
                    probs_grad_row(
                        &probs[rows.clone()],
                        &dropped[rows.clone()],
                        &grad[rows],
                        scale,
                        p,
                        w,
                    );
                }
                let what = format!("attention_probs_grad_{suffix} {dims:?} p {p}");
                assert_close(&what, &widen(&ds), &widen(&want), tol);
            }
        }
    }

    #[test]
    fn attention_probabilities_and_their_backward_match_the_cpu_in_f32() {
        // Names for `every_kernel_has_an_emulated_test`: "attention_probs_f32",
        // "attention_probs_grad_f32",
        attention_probs_kernels_match::<f32>("f32", 1e-6);
    }

    #[test]
    fn attention_probabilities_and_their_backward_match_the_cpu_in_bf16() {
        // "attention_probs_bf16", "attention_probs_grad_bf16",
        // Sums in a different order may round a result to the neighbouring bf16: 2^-8 apart.
        attention_probs_kernels_match::<half::bf16>("bf16", 8e-3);
    }

    #[test]
    fn gelu_and_its_backward_match_the_cpu() {
        // Not a multiple of the block: the last block's extra threads write nothing.
        let len = 1000;
        let x = random(len, 3.0, 9);
        let mut y = vec![f32::NAN; len + 1];
        launch(
            "gelu_fwd",
            elementwise(len),
            vec![input(&x), output(&mut y), ulong(len as u64)],
        );
        assert!(y[len].is_nan(), "gelu_fwd wrote past the end");
        let want: Vec<f32> = x.iter().map(|&v| gelu_and_slope(v).0).collect();
        assert_close("gelu_fwd", &y[..len], &want, 1e-6);

        let g = random(len, 1.0, 10);
        let mut dx = vec![0f32; len];
        launch(
            "gelu_bwd",
            elementwise(len),
            vec![input(&x), input(&g), output(&mut dx), ulong(len as u64)],
        );
        let want: Vec<f32> = x
            .iter()
            .zip(&g)
            .map(|(&v, &g)| g * gelu_and_slope(v).1)
            .collect();
        assert_close("gelu_bwd", &dx, &want, 1e-5);
    }

    #[test]
    fn row_gathers_and_their_scatter_match_the_cpu() {
        // Rows of 260 features: a block of 256 and a ragged second.
        let (rows, n, picked) = (30, 260, 100);
        let table = random(rows * n, 1.0, 11);
        let ids: Vec<u32> = (0..picked as u32).map(|i| (i * 7) % rows as u32).collect();
        let len = picked * n;
        let mut y = vec![0f32; len];
        launch(
            "gather_rows",
            rows_by_columns(picked, n),
            vec![input(&table), input(&ids), output(&mut y), int(n)],
        );
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            assert_eq!(y[t * n..(t + 1) * n], table[id * n..(id + 1) * n]);
        }

        let g = random(len, 1.0, 12);
        let mut dtable = vec![0f32; rows * n];
        launch(
            "scatter_add_rows",
            rows_by_columns(picked, n),
            vec![input(&g), input(&ids), output(&mut dtable), int(n)],
        );
        let mut want = vec![0f32; rows * n];
        for (t, &id) in ids.iter().enumerate() {
            for j in 0..n {
                want[id as usize * n + j] += g[t * n + j];
            }
        }
        assert_close("scatter_add_rows", &dtable, &want, 1e-6);
    }

    #[test]
    fn the_embeddings_sum_matches_the_cpu() {
        // "embed_sum",
        // Rows of 301 (off 16-byte boundaries, a ragged last group) and of 2,104 (two blocks
        // of groups); ids and positions that repeat.
        for n in [301, 2104] {
            let (vocab, places, tokens) = (40, 12, 50);
            let word = random(vocab * n, 1.0, 13);
            let pos_type = random(places * n, 1.0, 14);
            let ids: Vec<u32> = (0..tokens as u32).map(|i| i * 7 % vocab as u32).collect();
            let positions: Vec<u32> = (0..tokens as u32).map(|i| i % places as u32).collect();
            let ids2 = [ids.clone(), positions.clone()].concat();
            let mut x = vec![f32::NAN; tokens * n];
            launch(
                "embed_sum",
                rows_by_column_groups(tokens, n),
                vec![
                    input(&word),
                    input(&pos_type),
                    input(&ids2),
                    output(&mut x),
                    int(n),
                    int(tokens),
                ],
            );
            let want: Vec<f32> = (0..tokens)
                .flat_map(|t| {
                    let (a, b) = (ids[t] as usize * n, positions[t] as usize * n);
                    (0..n).map(move |j| (a + j, b + j))
                })
                .map(|(a, b)| word[a] + pos_type[b])
                .collect();
            assert_eq!(x, want, "embed_sum of rows of {n}");
        }
    }

    #[test]
    fn bias_add_and_column_sums_match_the_cpu() {
        // 704 rows: eleven chunks, one group of eight and three more for sum_chunks.
        let (rows, n) = (704, 270);
        let x = random(rows * n, 1.0, 13);
        let b = random(n, 1.0, 14);
        let mut y = vec![0f32; rows * n];
        launch(
            "bias_add",
            rows_by_columns(rows, n),
            vec![input(&x), input(&b), output(&mut y), int(n)],
        );
        let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + b[i % n]).collect();
        assert_close("bias_add", &y, &want, 1e-6);

        let (per, count) = chunks(rows);
        let mut partial = vec![f32::NAN; count * n];
        launch(
            "col_sum_chunks",
            column_chunks(n, count),
            vec![input(&x), output(&mut partial), int(rows), int(n), int(per)],
        );
        let mut sums = vec![f32::NAN; n + 3];
        launch(
            "sum_chunks",
            elementwise(n),
            vec![
                input(&partial),
                output(&mut sums),
                ulong(3),
                int(n),
                int(count),
            ],
        );
        assert!(
            sums[..3].iter().all(|v| v.is_nan()),
            "wrote before the offset"
        );
        let want: Vec<f32> = (0..n)
            .map(|j| (0..rows).map(|r| x[r * n + j] as f64).sum::<f64>() as f32)
            .collect();
        assert_close("column sums", &sums[3..], &want, 1e-5);
        // The chunks are added in order, whatever the grouping of their loads.
        let in_order: Vec<f32> = (0..n)
            .map(|j| (0..count).fold(0f32, |s, c| s + partial[c * n + j]))
            .collect();
        assert_eq!(count, 11);
        assert_eq!(sums[3..], in_order[..], "sum_chunks adds in chunk order");
    }

    /// Epilogue kernel `name` on a product of `T` into an output of `U`, with each epilogue,
    /// against `bias_epilogue_from`.
    fn check_epilogue<T, U>(name: &str, product: &[T], bias: &[f32], tol: f32)
    where
        T: super::super::attention_probs::Elem,
        U: super::super::attention_probs::Elem + Default,
    {
        use super::super::dense::Epilogue;
        use super::super::dense_epilogue::bias_epilogue_from;
        let (len, n) = (product.len(), bias.len());
        let epilogues = [
            (Epilogue::None, 0, 0.0, 0),
            (Epilogue::Gelu, 1, 0.0, 0),
            (Epilogue::Dropout { rate: 0.3, seed: 9 }, 0, 0.3, 9),
        ];
        for (epilogue, gelu, p, seed) in epilogues {
            let mut y = vec![U::default(); len];
            launch(
                name,
                rows_by_column_groups(len / n, n),
                vec![
                    input(product),
                    input(bias),
                    output(&mut y),
                    int(n),
                    int(gelu),
                    float(p),
                    ulong(seed),
                ],
            );
            let mut want = vec![U::default(); len];
            bias_epilogue_from(product, bias, epilogue, 0, &mut want);
            assert_close(
                &format!("{name} {epilogue:?}"),
                &widen(&y),
                &widen(&want),
                tol,
            );
        }
    }

    /// GELU-gradient kernel `name` on a product of `T` and a gradient `g` of `G`, against
    /// `bias_gelu_grad_from`: the kernel's result.
    fn check_gelu_grad<T, G>(name: &str, product: &[T], bias: &[f32], g: &[G], tol: f32) -> Vec<T>
    where
        T: super::super::attention_probs::Elem + Default,
        G: super::super::attention_probs::Elem,
    {
        use super::super::dense_epilogue::bias_gelu_grad_from;
        let (len, n) = (product.len(), bias.len());
        let mut dz = vec![T::default(); len];
        launch(
            name,
            rows_by_column_groups(len / n, n),
            vec![
                input(product),
                input(bias),
                input(g),
                output(&mut dz),
                int(n),
            ],
        );
        let mut want = vec![T::default(); len];
        bias_gelu_grad_from(product, bias, g, 0, &mut want);
        assert_close(name, &widen(&dz), &widen(&want), tol);
        dz
    }

    /// `bias_epilogue_{suffix}`, `bias_gelu_grad_{suffix}` (and in bf16 `dropout_to_bf16` and
    /// `col_sum_chunks_bf16`) on products of type `T`, against their CPU twins in
    /// `dense_epilogue.rs`, within `tol`.
    fn dense_epilogue_kernels_match<T>(suffix: &str, tol: f32)
    where
        T: super::super::attention_probs::Elem + Default,
    {
        // Rows of 300: groups of eight and a ragged last group of four, rows that start on and
        // off 16-byte boundaries; rows of 2,104: two blocks of groups.
        for (rows, n) in [(37, 300), (3, 2104)] {
            dense_epilogue_kernels_match_at::<T>(suffix, tol, rows, n);
        }
    }

    fn dense_epilogue_kernels_match_at<T>(suffix: &str, tol: f32, rows: usize, n: usize)
    where
        T: super::super::attention_probs::Elem + Default,
    {
        use super::super::dense_epilogue::dropout_to_from;
        let len = rows * n;
        let product: Vec<T> = random(len, 2.0, 51).iter().map(|&v| T::put(v)).collect();
        let bias = random(n, 1.0, 52);
        check_epilogue::<T, f32>(&format!("bias_epilogue_{suffix}"), &product, &bias, 1e-6);
        let g = random(len, 1.0, 53);
        let dz = check_gelu_grad(
            &format!("bias_gelu_grad_{suffix}"),
            &product,
            &bias,
            &g,
            tol,
        );
        if suffix != "bf16" {
            return;
        }
        // An output that only the next product reads stays bf16, and so does its gradient.
        check_epilogue::<T, T>("bias_epilogue_bf16_to_bf16", &product, &bias, tol);
        let g_bf16: Vec<T> = g.iter().map(|&v| T::put(v)).collect();
        check_gelu_grad(
            "bias_gelu_grad_bf16_from_bf16",
            &product,
            &bias,
            &g_bf16,
            tol,
        );
        for p in [0.0f32, 0.25] {
            let mut y = vec![T::default(); len];
            launch(
                "dropout_to_bf16",
                element_groups(len),
                vec![
                    input(&g),
                    output(&mut y),
                    float(p),
                    ulong(17),
                    ulong(len as u64),
                ],
            );
            let mut want = vec![T::default(); len];
            dropout_to_from(&g, p, 17, 0, &mut want);
            assert_close(
                &format!("dropout_to_bf16 p {p}"),
                &widen(&y),
                &widen(&want),
                1e-7,
            );
        }
        // A layer's input gradient: f32 plus bf16 into f32.
        let mut sum = vec![f32::NAN; len];
        launch(
            "add_bf16_to_f32",
            element_groups(len),
            vec![input(&g), input(&dz), output(&mut sum), ulong(len as u64)],
        );
        let want: Vec<f32> = g.iter().zip(&dz).map(|(a, b)| a + b.get()).collect();
        assert_eq!(sum, want, "add_bf16_to_f32");
        let (per, count) = chunks(rows);
        let mut partial = vec![f32::NAN; count * n];
        launch(
            "col_sum_chunks_bf16",
            column_group_chunks(n, count),
            vec![
                input(&dz),
                output(&mut partial),
                int(rows),
                int(n),
                int(per),
            ],
        );
        let want: Vec<f32> = (0..n)
            .map(|j| (0..rows).map(|r| dz[r * n + j].get() as f64).sum::<f64>() as f32)
            .collect();
        let sums: Vec<f32> = (0..n)
            .map(|j| (0..count).map(|c| partial[c * n + j]).sum())
            .collect();
        assert_close("col_sum_chunks_bf16", &sums, &want, 1e-5);
    }

    #[test]
    fn the_dense_epilogues_and_their_backward_match_the_cpu_in_f32() {
        // "bias_epilogue_f32", "bias_gelu_grad_f32",
        dense_epilogue_kernels_match::<f32>("f32", 1e-6);
    }

    #[test]
    fn the_dense_epilogues_and_their_backward_match_the_cpu_in_bf16() {
        // "bias_epilogue_bf16", "bias_gelu_grad_bf16", "dropout_to_bf16", "col_sum_chunks_bf16",
        // "add_bf16_to_f32",
        // "bias_epilogue_bf16_to_bf16", "bias_gelu_grad_bf16_from_bf16",
        dense_epilogue_kernels_match::<half::bf16>("bf16", 8e-3);
    }

    /// The MLM loss's two kernels against `mlm_loss.rs`'s twins, for logits of `T`: rows of a
    /// vocabulary of n in rows of `stride` (padded to a multiple of 8, or not: rows that start
    /// off 16-byte boundaries and a ragged last group), with a tie for the argmax at a target.
    fn mlm_loss_kernels_match<T>(suffix: &str, tol: f32)
    where
        T: super::super::attention_probs::Elem + Default,
    {
        use super::super::mlm_loss::{row_grad, row_loss};
        // Rows of 300 in 304 and in 300; rows of 2,101 in 2,104: more groups than threads.
        for (rows, n, stride) in [(13, 300, 304), (7, 300, 300), (3, 2101, 2104)] {
            let mut z = random(rows * stride, 3.0, 61);
            let targets: Vec<u32> = (0..rows).map(|r| (r * 37 % n) as u32).collect();
            // Rows 0 to 2 tie for their largest logit between the target and another column
            // that another thread (rows 0 and 1) or warp (row 2) scans: the first counts.
            let mut bias = random(n, 1.0, 62);
            let ties = [(0, 8, 1.0), (1, 5, 0.0), (2, 260, 1.0)];
            for (r, other, _) in ties {
                for c in [targets[r] as usize, other] {
                    z[r * stride + c] = 40.0;
                    bias[c] = 0.0;
                }
            }
            let logits: Vec<T> = z.iter().map(|&v| T::put(v)).collect();
            let mut out = vec![f32::NAN; rows * 4];
            launch(
                &format!("mlm_xent_rows_{suffix}"),
                per_row(rows, n.div_ceil(8)),
                vec![
                    input(&logits),
                    input(&bias),
                    input(&targets),
                    output(&mut out),
                    int(n),
                    int(stride),
                ],
            );
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let row = &logits[r * stride..r * stride + n];
                    row_loss(row, &bias, targets[r])
                })
                .collect();
            assert_close(&format!("mlm_xent_rows_{suffix} {n}"), &out, &want, 1e-5);
            for (r, other, correct) in ties {
                assert_eq!(
                    out[4 * r + 3],
                    correct,
                    "row {r}: a tie with column {other}"
                );
            }
            let info: Vec<f32> = (0..rows)
                .flat_map(|r| [0.5 + r as f32, out[4 * r + 1], out[4 * r + 2]])
                .collect();
            let mut dz = vec![T::put(f32::NAN); rows * stride];
            launch(
                &format!("mlm_xent_grad_{suffix}"),
                rows_by_column_groups(rows, stride),
                vec![
                    input(&logits),
                    input(&bias),
                    input(&info),
                    output(&mut dz),
                    int(n),
                    int(stride),
                ],
            );
            let mut want = vec![T::default(); rows * stride];
            for r in 0..rows {
                let span = r * stride..(r + 1) * stride;
                let i = [info[3 * r], info[3 * r + 1], info[3 * r + 2]];
                row_grad(&logits[span.clone()], &bias, i, &mut want[span]);
            }
            assert_close(
                &format!("mlm_xent_grad_{suffix} {n}"),
                &widen(&dz),
                &widen(&want),
                tol,
            );
        }
    }

    #[test]
    fn the_mlm_loss_and_its_gradient_match_the_cpu_in_f32() {
        // "mlm_xent_rows_f32", "mlm_xent_grad_f32",
        mlm_loss_kernels_match::<f32>("f32", 1e-5);
    }

    #[test]
    fn the_mlm_loss_and_its_gradient_match_the_cpu_in_bf16() {
        // "mlm_xent_rows_bf16", "mlm_xent_grad_bf16",
        mlm_loss_kernels_match::<half::bf16>("bf16", 8e-3);
    }

    /// LAMB's five multi-tensor kernels, launched through a table of the tensors' addresses as
    /// `lamb_cuda.rs` launches them, against the CPU's fused loops over three steps: one plain,
    /// one with a scale and a clipping norm that bites, one with a clipping norm that does not.
    #[test]
    fn lamb_matches_the_cpu_loops() {
        // "lamb_grad_squares", "lamb_clip_scale", "lamb_moments", "lamb_trust_steps", "lamb_apply",
        use super::super::lamb::{decays, Lamb};
        use super::super::launch_shapes::{blocks_of_256, lamb_chunks, LAMB_CHUNK};
        use super::super::roberta::Params;
        use candle_core::{DType, Device, Tensor, Var};

        // In name order, as the update takes them: a bias of one chunk, a LayerNorm weight (no
        // decay either), and a weight of four chunks and a ragged fifth.
        let sizes = [
            ("a.dense.bias", 300),
            ("a.dense.weight", 4 * LAMB_CHUNK + 3_000),
            ("a.LayerNorm.weight", 257),
        ];
        let mut sizes = sizes.to_vec();
        sizes.sort();
        let cpu = Params {
            vars: sizes
                .iter()
                .enumerate()
                .map(|(k, &(name, n))| {
                    let t = Tensor::new(random(n, 0.3, 20 + k as u64), &Device::Cpu).unwrap();
                    (name.to_string(), Var::from_tensor(&t).unwrap())
                })
                .collect(),
            frozen: false,
            compute: DType::F32,
            sink: Default::default(),
            attention: Default::default(),
        };
        let mut lamb = Lamb::new(0.01);
        let mut w: Vec<Vec<f32>> = (0..sizes.len())
            .map(|k| random(sizes[k].1, 0.3, 20 + k as u64))
            .collect();
        let mut m: Vec<Vec<f32>> = sizes.iter().map(|&(_, n)| vec![0.0; n]).collect();
        let mut v = m.clone();
        let chunks: Vec<usize> = sizes.iter().map(|&(_, n)| lamb_chunks(n)).collect();
        let total: usize = chunks.iter().sum();
        assert_eq!(total, 7);
        let (b1, b2, eps, lr) = (0.9f32, 0.999f32, 1e-8f32, 0.05f64);
        let (count, chunk) = (sizes.len(), LAMB_CHUNK);
        // The gradients' norm is about 150; a clip of 20 bites at step 2, 1e6 at step 3 does not.
        for (t, scale, clip) in [(1i32, 1.0f32, 0.0f32), (2, 0.5, 20.0), (3, 1.0, 1e6)] {
            let grads: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(k, &(_, n))| random(n, 1.0, 100 * t as u64 + k as u64))
                .collect();
            let by_name: HashMap<String, Tensor> = sizes
                .iter()
                .zip(&grads)
                .map(|(&(name, _), g)| {
                    let g = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
                    (name.to_string(), g)
                })
                .collect();
            lamb.update_clipped(&cpu, &by_name, lr, scale as f64, clip as f64)
                .unwrap();

            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            let mut referenced = Referenced::default();
            let mut table = Vec::new();
            let mut first = 0;
            let buffers = w.iter_mut().zip(m.iter_mut().zip(v.iter_mut()));
            for (k, (wk, (mk, vk))) in buffers.enumerate() {
                let (name, n) = sizes[k];
                let decay = if decays(name) { 0.01f32 } else { 0.0 };
                table.extend([
                    referenced.output(wk),
                    referenced.input(&grads[k]),
                    referenced.output(mk),
                    referenced.output(vk),
                    n as u64,
                    first as u64,
                    u64::from(decay.to_bits()),
                ]);
                first += chunks[k];
            }
            let mut squares = vec![f32::NAN; total];
            let clipped_chunks = if clip > 0.0 {
                launch(
                    "lamb_grad_squares",
                    blocks_of_256(total),
                    vec![input(&table), int(count), int(chunk), output(&mut squares)],
                );
                total
            } else {
                0
            };
            let mut grad_scale = [f32::NAN];
            launch(
                "lamb_clip_scale",
                blocks_of_256(1),
                vec![
                    input(&squares),
                    int(clipped_chunks),
                    float(scale),
                    float(clip),
                    output(&mut grad_scale),
                ],
            );
            let mut pairs = vec![f32::NAN; 2 * total];
            launch(
                "lamb_moments",
                blocks_of_256(total),
                vec![
                    input(&table),
                    int(count),
                    int(chunk),
                    input(&grad_scale),
                    float(b1),
                    float(b2),
                    float(c1),
                    float(c2),
                    float(eps),
                    output(&mut pairs),
                ],
            );
            let steps = trust_steps(&table, chunk, &pairs, lr, sizes.len());
            launch(
                "lamb_apply",
                blocks_of_256(total),
                vec![
                    input(&table),
                    int(count),
                    int(chunk),
                    input(&steps),
                    float(c1),
                    float(c2),
                    float(eps),
                ],
            );
            referenced.finish().unwrap();
            if t == 2 {
                assert!(grad_scale[0] < 0.5 * 0.5, "clipped to {}", grad_scale[0]);
            } else {
                assert_eq!(grad_scale[0], scale);
            }
        }
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        for (k, &(name, _)) in sizes.iter().enumerate() {
            assert_close(name, &w[k], &flat(cpu.vars[name].as_tensor()), 1e-5);
            assert_close(name, &m[k], &flat(&lamb.m[name]), 1e-6);
            assert_close(name, &v[k], &flat(&lamb.v[name]), 1e-6);
        }
    }

    /// A kernel writing past a buffer it reaches through a table is caught, and so is one
    /// writing a buffer the table lists as an input.
    #[test]
    fn the_emulator_guards_buffers_reached_through_a_table() {
        let (mut w, mut m, mut v) = (vec![1f32; 10], vec![0f32; 10], vec![0f32; 10]);
        let g = vec![1f32; 10];
        let launch_with = |n: u64, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            let mut referenced = Referenced::default();
            // Weights listed as an input when n is 0 (the kernel steps them all the same).
            let w = if n == 0 {
                referenced.input(w)
            } else {
                referenced.output(w)
            };
            let n = if n == 0 { 10 } else { n };
            let table = [
                w,
                referenced.input(g),
                referenced.output(m),
                referenced.output(v),
                n,
                0,
                // A weight decay of 0.5: the update direction, 0.5 w, changes every weight.
                u64::from(0.5f32.to_bits()),
            ];
            let steps = [0.1f32];
            try_launch(
                "lamb_apply",
                line(1, 32),
                vec![
                    input(&table),
                    int(1),
                    int(16_384),
                    input(&steps),
                    float(1.0),
                    float(1.0),
                    float(1e-8),
                ],
            )?;
            referenced.finish()
        };
        // A table that says 12 elements where the buffers hold 10.
        let err = launch_with(12, &mut w, &mut m, &mut v, &g).unwrap_err();
        assert_eq!(err, "the kernel wrote after the buffer at table address 0");
        let err = launch_with(0, &mut w, &mut m, &mut v, &g).unwrap_err();
        assert_eq!(
            err,
            "the kernel wrote the buffer at table address 0, an input"
        );
        launch_with(10, &mut w, &mut m, &mut v, &g).unwrap();
        assert!(w.iter().all(|&x| x < 1.0), "{w:?}");
    }

    /// `lamb_trust_steps` over the `count` tensors of `table`: each tensor's step.
    fn trust_steps(table: &[u64], chunk: usize, pairs: &[f32], lr: f64, count: usize) -> Vec<f32> {
        use super::super::launch_shapes::blocks_of_256;
        let mut steps = vec![f32::NAN; count];
        launch(
            "lamb_trust_steps",
            blocks_of_256(count),
            vec![
                input(table),
                int(chunk),
                input(pairs),
                double(lr),
                output(&mut steps),
            ],
        );
        steps
    }

    /// The trust ratios' norms add a tensor's chunk sums in a block-wide tree; the tensors of
    /// `lamb_matches_the_cpu_loops` have a few chunks, the paper's largest 144 of 16,384. Here a
    /// tensor of 300 chunks (more than the block's 256 threads) beside one of a single chunk.
    #[test]
    fn lamb_trust_steps_add_more_chunks_than_threads() {
        let chunk = 16usize;
        let counts = [300usize, 1];
        // Only the sizes and first chunks are read; the buffers' addresses stay 0.
        let table: Vec<u64> = counts
            .iter()
            .scan(0usize, |first, &c| {
                let row = [0, 0, 0, 0, (c * chunk) as u64, *first as u64, 0];
                *first += c;
                Some(row)
            })
            .flatten()
            .collect();
        let chunks: usize = counts.iter().sum();
        let pairs: Vec<f32> = random(2 * chunks, 1.0, 77).iter().map(|x| x * x).collect();
        let lr = 0.05;
        let steps = trust_steps(&table, chunk, &pairs, lr, counts.len());
        let mut first = 0;
        for (k, &c) in counts.iter().enumerate() {
            let part =
                |o: usize| -> f64 { (first..first + c).map(|j| pairs[2 * j + o] as f64).sum() };
            let want = lr * part(0).sqrt() / part(1).sqrt();
            let d = (steps[k] as f64 - want).abs() / want;
            assert!(d < 1e-6, "tensor {k}: step {} against {want}", steps[k]);
            first += c;
        }
    }

    #[test]
    fn dropout_draws_the_cpu_mask() {
        // Groups of eight and a ragged last one of four.
        let len = 3004;
        let x = random(len, 1.0, 15);
        let mut y = vec![0f32; len];
        let (p, seed) = (0.1f32, 77u64);
        launch(
            "dropout",
            element_groups(len),
            vec![
                input(&x),
                output(&mut y),
                float(p),
                ulong(seed),
                ulong(len as u64),
            ],
        );
        let want: Vec<f32> = (0..len)
            .map(|i| {
                if keep(seed, i as u64, p) {
                    x[i] / (1.0 - p)
                } else {
                    0.0
                }
            })
            .collect();
        assert_close("dropout", &y, &want, 1e-6);
        let dropped = y.iter().filter(|&&v| v == 0.0).count();
        assert!((200..400).contains(&dropped), "{dropped} of {len} dropped");
    }

    /// `flash_attention_fwd_bf16`, `flash_attention_dq_bf16` and `flash_attention_dkv_bf16`
    /// against their CPU twins in `flash_attention.rs`: the context and log-sum-exps, then dq,
    /// dk and dv from the kernel's own forward result.
    fn flash_attention_kernels_match(dims: Dims, dropout: Option<(f32, u64)>, masked_out: bool) {
        use super::super::flash_attention::{backward_cpu, forward_cpu};
        use super::super::launch_shapes::flash_tiles;
        use half::bf16;
        let n = dims.elements();
        let hidden = dims.heads * dims.head_dim;
        let to_bf16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
        let (q, k, v) = (
            to_bf16(random(n, 1.0, 51)),
            to_bf16(random(n, 1.0, 52)),
            to_bf16(random(n, 1.0, 53)),
        );
        let dcontext = to_bf16(random(n, 1.0, 54));
        // The second sequence's last three keys are padding; with `masked_out`, every key of the
        // last sequence is -inf (its context and gradients must be 0, not NaN).
        let len = dims.len;
        let mask: Vec<f32> = (0..dims.batch * len)
            .map(|i| match (i / len, i % len) {
                (b, _) if masked_out && b == dims.batch - 1 => f32::NEG_INFINITY,
                (1, j) if j >= len - 3 => -1e9,
                _ => 0.0,
            })
            .collect();
        let scale = 1.0 / (dims.head_dim as f32).sqrt();
        let (p, seed) = dropout.unwrap_or((0.0, 0));
        let shape = flash_tiles(len, dims.batch * dims.heads);
        let scalars = || {
            vec![
                int(dims.heads),
                int(len),
                int(dims.head_dim),
                float(scale),
                float(p),
            ]
        };
        let mut saved = vec![bf16::ZERO; dims.packed(dropout.is_some())];
        if dropout.is_some() {
            let bhs = dims.batch * dims.heads;
            launch(
                "flash_dropout_mask",
                super::super::launch_shapes::elementwise(dims.keep_words()),
                vec![
                    output(&mut saved),
                    int(bhs),
                    int(len),
                    int(dims.head_dim),
                    float(p),
                    ulong(seed),
                ],
            );
        }
        let mut args = vec![
            input(&q),
            input(&k),
            input(&v),
            input(&mask),
            output(&mut saved),
        ];
        args.extend(scalars());
        launch("flash_attention_fwd_bf16", shape, args);
        let want = forward_cpu([&q, &k, &v], &mask, dims, scale, dropout);
        let what = format!("flash attention {dims:?} {dropout:?}");
        assert_close(
            &format!("{what}: context"),
            &widen(&saved[..n]),
            &widen(&want[..n]),
            2e-2,
        );
        let lse = |x: &[bf16]| -> Vec<f32> {
            x[n..n + 2 * dims.rows()]
                .chunks(2)
                .map(|w| f32::from_bits(w[0].to_bits() as u32 | (w[1].to_bits() as u32) << 16))
                .collect()
        };
        let (got_lse, want_lse) = (lse(&saved), lse(&want));
        for (i, (a, b)) in got_lse.iter().zip(&want_lse).enumerate() {
            let same = a == b || (a - b).abs() < 1e-4 * b.abs().max(1.0);
            assert!(same, "{what}: log-sum-exp of row {i}: {a} against {b}");
        }
        // The dropout mask's words, bit for bit.
        if dropout.is_some() {
            let bits = |x: &[bf16]| -> Vec<u16> {
                x[dims.keep_offset()..]
                    .iter()
                    .map(|w| w.to_bits())
                    .collect()
            };
            let (got, want) = (bits(&saved), bits(&want));
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                first.is_none(),
                "{what}: the dropout mask's word {first:?} of {} differs",
                want.len()
            );
        }
        if masked_out {
            let last = (dims.batch - 1) * len * hidden;
            assert!(
                saved[last..n].iter().all(|x| x.to_f32() == 0.0),
                "{what}: masked rows"
            );
            assert!(got_lse[got_lse.len() - 1].is_infinite());
        }

        let mut delta = vec![0f32; dims.rows()];
        let mut grads = vec![bf16::ZERO; 3 * n];
        let mut args = vec![
            input(&q),
            input(&k),
            input(&v),
            input(&saved),
            input(&dcontext),
            input(&mask),
            output(&mut delta),
            output(&mut grads),
        ];
        args.extend(scalars());
        launch("flash_attention_dq_bf16", shape, args);
        let mut args = vec![
            input(&q),
            input(&k),
            input(&v),
            input(&saved),
            input(&dcontext),
            input(&mask),
            input(&delta),
            output(&mut grads),
        ];
        args.extend(scalars());
        launch("flash_attention_dkv_bf16", shape, args);
        let want = backward_cpu([&q, &k, &v], &saved, &dcontext, &mask, dims, scale, p);
        for (which, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let range = which * n..(which + 1) * n;
            let (got, want) = (widen(&grads[range.clone()]), widen(&want[range]));
            assert!(
                got.iter().all(|x| x.is_finite()),
                "{what}: {name} is not finite"
            );
            assert_close(&format!("{what}: {name}"), &got, &want, 2e-2);
        }
    }

    #[test]
    fn flash_attention_and_its_backward_match_the_cpu() {
        // Names for `every_kernel_has_an_emulated_test`: "flash_attention_fwd_bf16",
        // "flash_attention_dq_bf16", "flash_attention_dkv_bf16", "flash_dropout_mask",
        // One ragged tile of queries and keys, two sequences of two heads.
        let dims = |batch, heads, len, head_dim| Dims {
            batch,
            heads,
            len,
            head_dim,
        };
        flash_attention_kernels_match(dims(2, 2, 37, 32), None, false);
        // Two key tiles and three query tiles of the dk and dv kernel, dropout, and a sequence
        // with every key masked out.
        flash_attention_kernels_match(dims(3, 1, 70, 16), Some((0.2, 11)), true);
        // The paper's head size.
        flash_attention_kernels_match(dims(2, 1, 20, 128), Some((0.1, 5)), false);
    }

    #[test]
    fn tensor_core_fragments_follow_ptx_layouts() {
        // "mma_fragments_probe",
        // Exactly the product, read directly in PTX's fragment layouts, through ldmatrix and
        // ldmatrix.trans, and through ldmatrix of b transposed.
        let (a, b, bt, want) = super::super::flash_attention::mma_probe_inputs();
        let mut c = vec![0f32; 3 * 256];
        let shape = line(1, 32);
        launch(
            "mma_fragments_probe",
            shape,
            vec![input(&a), input(&b), input(&bt), output(&mut c)],
        );
        for (way, got) in ["PTX's layouts", "ldmatrix", "ldmatrix of b^T"]
            .iter()
            .zip(c.chunks(256))
        {
            assert_eq!(got, &want[..], "{way}");
        }
    }
}
