//! The schema of the TOML run configuration: one struct per `[section]`, with
//! the paper's defaults (Table 3 and the reference implementation).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::choices::{Decay, Dtype, Mode, Protocol, SeqLenPolicy, Solver, Variant, WarmupType, X1Estimate, X1Schedule};

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

/// `[model]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Hugging Face model directory; empty until the user names one.
    pub path: String,
    /// The weights' float type.
    pub dtype: Dtype,
    /// "auto", "cpu", "cuda" or "cuda:N".
    pub device: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            dtype: Dtype::Auto,
            device: "auto".into(),
        }
    }
}

/// `[l2d]` section: spec §1-8 with the reference implementation's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2dConfig {
    /// LoRA or full projections; must agree with an "l2d-*" `train.mode`.
    pub variant: Variant,
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
    /// The ODE integrator.
    pub solver: Solver,
    /// Discretisation levels `S` of the time grid `linspace(0, 1, S)`.
    pub steps: usize,
    /// Absolute tolerance of the adaptive solvers.
    pub atol: f64,
    /// Relative tolerance of the adaptive solvers.
    pub rtol: f64,
    /// How `x1_hat` is formed from the logits.
    pub x1_estimate: X1Estimate,
    /// Temperature of `x1_hat`; 0 picks the argmax token.
    pub x1_temperature: f64,
    /// "constant" or "polynomial_<p>_<end>"; see [`X1Schedule`].
    pub x1_schedule: X1Schedule,
    /// Classifier-free guidance weight `w` (>= 1; 1 is no guidance).
    pub guidance_weight: f64,
    /// Class to guide towards at inference; none uses the "no label" row.
    pub guidance_class: Option<i64>,
}

impl Default for L2dConfig {
    fn default() -> Self {
        Self {
            variant: Variant::Lora,
            flow_dim: 256,
            sigma: 64.0,
            lora_rank: 32,
            lora_alpha: 32.0,
            timestep_dim: 256,
            num_classes: 0,
            guidance_dropout: 0.2,
            solver: Solver::Midpoint,
            steps: 8,
            atol: 1e-5,
            rtol: 1e-5,
            x1_estimate: X1Estimate::Sample,
            x1_temperature: 1.0,
            x1_schedule: X1Schedule::Constant,
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
    #[serde(deserialize_with = "one_or_list")]
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

/// `[train]` section: AdamW with warmup and linear decay (Table 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// What the run trains.
    pub mode: Mode,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// Learning rate at the last step.
    pub final_lr: f64,
    /// Optimizer steps of warmup up to `lr`.
    pub warmup_steps: u64,
    /// The warmup's shape (DeepSpeed's option of the same name).
    pub warmup_type: WarmupType,
    /// The shape from `lr` to `final_lr`.
    pub decay: Decay,
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
    /// ZeRO stage: 0 keeps the whole AdamW state on every rank; 1 shards the
    /// moments and the f32 master update across data-parallel ranks
    /// (`full` and `l2d-full` only).
    pub zero: u8,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: Mode::L2dLora,
            lr: 1e-4,
            final_lr: 1e-6,
            warmup_steps: 100,
            warmup_type: WarmupType::Log,
            decay: Decay::Linear,
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
            zero: 0,
        }
    }
}

/// `[data]` section: chat conversations (spec §10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training files or glob patterns (parquet or JSON lines).
    #[serde(deserialize_with = "one_or_list")]
    pub train: Vec<String>,
    /// Validation files or globs; empty splits `valid_fraction` off `train`.
    #[serde(deserialize_with = "one_or_list")]
    pub valid: Vec<String>,
    /// Share of training conversations held out when `valid` is empty (all
    /// turns of a conversation stay on one side of the split).
    pub valid_fraction: f64,
    /// Seed of that split, independent of `train.seed` so runs share a split.
    pub seed: u64,
    /// What happens to examples over `train.max_seq_len`.
    pub max_seq_len_policy: SeqLenPolicy,
    /// Keep only conversations of these categories; empty keeps all.
    #[serde(deserialize_with = "one_or_list")]
    pub include_categories: Vec<String>,
    /// Drop conversations of these categories.
    #[serde(deserialize_with = "one_or_list")]
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
            max_seq_len_policy: SeqLenPolicy::Truncate,
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
    #[serde(deserialize_with = "one_or_list")]
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
    #[serde(deserialize_with = "one_or_list")]
    pub solvers: Vec<Solver>,
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
    pub protocol: Protocol,
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
            protocol: Protocol::Paper,
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

/// Reads a list, or one value as a one-element list, so that
/// `--set data.train=path` works without TOML array quoting.
fn one_or_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            T::deserialize(de::value::StrDeserializer::<E>::new(s)).map(|v| vec![v])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<T>()? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V(PhantomData))
}
