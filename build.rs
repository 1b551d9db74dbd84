//! Links the `flora` binary as a position-dependent executable on Linux.
//!
//! Each built-in kind's job runs in a fresh `flora __job` process, so start-up is paid once per
//! job. A position-independent flora carries about 35,000 relocations that the dynamic loader
//! applies at each start, writing (and so copying) about 170 pages of relocated data; linked
//! without PIE there are none. `flora --version` went from 1.7 to 1.35 ms, and the engine
//! benchmark's 1,001 trivial jobs (each then a `flora __job`) from 1.80-1.82 s to 1.56-1.78 s
//! (README, Performance). The objects are still compiled position-independent, so nothing else
//! changes; the binary's own code just loads at a fixed address (shared libraries, heap and stack
//! stay randomised).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=flora=-no-pie");
    }
}
