//! The TOML run configuration: model, L2D path, baselines, training, data, decoding.
//!
//! Defaults are the paper's (Table 3 and the reference implementation), so a
//! config file only has to say what differs. Every mistake a user can make in
//! a file or a `--set` override is reported as a usage error (exit code 2) on
//! one line that names the file or `--set` and the full dotted key.
//!
//! [`schema`] holds the sections, [`choices`] every enumerated value,
//! `check` the one validation and `load` the reading and blaming.

mod check;
pub mod choices;
mod load;
pub mod schema;

pub use choices::{Decay, Dtype, Mode, Protocol, SeqLenPolicy, Solver, Variant, WarmupType, X1Estimate, X1Schedule};
pub use load::load;
pub use schema::*;
