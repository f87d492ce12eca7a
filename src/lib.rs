//! l2d: Large Language Models to Diffusion Finetuning on libtorch.
//!
//! The library behind the `l2d` binary; `src/cli/` turns flags into calls of
//! these modules.

pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod init;
pub mod io;
pub mod l2d;
pub mod model;
pub mod progress;
mod rng;
pub mod runtime;
pub mod sampling;
pub mod session;
pub mod train;
