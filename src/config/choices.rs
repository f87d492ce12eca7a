//! Every enumerated choice a user makes in a config file or a flag, as a type.
//!
//! Each is defined once here with its spellings; parsing, serde, `Display`
//! and the error message all come from that one list, so a
//! new solver or mode is one line in its enum plus the code that gives it meaning.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// "expected one of "a", "b", got "x"": the message of every bad choice.
fn expected_one_of(names: &[&str], got: &str) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("expected one of {}, got {got:?}", names.join(", "))
}

/// Defines a choice enum: its variants with their config spellings, `ALL`,
/// `NAMES`, `name()`, `FromStr`, `Display` and serde as the spelling.
macro_rules! choice {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order messages list them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The spellings accepted in configs and flags, in the order of [`Self::ALL`].
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The spelling used in configs, flags and reports.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(expected_one_of(Self::NAMES, s)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.name() == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

choice! {
    /// `model.dtype`: the weights' float type; `auto` is bf16 on CUDA and f32 on CPU.
    pub enum Dtype {
        /// bf16 on CUDA, f32 on CPU.
        Auto = "auto",
        /// 32-bit floats.
        F32 = "f32",
        /// bfloat16.
        Bf16 = "bf16",
        /// IEEE half precision.
        F16 = "f16",
    }
}

choice! {
    /// `train.mode`: what a run trains.
    pub enum Mode {
        /// L2D with LoRA diffusion-path projections.
        L2dLora = "l2d-lora",
        /// L2D with full diffusion-path projections.
        L2dFull = "l2d-full",
        /// Weight LoRA on the base model (baseline).
        Lora = "lora",
        /// Full weight finetuning (baseline).
        Full = "full",
    }
}

impl Mode {
    /// Whether the run trains an L2D diffusion path.
    pub fn is_l2d(self) -> bool {
        matches!(self, Self::L2dLora | Self::L2dFull)
    }

    /// The diffusion path's variant an `l2d-*` mode names.
    pub fn l2d_variant(self) -> Option<Variant> {
        match self {
            Self::L2dLora => Some(Variant::Lora),
            Self::L2dFull => Some(Variant::Full),
            Self::Lora | Self::Full => None,
        }
    }
}

choice! {
    /// `l2d.variant`: LoRA updates on the frozen matrices, or full trainable copies of them.
    pub enum Variant {
        /// `l2d-lora`: `x·A·B·(alpha/rank)` beside the frozen matrix.
        Lora = "lora",
        /// `l2d-full`: separate trainable copies initialised from the main path.
        Full = "full",
    }
}

choice! {
    /// `l2d.solver`: the ODE integrator (torchdiffeq's method names), fixed-grid ones first.
    pub enum Solver {
        /// Forward Euler on the grid: 1 evaluation per step.
        Euler = "euler",
        /// Explicit midpoint on the grid: 2 evaluations per step.
        Midpoint = "midpoint",
        /// torchdiffeq's `rk4`, which is the 3/8-rule Runge-Kutta (`rk4_alt_step_func`): 4 evaluations per step.
        Rk4 = "rk4",
        /// Bogacki-Shampine 3(2), adaptive.
        Bosh3 = "bosh3",
        /// Dormand-Prince 5(4), adaptive.
        Dopri5 = "dopri5",
        /// Heun 2 with an Euler 1 error estimate, adaptive.
        AdaptiveHeun = "adaptive_heun",
    }
}

choice! {
    /// `l2d.x1_estimate`: how `x1_hat` is formed from the diffusion path's logits.
    pub enum X1Estimate {
        /// `rep(y)`, `y ~ softmax(logits / tau)`.
        Sample = "sample",
        /// `sum_k softmax(logits / tau)_k · rep(k)`.
        Average = "average",
    }
}

choice! {
    /// `train.warmup_type`: how the learning rate rises during warmup.
    pub enum WarmupType {
        /// DeepSpeed's `WarmupDecayLR` with `warmup_type = "log"` as the reference's
        /// engine drives it: `final_lr` for the first two steps, then
        /// `final_lr + (lr - final_lr) * ln(k + 1) / ln(warmup)` at scheduler index `k = step - 1`.
        Log = "log",
        /// transformers' linear warmup from 0: `lr * step / warmup` at 0-based `step`.
        Linear = "linear",
    }
}

choice! {
    /// `train.decay`: the shape from `lr` to `final_lr` (Table 3 uses only linear decay).
    pub enum Decay {
        /// Straight down to `final_lr` at the last step.
        Linear = "linear",
    }
}

choice! {
    /// `data.max_seq_len_policy`: what happens to an example over `train.max_seq_len`.
    pub enum SeqLenPolicy {
        /// Cut to the limit.
        Truncate = "truncate",
        /// Left out (and counted).
        Drop = "drop",
    }
}

choice! {
    /// `eval.protocol`: whose evaluation protocol decides prompts and verdicts.
    pub enum Protocol {
        /// The reference implementation's, quirks included, so that numbers compare with the paper's.
        Paper = "paper",
        /// l2d's own: tolerant extraction, numeric comparison, fenced code (README, "The clean protocol").
        Clean = "clean",
    }
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol::Paper
    }
}

/// `l2d.x1_schedule`: the temperature schedule of `x1_hat` over diffusion time (spec §8).
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
            return Err(format!("polynomial power must be a finite number >= 0, got {s:?}"));
        }
        if !(end.is_finite() && end > 0.0) {
            return Err(format!("polynomial end must be a finite number > 0, got {s:?}"));
        }
        Ok(Self::Polynomial { power, end })
    }
}

impl fmt::Display for X1Schedule {
    /// The reference's spelling; numbers as Python prints floats (`polynomial_1.0_1.0`), which parses back equal.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            X1Schedule::Constant => f.write_str("constant"),
            X1Schedule::Polynomial { power, end } => write!(f, "polynomial_{power:?}_{end:?}"),
        }
    }
}

impl FromStr for X1Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        X1Schedule::parse(s)
    }
}

impl Serialize for X1Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for X1Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        X1Schedule::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_parses_its_own_name_back() {
        for s in Solver::ALL {
            assert_eq!(s.name().parse::<Solver>(), Ok(*s));
        }
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>(), Ok(*m));
        }
        assert_eq!("heun".parse::<Solver>().unwrap_err(), format!("expected one of {}, got \"heun\"", "\"euler\", \"midpoint\", \"rk4\", \"bosh3\", \"dopri5\", \"adaptive_heun\""));
    }

    #[test]
    fn x1_schedules_print_what_parses_back_equal() {
        for s in ["constant", "polynomial_1_1.0", "polynomial_2.5_0.8", "polynomial_0_1e-3"] {
            let v = X1Schedule::parse(s).unwrap();
            assert_eq!(X1Schedule::parse(&v.to_string()), Ok(v), "{s}");
        }
    }
}
