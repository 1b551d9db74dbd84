//! Keeping test genes out of training: paralog groups, group-wise splits, and leak-free corpora.

pub mod corpus;
pub mod minhash;
pub mod paralogs;
pub mod split;
pub mod tsv;
