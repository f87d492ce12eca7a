//! Decoding: next-token selection and the generation loop.

pub mod generate;
pub mod logits;
pub mod ode;

pub use generate::{generate, BaseLm, Finish, GenerateOptions, Generation, NextTokenLogits};
pub use logits::TokenSampler;
