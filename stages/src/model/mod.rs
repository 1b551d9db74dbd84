//! The language-model half of the study: the BPE tokenizer and the encoding of promoters for the
//! model.

pub mod attached;
pub mod attention;
pub mod attention_attached;
pub mod attention_probs;
#[cfg(feature = "cuda")]
mod attention_probs_cuda;
pub mod blas;
pub mod checkpoint;
pub mod dense;
pub mod dense_attached;
pub mod dense_epilogue;
#[cfg(feature = "cuda")]
mod dense_epilogue_cuda;
pub mod device;
pub mod embeddings;
pub mod encoder_layer;
pub mod encoder_layer_attached;
pub mod examples;
pub mod finetune;
pub mod flash_attention;
#[cfg(feature = "cuda")]
mod flash_attention_cuda;
pub mod fused;
#[cfg(feature = "cuda")]
mod fused_cuda;
#[cfg(feature = "cuda")]
mod gpu_kernels;
pub mod gpu_ops;
pub mod head;
pub mod id_match;
#[cfg(test)]
mod kernel_emulator;
pub mod lamb;
#[cfg(feature = "cuda")]
mod lamb_cuda;
#[cfg(any(feature = "cuda", test))]
mod launch_shapes;
pub mod layers;
pub mod mlm_loss;
#[cfg(feature = "cuda")]
mod mlm_loss_cuda;
pub mod mlm_positions;
pub mod model_config;
pub mod mutagenesis;
pub mod pace;
pub mod param_checks;
pub mod predictor;
pub mod pretrain;
pub mod qkv;
#[cfg(feature = "cuda")]
mod qkv_cuda;
pub mod replicas;
pub mod residual_norm;
pub mod roberta;
mod second_result;
pub mod step_memory;
pub mod step_profile;
pub mod throughput;
pub mod tokenizer;
pub mod variants;
