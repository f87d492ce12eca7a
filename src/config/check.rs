//! The one place where config values are checked: ranges and cross-field
//! rules. Choices are typed ([`super::choices`]), so what deserialises and
//! passes here is a run the library can carry out without checking again.

use super::{Config, Mode};
use crate::error::usage;

/// A validation failure: the key it is reported under, the other keys that
/// took part (for deciding which source to blame) and what is wrong.
pub(super) struct Invalid {
    pub(super) key: &'static str,
    pub(super) also: &'static [&'static str],
    pub(super) msg: String,
}

fn invalid(key: &'static str, msg: impl Into<String>) -> Invalid {
    Invalid {
        key,
        also: &[],
        msg: msg.into(),
    }
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

    pub(super) fn check(&self) -> Result<(), Invalid> {
        let m = &self.model;
        require(valid_device(&m.device), "model.device", || {
            format!(
                "expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {:?}",
                m.device
            )
        })?;

        let l = &self.l2d;
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
        require(l.steps >= 2, "l2d.steps", || {
            format!(
                "must be >= 2 (the grid includes t=0 and t=1), got {}",
                l.steps
            )
        })?;
        positive("l2d.atol", l.atol)?;
        positive("l2d.rtol", l.rtol)?;
        non_negative("l2d.x1_temperature", l.x1_temperature)?;
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
        if let Some(v) = t.mode.l2d_variant() {
            // Two spellings of one choice must not disagree silently.
            require(v == l.variant, "l2d.variant", || {
                format!(
                    "\"{}\" contradicts train.mode = \"{}\"; set both to agree",
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
        require(t.zero <= 1, "train.zero", || format!("must be 0 or 1, got {}", t.zero))?;
        // LoRA modes train a few million parameters: their optimizer state is
        // small beside the frozen model, so sharding it would save nothing.
        require(t.zero == 0 || matches!(t.mode, Mode::Full | Mode::L2dFull), "train.zero", || {
            format!("1 (ZeRO-1) applies to train.mode = \"full\" or \"l2d-full\", not \"{}\"", t.mode)
        })
        .map_err(|e| Invalid { also: &["train.mode"], ..e })?;

        let d = &self.data;
        non_empty_items("data.train", &d.train)?;
        non_empty_items("data.valid", &d.valid)?;
        require(
            (0.0..1.0).contains(&d.valid_fraction),
            "data.valid_fraction",
            || format!("must be in [0, 1), got {}", d.valid_fraction),
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
        if let Some(bad) = e.steps.iter().find(|&&s| s == 1) {
            return Err(invalid("eval.steps", format!("{bad}: a level count must be 0 (the base LM) or >= 2")));
        }
        require(e.samples != Some(0), "eval.samples", || "must be >= 1".into())?;
        require(e.limit != Some(0), "eval.limit", || "must be >= 1 (leave it out to evaluate every item)".into())?;
        require(e.batch_size >= 1, "eval.batch_size", || "must be >= 1".into())?;
        require(e.max_new_tokens != Some(0), "eval.max_new_tokens", || "must be >= 1".into())?;
        require(e.workers != Some(0), "eval.workers", || "must be >= 1".into())?;
        require(e.l2d.as_deref() != Some(""), "eval.l2d", || "must not be empty (leave it out instead)".into())?;
        Ok(())
    }
}
