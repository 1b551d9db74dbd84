//! Judging models: metrics of agreement between observed and predicted values.

pub mod metrics;
