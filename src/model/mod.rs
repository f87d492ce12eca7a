//! The frozen main path: Hugging Face model directories, the Llama/Qwen2 network, its KV cache,
//! and low-rank adapters beside its frozen maps.

pub mod config;
pub mod kv_cache;
pub mod llama;
pub mod lora;
pub mod rope;
pub mod weights;

pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use llama::{AttentionMask, Llama, Step};
