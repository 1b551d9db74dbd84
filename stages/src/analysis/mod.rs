//! Judging models: metrics of agreement between observed and predicted values, and figures.

pub mod figures;
pub mod metrics;
pub mod positional;
pub mod predictions;
pub mod species;
pub mod table;
