//! The science of flora, as plain functions that the engine calls.
//!
//! Every stage kind lives in its own module and exposes a serde `Params` struct (unknown fields are
//! errors, every field has a documented default) and a function from a [`Context`] to files written
//! into [`Context::out`]. Nothing here knows about caching, scheduling or workflows: the engine
//! (`flora`) decides when and where a stage runs; this crate decides what it computes.
//!
//! # Example
//!
//! ```
//! use flora_stages::{exec, Context};
//! let dir = std::env::temp_dir().join(format!("flora-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let ctx = Context::new(dir.join("out"), dir.join("work"), dir.clone());
//! std::fs::create_dir_all(&ctx.out).unwrap();
//! let params: exec::Params =
//!     serde_json::from_value(serde_json::json!({"argv": ["sh", "-c", "echo hi > $FLORA_OUT/msg.txt"]}))
//!         .unwrap();
//! exec::run(&params, &ctx).unwrap();
//! assert_eq!(std::fs::read_to_string(ctx.out.join("msg.txt")).unwrap(), "hi\n");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

pub mod analysis;
pub mod baselines;
pub mod context;
pub mod download;
pub mod exec;
pub mod genomics;
pub mod linalg;
pub mod memory;
pub mod model;
pub mod openblas;
pub mod report;
pub mod rng;
pub mod simulate;
pub mod splits;
pub mod stop;
pub mod tables;
pub mod threads;

pub use context::Context;

pub mod testing;
