//! Benchmarks in the paper's protocol (spec §10): the six tasks' files,
//! 5-shot chat prompts, answer extraction, program execution in a sandbox,
//! pass@k and reports.
//!
//! Scoring needs no model: `l2d eval --task NAME --data FILE --samples FILE`
//! judges completions written by anything; `l2d eval --config` ([`sweep`])
//! generates them, under a sweep of base-LM and L2D settings.

pub mod extract;
pub mod identity;
mod journal;
pub mod loss;
pub mod paper;
pub mod records;
pub mod report;
pub mod results;
pub mod sandbox;
pub mod score;
pub mod stats;
pub mod sweep;
pub mod tasks;

pub use crate::config::Protocol;
