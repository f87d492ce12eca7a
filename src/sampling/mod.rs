//! Decoding: next-token selection and the generation loop.

pub mod generate;
pub mod logits;
pub mod noise;
pub mod ode;

pub use generate::{decode, generate, prefill, BaseLm, Finish, GenerateOptions, Generation, NextTokenLogits, Prefill};
pub use logits::TokenSampler;
pub use noise::RowNoise;
