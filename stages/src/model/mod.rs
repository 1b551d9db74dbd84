//! The language-model half of the study: the BPE tokenizer and the encoding of promoters for the
//! model.

pub mod lamb;
pub mod layers;
pub mod pretrain;
pub mod roberta;
pub mod tokenizer;
