//! The CPU threads a job computes on. Three pools do a CPU stage's work: rayon's global pool
//! (candle's CPU ops, tokenizing, parsing), candle's own pool for element-wise ops, and
//! OpenBLAS's (the model's matrix products). Each reads its size from the environment once, when
//! it starts, and the engine starts every job with its `threads` there
//! (`RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS`, `OPENBLAS_NUM_THREADS`), so that jobs the
//! scheduler runs side by side do not each take every core. Each pool otherwise sizes itself to
//! the machine, and a machine whose CPU quota is below its core count (a container, a cluster's
//! cgroup) then runs several threads per core: measured on a 2-core machine, a small
//! pretraining took 21.1 s with 2 threads in each pool and 70.1 s with 16.

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
