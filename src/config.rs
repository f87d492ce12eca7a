//! The TOML run configuration: model, L2D path, baselines, training, data, decoding.
//!
//! Defaults are the paper's (Table 3 and the reference implementation), so a
//! config file only has to say what differs. Every mistake a user can make in
//! a file or a `--set` override is reported as a usage error (exit code 2) on
//! one line that names the file or `--set` and the full dotted key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::usage;

/// Accepted `model.dtype` values; "auto" resolves to bf16 on CUDA and f32 on CPU.
pub const DTYPES: &[&str] = &["auto", "f32", "bf16", "f16"];
/// Accepted `train.mode` values.
pub const MODES: &[&str] = &["l2d-lora", "l2d-full", "lora", "full"];
/// Accepted `l2d.variant` values.
pub const VARIANTS: &[&str] = &["lora", "full"];
/// Accepted `l2d.solver` values: the fixed-grid ones first, then the adaptive ones.
pub const SOLVERS: &[&str] = &[
    "euler",
    "midpoint",
    "rk4",
    "bosh3",
    "dopri5",
    "adaptive_heun",
];
/// Accepted `l2d.x1_estimate` values.
pub const X1_ESTIMATES: &[&str] = &["sample", "average"];
/// Accepted `train.decay` values (Table 3 uses only linear decay).
pub const DECAYS: &[&str] = &["linear"];
/// Accepted `data.max_seq_len_policy` values.
pub const SEQ_LEN_POLICIES: &[&str] = &["truncate", "drop"];

/// The whole run configuration; each field is one `[section]` of the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[model]`: which pretrained LM, on which device and dtype.
    pub model: ModelConfig,
    /// `[l2d]`: the diffusion path's shape and its sampling defaults.
    pub l2d: L2dConfig,
    /// `[lora]`: the weight-LoRA baseline (mode "lora").
    pub lora: LoraConfig,
    /// `[train]`: optimiser, schedule and bookkeeping.
    pub train: TrainConfig,
    /// `[data]`: which conversations to train and validate on.
    pub data: DataConfig,
    /// `[generate]`: decoding of the final token distribution.
    pub generate: GenerateConfig,
    /// `[eval]`: benchmarks and the sweep of `l2d eval --config`.
    pub eval: EvalConfig,
    /// `[dist]`: data-parallel collectives (used when a launcher starts several ranks).
    pub dist: DistConfig,
}

/// `[dist]` section: how ranks started by torchrun talk to each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// Seconds the rendezvous and any one collective may take before the run fails.
    pub timeout_s: f64,
    /// Size of the flat buffers gradients are summed in (MiB; PyTorch DDP's default is 25).
    pub bucket_mb: f64,
}

impl Default for DistConfig {
    fn default() -> Self {
        Self { timeout_s: 600.0, bucket_mb: 25.0 }
    }
}

impl DistConfig {
    /// The collectives' settings.
    pub fn settings(&self) -> crate::dist::Settings {
        crate::dist::Settings {
            timeout: std::time::Duration::from_secs_f64(self.timeout_s),
            bucket_bytes: (self.bucket_mb * (1 << 20) as f64) as usize,
        }
    }
}

/// `[model]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Hugging Face model directory; empty until the user names one.
    pub path: String,
    /// One of [`DTYPES`].
    pub dtype: String,
    /// "auto", "cpu", "cuda" or "cuda:N".
    pub device: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            dtype: "auto".into(),
            device: "auto".into(),
        }
    }
}

/// `[l2d]` section: spec §1-8 with the reference implementation's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2dConfig {
    /// One of [`VARIANTS`]; must agree with an "l2d-*" `train.mode`.
    pub variant: String,
    /// Width `D` of the diffusion space.
    pub flow_dim: i64,
    /// Standard deviation of the noise `x0`.
    pub sigma: f64,
    /// Rank of the diffusion path's LoRA updates.
    pub lora_rank: i64,
    /// LoRA scale numerator: the update is multiplied by `lora_alpha / lora_rank`.
    pub lora_alpha: f64,
    /// Width of the timestep frequency features and of `c(t)`.
    pub timestep_dim: i64,
    /// Guidance classes; 0 builds no guidance embedding.
    pub num_classes: i64,
    /// Probability that a training label is replaced by "no label".
    pub guidance_dropout: f64,
    /// One of [`SOLVERS`].
    pub solver: String,
    /// Discretisation levels `S` of the time grid `linspace(0, 1, S)`.
    pub steps: usize,
    /// Absolute tolerance of the adaptive solvers.
    pub atol: f64,
    /// Relative tolerance of the adaptive solvers.
    pub rtol: f64,
    /// One of [`X1_ESTIMATES`]: how `x1_hat` is formed from the logits.
    pub x1_estimate: String,
    /// Temperature of `x1_hat`; 0 picks the argmax token.
    pub x1_temperature: f64,
    /// "constant" or "polynomial_<p>_<end>"; see [`X1Schedule`].
    pub x1_schedule: String,
    /// Classifier-free guidance weight `w` (>= 1; 1 is no guidance).
    pub guidance_weight: f64,
    /// Class to guide towards at inference; none uses the "no label" row.
    pub guidance_class: Option<i64>,
}

impl Default for L2dConfig {
    fn default() -> Self {
        Self {
            variant: "lora".into(),
            flow_dim: 256,
            sigma: 64.0,
            lora_rank: 32,
            lora_alpha: 32.0,
            timestep_dim: 256,
            num_classes: 0,
            guidance_dropout: 0.2,
            solver: "midpoint".into(),
            steps: 8,
            atol: 1e-5,
            rtol: 1e-5,
            x1_estimate: "sample".into(),
            x1_temperature: 1.0,
            x1_schedule: "constant".into(),
            guidance_weight: 1.0,
            guidance_class: None,
        }
    }
}

/// `[lora]` section: the weight-LoRA finetuning baseline of Table 3.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter (not in Table 3; the reference code's default).
    pub rank: i64,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
    /// Linear layers (by their HF name suffix) that get an adapter.
    #[serde(deserialize_with = "string_or_list")]
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 64.0,
            dropout: 0.1,
            target_modules: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

/// `train.warmup_type`: how the learning rate rises during warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmupType {
    /// DeepSpeed's `WarmupDecayLR` with `warmup_type = "log"` as the reference's
    /// engine drives it: `final_lr` for the first two steps, then
    /// `final_lr + (lr - final_lr) * ln(k + 1) / ln(warmup)` at scheduler index `k = step - 1`.
    Log,
    /// transformers' linear warmup from 0: `lr * step / warmup` at 0-based `step`.
    Linear,
}

impl WarmupType {
    /// The name used in configs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Linear => "linear",
        }
    }
}

/// `[train]` section: AdamW with warmup and linear decay (Table 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// One of [`MODES`].
    pub mode: String,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Learning rate at the last step.
    pub final_lr: f64,
    /// Optimizer steps of warmup up to `lr`.
    pub warmup_steps: u64,
    /// The warmup's shape (DeepSpeed's option of the same name).
    pub warmup_type: WarmupType,
    /// One of [`DECAYS`]: the shape from `lr` to `final_lr`.
    pub decay: String,
    /// AdamW `(beta1, beta2)`.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f64,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Sequences per forward/backward pass; must divide `batch_size`.
    pub micro_batch_size: usize,
    /// Passes over the training data.
    pub epochs: u64,
    /// Stops after this many optimizer steps, before the epochs run out.
    pub max_steps: Option<u64>,
    /// Ends the run after this step as if it were the last (checkpoint and
    /// result written), while the learning-rate schedule still spans the whole
    /// run: the state of a longer run part-way through it.
    pub stop_at_step: Option<u64>,
    /// Longest tokenised example, in tokens.
    pub max_seq_len: usize,
    /// Seed of initialisation, shuffling, noise and timesteps.
    pub seed: u64,
    /// Optimizer steps between validation passes; 0 validates only at the end.
    pub eval_every: u64,
    /// Validation micro-batches per pass at most; none reads the whole valid split.
    pub eval_max_batches: Option<usize>,
    /// Optimizer steps between checkpoints; 0 saves only at the end.
    pub save_every: u64,
    /// Periodic checkpoints kept on disk; 0 keeps all.
    pub keep_last: usize,
    /// Optimizer steps between log lines.
    pub log_every: u64,
    /// Run directory; none lets the CLI choose one.
    pub out: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: "l2d-lora".into(),
            lr: 1e-4,
            final_lr: 1e-6,
            warmup_steps: 100,
            warmup_type: WarmupType::Log,
            decay: "linear".into(),
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: 1.0,
            batch_size: 32,
            micro_batch_size: 4,
            epochs: 1,
            max_steps: None,
            stop_at_step: None,
            max_seq_len: 2048,
            seed: 0,
            eval_every: 500,
            eval_max_batches: None,
            save_every: 1000,
            keep_last: 2,
            log_every: 10,
            out: None,
        }
    }
}

/// `[data]` section: chat conversations (spec §10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training files or glob patterns (parquet or JSON lines).
    #[serde(deserialize_with = "string_or_list")]
    pub train: Vec<String>,
    /// Validation files or globs; empty splits `valid_fraction` off `train`.
    #[serde(deserialize_with = "string_or_list")]
    pub valid: Vec<String>,
    /// Share of training conversations held out when `valid` is empty (all
    /// turns of a conversation stay on one side of the split).
    pub valid_fraction: f64,
    /// Seed of that split, independent of `train.seed` so runs share a split.
    pub seed: u64,
    /// One of [`SEQ_LEN_POLICIES`]: what happens to examples over `train.max_seq_len`.
    pub max_seq_len_policy: String,
    /// Keep only conversations of these categories; empty keeps all.
    #[serde(deserialize_with = "string_or_list")]
    pub include_categories: Vec<String>,
    /// Drop conversations of these categories.
    #[serde(deserialize_with = "string_or_list")]
    pub exclude_categories: Vec<String>,
    /// Guidance label of each category, subset (a Parquet file's directory) or
    /// file stem; needs `l2d.num_classes` > 0.
    pub class_map: BTreeMap<String, i64>,
    /// Directory `l2d prepare` writes the token shards to; `--out` overrides it.
    pub out: Option<String>,
    /// Most tokens per shard file of `l2d prepare` (an example is never split).
    pub shard_tokens: u64,
    /// `[data.columns]`: which fields of a single-turn record hold the turns, for
    /// records without `messages`; unset detects Alpaca, question/answer and prompt/response.
    pub columns: Option<ColumnMap>,
}

/// `[data.columns]`: a single-turn layout, like torchtune's `column_map`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// Field holding the user's turn (`instruction`, `question`, `prompt`).
    pub user: String,
    /// Field appended to the user's turn after a blank line when non-empty (Alpaca's `input`).
    pub input: Option<String>,
    /// Field holding the assistant's answer (`output`, `answer`, `response`).
    pub assistant: String,
    /// Field holding a system prompt, if the data has one.
    pub system: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: Vec::new(),
            valid: Vec::new(),
            valid_fraction: 0.05,
            seed: 0,
            max_seq_len_policy: "truncate".into(),
            include_categories: Vec::new(),
            exclude_categories: Vec::new(),
            class_map: BTreeMap::new(),
            out: None,
            shard_tokens: 1 << 26,
            columns: None,
        }
    }
}

/// `[generate]` section: decoding of the token drawn after the ODE (spec §8.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    /// Upper bound on generated tokens per prompt.
    pub max_new_tokens: usize,
    /// End-of-sequence and stop strings are ignored before this many tokens.
    pub min_new_tokens: usize,
    /// Softmax temperature; 0 decodes greedily.
    pub temperature: f64,
    /// Nucleus mass; 1 disables top-p.
    pub top_p: f64,
    /// Keeps the k most likely tokens; 0 disables top-k.
    pub top_k: usize,
    /// Seed of token sampling and of the ODE's initial noise.
    pub seed: u64,
    /// Strings that end generation, besides the model's end-of-turn tokens.
    #[serde(deserialize_with = "string_or_list")]
    pub stop: Vec<String>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            min_new_tokens: 0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

/// `[eval]` section: generation over benchmarks (`l2d eval --config`), spec §10.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Benchmarks by name (gsm8k, math, mmlu, mmlu_pro, humaneval, mbpp): `[eval.tasks.NAME]`.
    pub tasks: BTreeMap<String, EvalTaskConfig>,
    /// L2D checkpoint (directory or .safetensors); none evaluates the base LM only.
    pub l2d: Option<String>,
    /// Discretisation levels swept; 0 is the base LM. Empty: 0, plus `l2d.steps` with a checkpoint.
    pub steps: Vec<usize>,
    /// Solvers swept: fixed-grid ones at every level of `steps`, adaptive ones once. Empty: `l2d.solver`.
    #[serde(deserialize_with = "string_or_list")]
    pub solvers: Vec<String>,
    /// Completions per item (pass@k needs at least k); none follows the protocol (paper: 10 for
    /// code, 1 otherwise; clean: 1).
    pub samples: Option<usize>,
    /// First items of each task only; none evaluates all.
    pub limit: Option<usize>,
    /// Prompts decoded together.
    pub batch_size: usize,
    /// Shots per prompt; none follows the protocol (5, HumanEval 0).
    pub num_shots: Option<usize>,
    /// Most new tokens; none follows the protocol (256, 512 for code).
    pub max_new_tokens: Option<usize>,
    /// Guidance class of each task (needs `l2d.num_classes` > 0); the weight is `l2d.guidance_weight`.
    pub class_map: BTreeMap<String, i64>,
    /// Programs run at once in the code sandbox; none uses every CPU.
    pub workers: Option<usize>,
    /// Output directory; `--out` overrides it.
    pub out: Option<String>,
    /// Whose protocol prompts and scores: "paper" (the reference implementation's) or "clean" (l2d's own).
    pub protocol: String,
    /// Keep every prompt token equal to the reference's pad token (pad_token, else eos_token:
    /// `<|eot_id|>` for Llama 3.x Instruct) out of attention, as the reference does; none: on in the
    /// paper protocol, off in the clean one.
    pub mask_prompt_pad: Option<bool>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            tasks: BTreeMap::new(),
            l2d: None,
            steps: Vec::new(),
            solvers: Vec::new(),
            samples: None,
            limit: None,
            batch_size: 8,
            num_shots: None,
            max_new_tokens: None,
            class_map: BTreeMap::new(),
            workers: None,
            out: None,
            protocol: "paper".into(),
            mask_prompt_pad: None,
        }
    }
}

/// `[eval.tasks.NAME]`: where a benchmark's items and shots are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalTaskConfig {
    /// The evaluated items: .jsonl, .jsonl.gz, .json, .parquet, .csv (MMLU), or a directory.
    pub data: String,
    /// The split shots come from (GSM8K/MATH train, MMLU dev, MMLU-Pro validation, MBPP); none: `data`.
    pub shots: Option<String>,
}

/// The temperature schedule of `x1_hat` over diffusion time (spec §8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum X1Schedule {
    /// `tau(t) = tau` throughout.
    Constant,
    /// `tau(t) = (1 - t/end)^power` for `t < end`, else 0.
    Polynomial {
        /// Exponent `p`.
        power: f64,
        /// Time `end` at which the temperature reaches 0.
        end: f64,
    },
}

impl X1Schedule {
    /// Parses "constant" or "polynomial_<p>_<end>", as the reference spells them.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "constant" {
            return Ok(Self::Constant);
        }
        let bad = || {
            format!("expected \"constant\" or \"polynomial_<p>_<end>\" (e.g. \"polynomial_1_1.0\"), got {s:?}")
        };
        let rest = s.strip_prefix("polynomial_").ok_or_else(bad)?;
        let (p, end) = rest.split_once('_').ok_or_else(bad)?;
        let power: f64 = p.parse().map_err(|_| bad())?;
        let end: f64 = end.parse().map_err(|_| bad())?;
        if !(power.is_finite() && power >= 0.0) {
            return Err(format!(
                "polynomial power must be a finite number >= 0, got {s:?}"
            ));
        }
        if !(end.is_finite() && end > 0.0) {
            return Err(format!(
                "polynomial end must be a finite number > 0, got {s:?}"
            ));
        }
        Ok(Self::Polynomial { power, end })
    }
}

/// Reads a list of strings, or one string as a one-element list, so that
/// `--set data.train=path` works without TOML array quoting.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![s.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// A validation failure: the key it is reported under, the other keys that
/// took part (for deciding which source to blame) and what is wrong.
struct Invalid {
    key: &'static str,
    also: &'static [&'static str],
    msg: String,
}

fn invalid(key: &'static str, msg: impl Into<String>) -> Invalid {
    Invalid {
        key,
        also: &[],
        msg: msg.into(),
    }
}

fn one_of(key: &'static str, value: &str, choices: &[&str]) -> Result<(), Invalid> {
    if choices.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("expected one of {}, got {value:?}", quoted(choices)),
        ))
    }
}

fn quoted(choices: &[&str]) -> String {
    choices
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn require(ok: bool, key: &'static str, msg: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(invalid(key, msg()))
    }
}

fn positive(key: &'static str, v: f64) -> Result<(), Invalid> {
    require(v.is_finite() && v > 0.0, key, || {
        format!("must be a finite number > 0, got {v}")
    })
}

fn non_negative(key: &'static str, v: f64) -> Result<(), Invalid> {
    require(v.is_finite() && v >= 0.0, key, || {
        format!("must be a finite number >= 0, got {v}")
    })
}

fn probability(key: &'static str, v: f64) -> Result<(), Invalid> {
    require((0.0..=1.0).contains(&v), key, || {
        format!("must be between 0 and 1, got {v}")
    })
}

fn positive_int(key: &'static str, v: i64) -> Result<(), Invalid> {
    require(v > 0, key, || format!("must be > 0, got {v}"))
}

fn non_empty_items(key: &'static str, items: &[String]) -> Result<(), Invalid> {
    require(items.iter().all(|s| !s.is_empty()), key, || {
        "must not contain empty strings".into()
    })
}

fn valid_device(s: &str) -> bool {
    match s {
        "auto" | "cpu" | "cuda" => true,
        _ => s.strip_prefix("cuda:").is_some_and(|n| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<usize>().is_ok()
        }),
    }
}

impl Config {
    /// Checks enumerated values, ranges and cross-field rules; a failure is a usage error.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.check()
            .map_err(|e| usage(format!("{}: {}", e.key, e.msg)))
    }

    /// Serialises the resolved config, so reports and checkpoints record what ran.
    pub fn to_toml_string(&self) -> String {
        // Every field is a plain TOML type, so this cannot fail.
        toml::to_string(self).expect("a Config always serialises to TOML")
    }

    fn check(&self) -> Result<(), Invalid> {
        let m = &self.model;
        one_of("model.dtype", &m.dtype, DTYPES)?;
        require(valid_device(&m.device), "model.device", || {
            format!(
                "expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {:?}",
                m.device
            )
        })?;

        let l = &self.l2d;
        one_of("l2d.variant", &l.variant, VARIANTS)?;
        positive_int("l2d.flow_dim", l.flow_dim)?;
        positive("l2d.sigma", l.sigma)?;
        positive_int("l2d.lora_rank", l.lora_rank)?;
        positive("l2d.lora_alpha", l.lora_alpha)?;
        positive_int("l2d.timestep_dim", l.timestep_dim)?;
        // The frequency features are a cosine half and a sine half.
        require(l.timestep_dim % 2 == 0, "l2d.timestep_dim", || {
            format!("must be even, got {}", l.timestep_dim)
        })?;
        require(l.num_classes >= 0, "l2d.num_classes", || {
            format!("must be >= 0, got {}", l.num_classes)
        })?;
        probability("l2d.guidance_dropout", l.guidance_dropout)?;
        one_of("l2d.solver", &l.solver, SOLVERS)?;
        require(l.steps >= 2, "l2d.steps", || {
            format!(
                "must be >= 2 (the grid includes t=0 and t=1), got {}",
                l.steps
            )
        })?;
        positive("l2d.atol", l.atol)?;
        positive("l2d.rtol", l.rtol)?;
        one_of("l2d.x1_estimate", &l.x1_estimate, X1_ESTIMATES)?;
        non_negative("l2d.x1_temperature", l.x1_temperature)?;
        X1Schedule::parse(&l.x1_schedule).map_err(|msg| invalid("l2d.x1_schedule", msg))?;
        require(
            l.guidance_weight.is_finite() && l.guidance_weight >= 1.0,
            "l2d.guidance_weight",
            || format!("must be a finite number >= 1, got {}", l.guidance_weight),
        )?;
        if let Some(c) = l.guidance_class {
            require(c >= 0 && c < l.num_classes, "l2d.guidance_class", || {
                format!("must be in 0..l2d.num_classes ({}), got {c}", l.num_classes)
            })
            .map_err(|e| Invalid {
                also: &["l2d.num_classes"],
                ..e
            })?;
        }

        let r = &self.lora;
        positive_int("lora.rank", r.rank)?;
        positive("lora.alpha", r.alpha)?;
        require((0.0..1.0).contains(&r.dropout), "lora.dropout", || {
            format!("must be in [0, 1), got {}", r.dropout)
        })?;
        require(!r.target_modules.is_empty(), "lora.target_modules", || {
            "must name at least one module".into()
        })?;
        non_empty_items("lora.target_modules", &r.target_modules)?;

        positive("dist.timeout_s", self.dist.timeout_s)?;
        positive("dist.bucket_mb", self.dist.bucket_mb)?;

        let t = &self.train;
        one_of("train.mode", &t.mode, MODES)?;
        if let Some(v) = t.mode.strip_prefix("l2d-") {
            // Two spellings of one choice must not disagree silently.
            require(v == l.variant, "l2d.variant", || {
                format!(
                    "{:?} contradicts train.mode = {:?}; set both to agree",
                    l.variant, t.mode
                )
            })
            .map_err(|e| Invalid {
                also: &["train.mode"],
                ..e
            })?;
        }
        positive("train.lr", t.lr)?;
        non_negative("train.final_lr", t.final_lr)?;
        require(t.final_lr <= t.lr, "train.final_lr", || {
            format!("must be <= train.lr ({}), got {}", t.lr, t.final_lr)
        })
        .map_err(|e| Invalid {
            also: &["train.lr"],
            ..e
        })?;
        one_of("train.decay", &t.decay, DECAYS)?;
        for b in t.betas {
            require((0.0..1.0).contains(&b), "train.betas", || {
                format!("each must be in [0, 1), got {b}")
            })?;
        }
        positive("train.eps", t.eps)?;
        non_negative("train.weight_decay", t.weight_decay)?;
        non_negative("train.grad_clip", t.grad_clip)?;
        require(t.batch_size >= 1, "train.batch_size", || {
            "must be >= 1".into()
        })?;
        require(t.micro_batch_size >= 1, "train.micro_batch_size", || {
            "must be >= 1".into()
        })?;
        require(t.eval_max_batches != Some(0), "train.eval_max_batches", || {
            "must be >= 1 (leave it unset to validate on the whole valid split)".into()
        })?;
        require(
            t.batch_size.is_multiple_of(t.micro_batch_size),
            "train.micro_batch_size",
            || {
                format!(
                    "{} does not divide train.batch_size ({})",
                    t.micro_batch_size, t.batch_size
                )
            },
        )
        .map_err(|e| Invalid {
            also: &["train.batch_size"],
            ..e
        })?;
        require(t.epochs >= 1, "train.epochs", || "must be >= 1".into())?;
        require(t.max_steps != Some(0), "train.max_steps", || {
            "must be >= 1 (leave it out for no limit)".into()
        })?;
        require(t.stop_at_step != Some(0), "train.stop_at_step", || {
            "must be >= 1 (leave it out to train to the end)".into()
        })?;
        // One prompt token and one target token at least.
        require(t.max_seq_len >= 2, "train.max_seq_len", || {
            format!("must be >= 2, got {}", t.max_seq_len)
        })?;
        require(t.log_every >= 1, "train.log_every", || {
            "must be >= 1".into()
        })?;
        require(t.out.as_deref() != Some(""), "train.out", || {
            "must not be empty (leave it out instead)".into()
        })?;

        let d = &self.data;
        non_empty_items("data.train", &d.train)?;
        non_empty_items("data.valid", &d.valid)?;
        require(
            (0.0..1.0).contains(&d.valid_fraction),
            "data.valid_fraction",
            || format!("must be in [0, 1), got {}", d.valid_fraction),
        )?;
        one_of(
            "data.max_seq_len_policy",
            &d.max_seq_len_policy,
            SEQ_LEN_POLICIES,
        )?;
        require(d.out.as_deref() != Some(""), "data.out", || {
            "must not be empty (leave it out instead)".into()
        })?;
        require(d.shard_tokens >= 1, "data.shard_tokens", || "must be >= 1".into())?;
        if let Some(c) = d
            .include_categories
            .iter()
            .find(|c| d.exclude_categories.contains(c))
        {
            return Err(Invalid {
                key: "data.exclude_categories",
                also: &["data.include_categories"],
                msg: format!("{c:?} is also in data.include_categories"),
            });
        }
        if !d.class_map.is_empty() {
            require(l.num_classes > 0, "data.class_map", || {
                "needs l2d.num_classes > 0".into()
            })
            .map_err(|e| Invalid {
                also: &["l2d.num_classes"],
                ..e
            })?;
        }
        if let Some((name, c)) = d
            .class_map
            .iter()
            .find(|(_, &c)| c < 0 || c >= l.num_classes)
        {
            return Err(Invalid {
                key: "data.class_map",
                also: &["l2d.num_classes"],
                msg: format!(
                    "class of {name:?} must be in 0..l2d.num_classes ({}), got {c}",
                    l.num_classes
                ),
            });
        }

        let g = &self.generate;
        require(g.max_new_tokens >= 1, "generate.max_new_tokens", || {
            "must be >= 1".into()
        })?;
        require(
            g.min_new_tokens <= g.max_new_tokens,
            "generate.min_new_tokens",
            || {
                format!(
                    "must be <= generate.max_new_tokens ({}), got {}",
                    g.max_new_tokens, g.min_new_tokens
                )
            },
        )
        .map_err(|e| Invalid {
            also: &["generate.max_new_tokens"],
            ..e
        })?;
        non_negative("generate.temperature", g.temperature)?;
        require(g.top_p > 0.0 && g.top_p <= 1.0, "generate.top_p", || {
            format!("must be in (0, 1], got {}", g.top_p)
        })?;
        non_empty_items("generate.stop", &g.stop)?;

        let e = &self.eval;
        for solver in &e.solvers {
            one_of("eval.solvers", solver, SOLVERS)?;
        }
        if let Some(bad) = e.steps.iter().find(|&&s| s == 1) {
            return Err(invalid("eval.steps", format!("{bad}: a level count must be 0 (the base LM) or >= 2")));
        }
        one_of("eval.protocol", &e.protocol, &crate::eval::Protocol::NAMES)?;
        require(e.samples != Some(0), "eval.samples", || "must be >= 1".into())?;
        require(e.limit != Some(0), "eval.limit", || "must be >= 1 (leave it out to evaluate every item)".into())?;
        require(e.batch_size >= 1, "eval.batch_size", || "must be >= 1".into())?;
        require(e.max_new_tokens != Some(0), "eval.max_new_tokens", || "must be >= 1".into())?;
        require(e.workers != Some(0), "eval.workers", || "must be >= 1".into())?;
        require(e.l2d.as_deref() != Some(""), "eval.l2d", || "must not be empty (leave it out instead)".into())?;
        Ok(())
    }
}

/// Where a value came from, for naming it in an error.
enum Source<'a> {
    File(&'a Path),
    Set(&'a str),
    Defaults,
}

/// Reads `path` (if any), applies `--set section.key=value` overrides in order,
/// and returns the validated config; every user mistake is a usage error.
pub fn load(path: Option<&Path>, sets: &[String]) -> anyhow::Result<Config> {
    let mut root = match path {
        Some(p) => read_table(p)?,
        None => toml::Table::new(),
    };
    let mut set_keys: Vec<String> = Vec::with_capacity(sets.len());
    for set in sets {
        set_keys.push(apply_set(&mut root, set)?);
    }
    let source_of = |key: &str| blame(key, path, &set_keys);

    let cfg: Config = match serde_path_to_error::deserialize(toml::Value::Table(root)) {
        Ok(cfg) => cfg,
        Err(err) => {
            let at = dotted(err.path());
            let msg = err.inner().message().to_owned();
            if let Some(field) = unknown_field(&msg) {
                // serde_path_to_error usually records the rejected key itself.
                let key = if at == field || at.ends_with(&format!(".{field}")) {
                    at
                } else if at.is_empty() {
                    field.to_owned()
                } else {
                    format!("{at}.{field}")
                };
                // The list of valid keys is what makes a typo obvious.
                let known = msg
                    .split_once("`, ")
                    .map(|(_, rest)| format!(" ({})", rest.replace('`', "")))
                    .unwrap_or_default();
                let line = match source_of(&key) {
                    Source::File(p) => format!("{}: unknown key {key}{known}", p.display()),
                    Source::Set(k) if k == key => format!("--set: unknown key {key}{known}"),
                    Source::Set(k) => format!("--set {k}: unknown key {key}{known}"),
                    Source::Defaults => format!("unknown key {key}{known}"),
                };
                return Err(usage(line));
            }
            let key = if at.is_empty() {
                "(top level)".to_owned()
            } else {
                at
            };
            return Err(usage(located(&source_of(&key), &key, &friendly(&msg))));
        }
    };

    if let Err(e) = cfg.check() {
        let src = std::iter::once(e.key)
            .chain(e.also.iter().copied())
            .map(&source_of)
            .find(|s| matches!(s, Source::Set(_)))
            .unwrap_or_else(|| source_of(e.key));
        return Err(usage(located(&src, e.key, &e.msg)));
    }
    Ok(cfg)
}

/// The source of `key`: the last `--set` touching it, else the file.
fn blame<'a>(key: &str, path: Option<&'a Path>, set_keys: &'a [String]) -> Source<'a> {
    // The last override wins, so it is the one to blame.
    if let Some(k) = set_keys.iter().rev().find(|k| overlaps(k, key)) {
        return Source::Set(k);
    }
    path.map_or(Source::Defaults, Source::File)
}

fn located(src: &Source, key: &str, msg: &str) -> String {
    match src {
        Source::File(p) => format!("{}: {key}: {msg}", p.display()),
        Source::Set(k) if overlaps(k, key) => format!("--set {key}: {msg}"),
        // Blamed through a related key: name both the override and the key.
        Source::Set(k) => format!("--set {k}: {key}: {msg}"),
        Source::Defaults => format!("{key}: {msg}"),
    }
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("{}: cannot read config: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|s| line_col(&text, s.start))
            .map(|(l, c)| format!(":{l}:{c}"))
            .unwrap_or_default();
        usage(format!(
            "{}{at}: invalid TOML: {}",
            path.display(),
            e.message().replace('\n', " ")
        ))
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Applies one `section.key=value` override and returns its dotted key.
fn apply_set(root: &mut toml::Table, set: &str) -> anyhow::Result<String> {
    let Some((key, raw)) = set.split_once('=') else {
        return Err(usage(format!("--set {set:?}: expected section.key=value")));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(usage(format!(
            "--set {set:?}: empty key (expected section.key=value)"
        )));
    }
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(usage(format!(
            "--set {set:?}: empty part in key {key:?} (expected section.key=value)"
        )));
    }
    let key = parts.join(".");
    let raw = raw.trim();

    let (last, parents) = parts.split_last().expect("split yields at least one part");
    let mut table = root;
    for (i, part) in parents.iter().enumerate() {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(usage(format!(
                    "--set {key}: {} is not a table",
                    parts[..=i].join(".")
                )))
            }
        };
    }
    if raw.is_empty() {
        // An empty value restores the default, the only way to unset an optional key.
        table.remove(*last);
    } else {
        // A bare word or a path is not TOML; taking it as a string saves quoting.
        let value = raw
            .parse::<toml::Value>()
            .unwrap_or_else(|_| toml::Value::String(raw.to_owned()));
        table.insert(last.to_string(), value);
    }
    Ok(key)
}

/// True if one dotted key is the other or lies inside it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| {
        long == short
            || long
                .strip_prefix(short)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    inside(a, b) || inside(b, a)
}

fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// The field name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Rewrites serde's Rust type names into TOML words.
fn friendly(msg: &str) -> String {
    let one_line = msg.replace('\n', " ");
    let Some((head, expected)) = one_line.rsplit_once(", expected ") else {
        return one_line;
    };
    let expected = match expected {
        "f64" | "f32" => "a number",
        "u64" | "u32" | "u16" | "u8" | "usize" => "a non-negative integer",
        "i64" | "i32" | "i16" | "i8" | "isize" => "an integer",
        "a sequence" => "an array",
        "a map" => "a table",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    format!("{head}, expected {expected}")
}
