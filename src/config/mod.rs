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

use std::collections::BTreeMap;

/// The leaves of a config-shaped value under their dotted keys (`train.lr`), for
/// naming what differs between two configs.
pub fn dotted_leaves(value: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}
