//! The flora engine: workflow files, the job graph, the content-addressed cache, the scheduler and
//! its executors, and the command line. It knows nothing about biology: the science lives in
//! `flora-stages`, and [`registry`] is the one place that knows both.

pub mod cache;
pub mod cli;
pub mod dag;
pub mod executor;
pub mod hash;
pub mod jobspec;
pub mod plan;
pub mod progress;
pub mod provenance;
pub mod registry;
pub mod results;
pub mod scheduler;
pub mod supervise;
pub mod workflow;
