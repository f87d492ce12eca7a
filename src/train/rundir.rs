//! A run's directory: starting one or reopening it (`--resume`, a torchrun
//! restart), the debris of killed writers, the logs cut back to a
//! checkpoint, and the trained result written at the end.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use super::checkpoint::{self, Checkpoint};
use super::identity::{self, Identity};
use super::trainee::{shallow, Trainee};
use crate::config::Config;
use crate::dist::Dist;
use crate::l2d::checkpoint::{self as l2d_ckpt, BaseIdentity};
use crate::model::weights::Weights;
use crate::model::Llama;

/// The subdirectory of a run that holds its checkpoints.
pub(super) const CHECKPOINTS: &str = "checkpoints";

/// Whether rank 0 continues the run in `out` as `--resume` would because
/// torchrun restarted the group after a failure: when an earlier attempt of
/// this job had started the run and written its config. An attempt that died
/// before that left nothing to continue (the run starts afresh, clearing what
/// it left); one that failed before starting (an existing run refused) is no
/// licence to continue someone else's run.
pub(super) fn resumes_after_restart(dist: &Dist, out: &Path) -> Result<bool> {
    if !dist.is_main() || !dist.restarts_a_started_run()? || !out.join(checkpoint::CONFIG).is_file() {
        return Ok(false);
    }
    tracing::warn!("torchrun restarted the group: continuing the run in {} from its newest valid checkpoint", out.display());
    Ok(true)
}

/// A new run in `out`: refused where a run with checkpoints already is;
/// what killed writers left there is removed. Returns the directories made.
pub(super) fn start_run(out: &Path) -> Result<crate::io::CreatedDirs> {
    let made = crate::io::create_output_dir(out).context("--out")?;
    if let Some((step, _)) = checkpoint::step_dirs(&out.join(CHECKPOINTS))?.last() {
        crate::bail_usage!("--out {}: already holds a run (checkpoint at step {step}); pass --resume to continue it", out.display());
    }
    remove_debris(out)?;
    Ok(made)
}

/// The run in `out` to continue with `cfg`: its newest valid checkpoint (if
/// it has one yet) and the config changes `cfg` makes, once [`identity`]
/// allows them; each change is logged as a warning.
pub(super) fn open_run(out: &Path, cfg: &Config, identity: &Identity) -> Result<(Option<Checkpoint>, Vec<identity::Change>)> {
    let config = out.join(checkpoint::CONFIG);
    if !config.is_file() {
        crate::bail_usage!("--resume: {} holds no run to resume (no {}); drop --resume to start a new run", out.display(), checkpoint::CONFIG);
    }
    remove_debris(out)?;
    let ckpt = checkpoint::newest_valid(&out.join(CHECKPOINTS))?;
    let old = crate::config::load(Some(&ckpt.as_ref().map_or(config, |c| c.dir.join(checkpoint::CONFIG))), &[])?;
    let changes = identity::check_resume(&old, cfg, ckpt.as_ref().map(|c| &c.state.identity), identity, out)?;
    for change in &changes {
        tracing::warn!("--resume: {change}");
    }
    Ok((ckpt, changes))
}

/// Removes the staging directories and temporary files of killed saves.
fn remove_debris(out: &Path) -> Result<()> {
    for dir in [out.to_path_buf(), out.join(CHECKPOINTS), out.join(checkpoint::TENSORBOARD)] {
        crate::io::remove_staging_debris(&dir)?;
    }
    Ok(())
}

/// Makes `metrics.jsonl` and `tb/` end at the checkpoint's step, warning when
/// the live log had lost lines the checkpoint's copy restores.
pub(super) fn restore_logs(out: &Path, ckpt: Option<&Checkpoint>) -> Result<()> {
    if checkpoint::restore_logs(out, ckpt)? {
        if let Some(c) = ckpt {
            tracing::warn!("{} had lost lines up to step {}; restored from {}", out.join(checkpoint::METRICS).display(), c.state.step, c.dir.display());
        }
    }
    Ok(())
}

/// The trained result: an L2D checkpoint (`out/l2d`) or a model directory
/// (`out/model`, weights in f32). For `lora` the model directory holds the
/// merged weights `W + scale·B·A`, and `out/adapter` the adapters in PEFT's layout.
pub(super) fn write_result(trainee: &Trainee, model: &Llama, cfg: &Config, base_dir: &Path, out: &Path, step: u64) -> Result<PathBuf> {
    match trainee {
        Trainee::L2d(l2d) => {
            let dest = out.join("l2d");
            let meta = l2d_ckpt::Metadata {
                format: "l2d".into(),
                version: 1,
                shape: l2d.shape.clone(),
                l2d: cfg.l2d.clone(),
                base: BaseIdentity::of(model, base_dir)?,
                step,
            };
            replace_dir(&dest, |d| l2d_ckpt::save(d, l2d, &meta))?;
            Ok(dest)
        }
        Trainee::Lora(adapters) => {
            let dest = out.join("model");
            let base = Weights::open_dir(base_dir, Device::Cpu, Kind::Float)?;
            replace_dir(&dest, |d| save_model_dir(&adapters.merged(&base)?, base_dir, d))?;
            let base_name = std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
            replace_dir(&out.join("adapter"), |d| adapters.save_peft(d, &base_name.display().to_string()))?;
            Ok(dest)
        }
        Trainee::Full { masters } => {
            let dest = out.join("model");
            let tensors = match masters {
                Some(m) => model.hf_named(shallow(m)),
                None => model.hf_tensors(),
            };
            let f32_tensors: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float))).collect();
            replace_dir(&dest, |d| save_model_dir(&f32_tensors, base_dir, d))?;
            Ok(dest)
        }
    }
}

/// Writes a new version of `dest` beside it, then swaps it in.
fn replace_dir(dest: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let fresh = dest.with_extension("new");
    let _ = std::fs::remove_dir_all(&fresh);
    write(&fresh)?;
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::rename(&fresh, dest).with_context(|| format!("cannot move the result into {}", dest.display()))
}

/// A complete Hugging Face model directory: the base's config and tokenizer
/// files with `tensors` (Hugging Face names) as the weights.
fn save_model_dir(tensors: &[(String, Tensor)], base_dir: &Path, dest: &Path) -> Result<()> {
    let staged = crate::io::StagedDir::new(dest)?;
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        let src = base_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, staged.path().join(f)).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    let tensors: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
    crate::model::weights::save(&staged.path().join("model.safetensors"), &tensors)?;
    staged.commit()?;
    Ok(())
}
