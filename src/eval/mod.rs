//! Benchmarks in the paper's protocol (spec §10): the six tasks' files,
//! 5-shot chat prompts, answer extraction, program execution in a sandbox,
//! pass@k and reports.
//!
//! Scoring needs no model: `l2d eval --task NAME --data FILE --samples FILE`
//! judges completions written by anything; `l2d eval --config` ([`sweep`])
//! generates them, under a sweep of base-LM and L2D settings.

pub mod extract;
pub mod identity;
pub mod paper;
pub mod records;
pub mod report;
pub mod sandbox;
pub mod score;
pub mod stats;
pub mod sweep;
pub mod tasks;

/// Whose evaluation protocol decides prompts and verdicts (`eval.protocol`, `--protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The reference implementation's, quirks included ([`paper`]), so that numbers compare with the paper's.
    #[default]
    Paper,
    /// l2d's own: tolerant extraction, numeric comparison, fenced code (README, "The clean protocol").
    Clean,
}

impl Protocol {
    /// The names accepted by `eval.protocol` and `--protocol`.
    pub const NAMES: [&'static str; 2] = ["paper", "clean"];

    /// The name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::Clean => "clean",
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "paper" => Ok(Protocol::Paper),
            "clean" => Ok(Protocol::Clean),
            _ => Err(format!("unknown protocol {s:?} (expected one of {})", Protocol::NAMES.join(", "))),
        }
    }
}
