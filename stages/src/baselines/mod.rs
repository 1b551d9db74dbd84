//! Baselines that a language model must beat: each tissue's mean, and bag-of-k-mers linear
//! regression.

pub mod kmers;
pub mod ridge;
pub mod stage;
