//! The language-model half of the study: the BPE tokenizer and the encoding of promoters for the
//! model.

pub mod blas;
pub mod device;
pub mod examples;
pub mod finetune;
pub mod fused;
pub mod head;
pub mod lamb;
pub mod layers;
pub mod mutagenesis;
pub mod predictor;
pub mod pretrain;
pub mod roberta;
pub mod throughput;
pub mod tokenizer;
pub mod variants;
