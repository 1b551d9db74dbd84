//! The CPU threads a job may use. A job process asks for its `threads` once, before its stage
//! runs: rayon's global pool (candle's CPU ops, tokenizing, parsing) and OpenBLAS's pool (the
//! model's matrix products) each get that many, so that jobs the scheduler runs side by side do
//! not each take every core. Both pools otherwise size themselves to the machine, and a machine
//! whose CPU quota is below its core count (a container, a cluster's cgroup) then runs several
//! threads per core: measured on a 2-core machine, a small pretraining took 21.1 s with 2
//! threads in each pool and 70.1 s with 16.

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

/// The threads rayon's global pool and OpenBLAS's pool have: (rayon, OpenBLAS).
pub fn in_use() -> (usize, usize) {
    (rayon::current_num_threads(), crate::model::blas::threads())
}
