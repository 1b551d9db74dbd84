//! OpenBLAS, opened the first time a product needs it rather than when a flora process starts.
//! Linked, it cost every flora process its dynamic loading, 1.8 ms here (`/bin/true` ran in
//! 1.4 ms, and in 3.2 ms with OpenBLAS preloaded), which was most of what an `exec` job's own
//! `flora __job` process added to a run. Debian's `libopenblas0` (`scripts/setup.sh` installs
//! `libopenblas-dev`, which brings it).

use std::ffi::c_int;
use std::sync::OnceLock;

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, CBLAS_UPLO};

/// `cblas_sgemm` (`T` = f32) and `cblas_dgemm` (f64).
pub type Gemm<T> = unsafe extern "C" fn(
    CBLAS_LAYOUT,
    CBLAS_TRANSPOSE,
    CBLAS_TRANSPOSE,
    c_int,
    c_int,
    c_int,
    T,
    *const T,
    c_int,
    *const T,
    c_int,
    T,
    *mut T,
    c_int,
);

/// `cblas_dsyrk`.
pub type Dsyrk = unsafe extern "C" fn(
    CBLAS_LAYOUT,
    CBLAS_UPLO,
    CBLAS_TRANSPOSE,
    c_int,
    c_int,
    f64,
    *const f64,
    c_int,
    f64,
    *mut f64,
    c_int,
);

/// The functions flora calls, from the opened library.
pub struct OpenBlas {
    /// Single-precision matrix product.
    pub sgemm: Gemm<f32>,
    /// Double-precision matrix product.
    pub dgemm: Gemm<f64>,
    /// Double-precision AᵀA or AAᵀ (one triangle).
    pub dsyrk: Dsyrk,
    /// `openblas_get_num_threads`.
    pub threads: unsafe extern "C" fn() -> c_int,
    // Kept open for as long as the process runs (the functions above point into it).
    _library: libloading::Library,
}

/// The library's names, most specific first.
const NAMES: [&str; 2] = ["libopenblas.so.0", "libopenblas.so"];

static OPENED: OnceLock<Result<OpenBlas, String>> = OnceLock::new();

/// OpenBLAS, opened on the first call (the pool of threads it starts reads
/// `OPENBLAS_NUM_THREADS` then).
pub fn load() -> Result<&'static OpenBlas, String> {
    OPENED.get_or_init(open).as_ref().map_err(Clone::clone)
}

/// OpenBLAS, for code that cannot report an error; a job of a built-in kind has called [`load`]
/// before it starts, so that a missing library fails it cleanly there.
pub fn get() -> &'static OpenBlas {
    load().unwrap_or_else(|e| panic!("{e}"))
}

fn open() -> Result<OpenBlas, String> {
    let mut tried = Vec::new();
    for name in NAMES {
        // SAFETY: OpenBLAS's initialisers start its thread pool and touch nothing of ours.
        #[allow(unsafe_code)]
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => return functions(library),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "cannot open OpenBLAS, which flora's matrix products use ({}); install it with \
         scripts/setup.sh (Debian's libopenblas0)",
        tried.join("; ")
    ))
}

fn functions(library: libloading::Library) -> Result<OpenBlas, String> {
    // SAFETY: each symbol is read with the C signature that OpenBLAS's cblas.h gives it, and
    // the library stays open inside the returned struct.
    #[allow(unsafe_code)]
    unsafe {
        let symbol = |name: &str| format!("OpenBLAS has no `{name}`");
        let sgemm = *library
            .get::<Gemm<f32>>(b"cblas_sgemm\0")
            .map_err(|_| symbol("cblas_sgemm"))?;
        let dgemm = *library
            .get::<Gemm<f64>>(b"cblas_dgemm\0")
            .map_err(|_| symbol("cblas_dgemm"))?;
        let dsyrk = *library
            .get::<Dsyrk>(b"cblas_dsyrk\0")
            .map_err(|_| symbol("cblas_dsyrk"))?;
        let threads = *library
            .get::<unsafe extern "C" fn() -> c_int>(b"openblas_get_num_threads\0")
            .map_err(|_| symbol("openblas_get_num_threads"))?;
        Ok(OpenBlas {
            sgemm,
            dgemm,
            dsyrk,
            threads,
            _library: library,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn opens_and_multiplies() {
        let blas = super::load().unwrap();
        let (a, b) = ([1.0f32, 2.0, 3.0, 4.0], [5.0f32, 6.0, 7.0, 8.0]);
        let mut c = [0f32; 4];
        // SAFETY: 2 x 2 row-major matrices with leading dimension 2.
        #[allow(unsafe_code)]
        unsafe {
            (blas.sgemm)(
                cblas_sys::CBLAS_LAYOUT::CblasRowMajor,
                cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                2,
                2,
                2,
                1.0,
                a.as_ptr(),
                2,
                b.as_ptr(),
                2,
                0.0,
                c.as_mut_ptr(),
                2,
            );
        }
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        // SAFETY: a plain read of a setting.
        #[allow(unsafe_code)]
        let threads = unsafe { (blas.threads)() };
        assert!(threads >= 1);
    }
}
