//! Baselines that a language model must beat: bag-of-k-mers linear regression.

pub mod kmers;
pub mod ridge;
