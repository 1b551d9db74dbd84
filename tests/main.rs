//! End-to-end tests: each drives the real `flora` binary in a fresh temporary project.

mod util;

mod bench;
mod cache;
mod check;
mod cli;
mod demo;
mod fanout;
mod genomics;
mod incremental;
mod model;
mod report;
mod robustness;
mod scheduler;
mod slurm;
mod validation;
mod workflows;
