//! Chat data: templates and tokenization.

pub mod chat;
pub mod parquet_json;
pub mod pretokenized;
mod pyjinja;
pub mod tokenizer;
pub mod prepare;
pub mod shards;
