//! Training: modes, parameter accounting, the optimizer, batching and the loop.

pub mod checkpoint;
pub mod data;
pub mod identity;
pub mod optim;
pub mod plan;
pub mod run;
mod rundir;
pub mod tensorboard;
pub mod trainee;
mod zero;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::l2d::{params, Shape};
use crate::model::ModelConfig;

pub use crate::config::Mode;

/// Trainable and frozen parameter counts of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ParamCounts {
    /// Elements that receive gradients.
    pub trainable_params: i64,
    /// Elements of the base model that stay fixed.
    pub frozen_params: i64,
}

/// Counts parameters from the base model's `config.json` alone (no weights needed).
pub fn param_counts(model: &ModelConfig, cfg: &Config) -> Result<ParamCounts> {
    let base = model.num_params();
    let mode = cfg.train.mode;
    Ok(match mode {
        Mode::L2dLora | Mode::L2dFull => {
            let shape = Shape::from_config(&cfg.l2d);
            ParamCounts { trainable_params: params::count(&params::specs(model, &shape)), frozen_params: base }
        }
        Mode::Full => ParamCounts { trainable_params: base, frozen_params: 0 },
        Mode::Lora => ParamCounts {
            trainable_params: crate::model::adapters::Settings::from_config(&cfg.lora)?.num_params(model),
            frozen_params: base,
        },
    })
}

/// Keeps the memory libtorch frees inside the process rather than returning it
/// to the kernel: every step frees and reallocates the same large buffers, and
/// fresh pages would be faulted in and zeroed each time (3-9% of a CPU step on
/// the `small` benchmark). Process-wide; a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocation thresholds.
    unsafe {
        // Blocks up to glibc's 32 MiB ceiling come from the heap, not their own mmap;
        // the heap's top is never trimmed and grows in 64 MiB strides.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Resident memory of this process in bytes, from `/proc/self/status`: now
/// (`VmRSS`) and at its peak (`VmHWM`); `None` where that file is missing (not Linux).
pub fn resident_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |field: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((kib("VmRSS:")? * 1024, kib("VmHWM:")? * 1024))
}
