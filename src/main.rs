//! flora: reproduce and extend FloraBERT as a cached, incremental workflow.
mod dag;
mod hash;
mod registry;
mod workflow;
fn main() {}
