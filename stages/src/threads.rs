//! The CPU threads a job may use. A job process asks for its `threads` once, before its stage
//! runs: rayon's global pool (candle's CPU ops, tokenizing, parsing) and OpenBLAS's pool (the
//! model's matrix products) each get that many, and candle's own pool for element-wise ops
//! reads the same count from the environment the engine starts the job with. So jobs that the
//! scheduler runs side by side do not each take every core. Each pool otherwise sizes itself to
//! the machine, and a machine whose CPU quota is below its core count (a container, a cluster's
//! cgroup) then runs several threads per core: measured on a 2-core machine, a small
//! pretraining took 21.1 s with 2 threads in each pool and 70.1 s with 16.

/// Gives rayon's global pool and OpenBLAS's pool `n` threads each (at least one). Call it before
/// anything uses rayon: a global pool already built keeps its size, and the error says so.
pub fn limit(n: usize) -> Result<(), String> {
    let n = n.max(1);
    crate::model::blas::set_threads(n);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| format!("cannot size the thread pool to {n}: {e}"))
}

/// The threads of the three pools a CPU stage computes on: rayon's global pool, candle's pool
/// for element-wise ops (sized from `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS`, which the
/// engine sets for each job, else the physical cores; this starts it) and OpenBLAS's.
pub fn in_use() -> Threads {
    Threads {
        rayon: rayon::current_num_threads(),
        candle: candle_core::utils::barrier_pool().n_workers() + 1,
        blas: crate::model::blas::threads(),
    }
}

/// Thread counts of the CPU pools, as [`in_use`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads {
    /// rayon's global pool.
    pub rayon: usize,
    /// candle's element-wise pool (its workers and the calling thread).
    pub candle: usize,
    /// OpenBLAS's pool.
    pub blas: usize,
}

impl std::fmt::Display for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (candle: {}, OpenBLAS: {})",
            self.rayon, self.candle, self.blas
        )
    }
}
