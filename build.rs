//! Links the `flora` binary as a position-dependent executable on Linux.
//!
//! Every job runs in a fresh `flora __job` process, so start-up is paid once per job. A
//! position-independent flora carries about 35,000 relocations that the dynamic loader applies at
//! each start, writing (and so copying) about 170 pages of relocated data; linked without PIE
//! there are none. On the engine benchmark's 1,001 trivial jobs this took a run from 1.8-2.0 s to
//! 1.5-1.7 s, and `flora --version` from 1.7 to 1.35 ms (README, Performance). The objects are
//! still compiled position-independent, so nothing else changes; the binary's own code just
//! loads at a fixed address (shared libraries, heap and stack stay randomised).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=flora=-no-pie");
    }
}
