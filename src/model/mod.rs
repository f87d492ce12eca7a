//! The frozen main path: Hugging Face model directories, the Llama/Qwen2 network, its KV cache,
//! and low-rank adapters beside its frozen maps.

pub mod adapters;
pub mod config;
pub mod cpu;
pub mod decode_linear;
pub mod kv_cache;
pub mod llama;
pub mod lora;
pub mod rope;
pub mod weights;

pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use llama::{AttentionMask, Llama, Step};

/// `x` `[B, ..]` stacked `n` times along the batch: `[n·B, ..]`, row `i·B + b` = row `b`.
pub fn repeat_batch(x: &tch::Tensor, n: i64) -> tch::Tensor {
    let mut reps = vec![1; x.dim()];
    reps[0] = n;
    x.repeat(reps.as_slice())
}
