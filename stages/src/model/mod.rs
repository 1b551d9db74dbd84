//! The language-model half of the study: the BPE tokenizer and the encoding of promoters for the
//! model.

pub mod tokenizer;
