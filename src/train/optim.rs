//! AdamW exactly as `torch.optim.AdamW` computes it, with state that can be
//! saved and restored bit for bit.

use anyhow::Result;
use std::collections::HashMap;
use std::time::Instant;
use tch::{Kind, Tensor};

use super::zero::Shard;
use crate::config::{TrainConfig, WarmupType};
use crate::dist::Dist;

/// Decoupled weight-decay Adam over named parameters.
pub struct AdamW {
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken.
    pub step: i64,
    /// Per parameter: first and second moments, and whether it decays
    /// (empty when the state is sharded).
    state: Vec<Moments>,
    /// This rank's share of the moments under ZeRO-1.
    shard: Option<Box<Shard>>,
}

struct Moments {
    name: String,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

/// Biases and norm scales are not decayed (the usual no-decay set).
pub fn decays(name: &str, t: &Tensor) -> bool {
    !(name.ends_with("bias") || name.contains("norm") || t.dim() < 2)
}

impl AdamW {
    /// Fresh state for `params`.
    pub fn new(params: &[(String, Tensor)], betas: (f64, f64), eps: f64, weight_decay: f64) -> Self {
        let state = params
            .iter()
            .map(|(name, p)| Moments {
                name: name.clone(),
                exp_avg: p.zeros_like().to_kind(Kind::Float),
                exp_avg_sq: p.zeros_like().to_kind(Kind::Float),
                decay: decays(name, p),
            })
            .collect();
        Self { betas, eps, weight_decay, step: 0, state, shard: None }
    }

    /// Fresh state for `params` under ZeRO-1: this rank of `dist` keeps only
    /// its slice of the moments, and of the f32 masters when `keep_masters`
    /// (filled by [`AdamW::shard_from_main`]). Collectives move at most `bucket_bytes` each.
    pub fn new_sharded(
        params: &[(String, Tensor)],
        (betas, eps, weight_decay): ((f64, f64), f64, f64),
        dist: &Dist,
        bucket_bytes: usize,
        keep_masters: bool,
    ) -> Result<Self> {
        let shard = Shard::new(params, dist, bucket_bytes, keep_masters)?;
        Ok(Self { betas, eps, weight_decay, step: 0, state: Vec::new(), shard: Some(Box::new(shard)) })
    }

    /// Whether the state is sharded across ranks (ZeRO-1).
    pub fn is_sharded(&self) -> bool {
        self.shard.is_some()
    }

    /// One update of every parameter from its `.grad()` at learning rate `lr`.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let u = Update::new(self.betas, self.eps, self.weight_decay, self.step, lr);
        for ((_, p), m) in params.iter().zip(&mut self.state) {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            u.apply(&mut p.shallow_clone(), &grad.to_kind(Kind::Float), &mut m.exp_avg, &mut m.exp_avg_sq, m.decay);
        }
    }

    /// The ZeRO-1 step: reduce-scatters the gradients, takes the global norm
    /// of the shards (`check`ed before anything changes), clips, updates this
    /// rank's masters and all-gathers them into `params`. Returns the norm and
    /// the seconds spent in the collectives.
    pub fn sharded_step(
        &mut self,
        params: &[(String, Tensor)],
        lr: f64,
        max_norm: f64,
        dist: &Dist,
        check: impl FnOnce(f64) -> Result<()>,
    ) -> Result<(f64, f64)> {
        let _guard = tch::no_grad_guard();
        let shard = self.shard.as_deref().expect("sharded_step on a sharded optimizer");
        let started = Instant::now();
        let grads = shard.reduce_scatter_grads(params, dist)?;
        let mut comm_s = started.elapsed().as_secs_f64();
        let norm = shard.grad_norm(&grads, dist)?;
        check(norm)?;
        if let Some(coef) = clip_coef(norm, max_norm) {
            let _ = grads.shallow_clone().g_mul_scalar_(coef);
        }
        self.step += 1;
        let u = Update::new(self.betas, self.eps, self.weight_decay, self.step, lr);
        let master = shard.update(params, &grads, &u);
        let gathering = Instant::now();
        shard.all_gather_into(params, &master, dist)?;
        comm_s += gathering.elapsed().as_secs_f64();
        Ok((norm, comm_s))
    }

    /// Under ZeRO-1, fills this rank's masters from `params` (f32, the same on
    /// every rank) and its moments from the state rank 0 loaded (zeros on a
    /// fresh start); a no-op otherwise.
    pub fn shard_from_main(&mut self, params: &[(String, Tensor)], dist: &Dist) -> Result<()> {
        match &mut self.shard {
            Some(shard) => shard.fill_from_main(params, dist),
            None => Ok(()),
        }
    }

    /// Whether the f32 masters live in this optimizer's shards (ZeRO-1 with a
    /// bf16/f16 model), so that the trainable tensors may be lowered to the compute dtype.
    pub fn keeps_masters(&self) -> bool {
        self.shard.as_ref().is_some_and(|s| s.keeps_masters())
    }

    /// The whole f32 masters, named as the trainable tensors, on rank 0's host
    /// when this optimizer keeps them (a collective, like [`AdamW::full_state`];
    /// the other ranks get an empty list); `None` otherwise.
    pub fn full_masters(&self, dist: &Dist) -> Result<Option<Vec<(String, Tensor)>>> {
        match &self.shard {
            Some(shard) => shard.gather_masters(dist),
            None => Ok(None),
        }
    }

    /// The whole state as named tensors for a checkpoint: under ZeRO-1 the
    /// shards gathered onto rank 0's host memory (a collective: every rank calls
    /// it; only rank 0's list is non-empty), the same names and shapes as unsharded.
    pub fn full_state(&self, dist: &Dist) -> Result<Vec<(String, Tensor)>> {
        match &self.shard {
            Some(shard) => shard.gather_moments(dist),
            None => Ok(self.state_tensors()),
        }
    }

    /// The moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.state
            .iter()
            .flat_map(|m| {
                [
                    (format!("exp_avg.{}", m.name), m.exp_avg.shallow_clone()),
                    (format!("exp_avg_sq.{}", m.name), m.exp_avg_sq.shallow_clone()),
                ]
            })
            .collect()
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    /// Under ZeRO-1 they are kept whole until [`AdamW::shard_from_main`].
    pub fn load_state(&mut self, mut saved: HashMap<String, Tensor>, step: i64) -> Result<()> {
        if let Some(shard) = &mut self.shard {
            shard.keep_loaded(saved)?;
            self.step = step;
            return Ok(());
        }
        for m in &mut self.state {
            for (prefix, slot) in [("exp_avg", &mut m.exp_avg), ("exp_avg_sq", &mut m.exp_avg_sq)] {
                let key = format!("{prefix}.{}", m.name);
                let t = saved.remove(&key).ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                anyhow::ensure!(t.size() == slot.size(), "optimizer state {key} has shape {:?}, expected {:?}", t.size(), slot.size());
                *slot = t.to_device(slot.device()).to_kind(Kind::Float);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Elements per slice when summing squares in f64: bounds the temporary
/// f64 copy of a large gradient (an 8B model's embedding) to 128 MiB.
const NORM_CHUNK: i64 = 1 << 24;

/// The L2 norm of `g`, its squares summed in f64: an f32 sum over millions of
/// elements (the stacked modulation heads' gradient) drifts by ~1e-4 relative,
/// which moves the clipping threshold.
pub fn l2_norm_f64(g: &Tensor) -> f64 {
    l2_norm_f64_in_chunks(g, NORM_CHUNK)
}

fn l2_norm_f64_in_chunks(g: &Tensor, chunk: i64) -> f64 {
    let flat = g.reshape([-1]);
    let n = flat.size()[0];
    let mut sum_sq = 0.0;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        sum_sq += flat.narrow(0, start, len).to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]);
        start += len;
    }
    sum_sq.sqrt()
}

/// Scales gradients so that their global L2 norm is at most `max_norm` (0 = no
/// clipping); returns the norm before clipping, as `torch.nn.utils.clip_grad_norm_`
/// computes it but accumulated in f64.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
    let total = grads.iter().map(|g| l2_norm_f64(g).powi(2)).sum::<f64>().sqrt();
    if let Some(coef) = clip_coef(total, max_norm) {
        for g in &grads {
            let _ = g.shallow_clone().g_mul_scalar_(coef);
        }
    }
    total
}

/// The factor that brings a gradient of norm `total` down to `max_norm` (0 =
/// no clipping), as `clip_grad_norm_` computes it; `None` when no scaling is due.
fn clip_coef(total: f64, max_norm: f64) -> Option<f64> {
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    (max_norm > 0.0 && coef < 1.0).then_some(coef)
}

/// One AdamW step's constants: the same arithmetic for a whole tensor and a
/// ZeRO-1 shard, so both paths update each element identically.
pub struct Update {
    lr: f64,
    b1: f64,
    b2: f64,
    bc1: f64,
    bc2_sqrt: f64,
    eps: f64,
    weight_decay: f64,
}

impl Update {
    /// The constants of optimizer step `step` (1-based) at learning rate `lr`.
    fn new((b1, b2): (f64, f64), eps: f64, weight_decay: f64, step: i64, lr: f64) -> Self {
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2_sqrt = (1.0 - b2.powi(step as i32)).sqrt();
        Self { lr, b1, b2, bc1, bc2_sqrt, eps, weight_decay }
    }

    /// Updates `p` (f32) and its moments in place from the f32 gradient `grad`.
    pub fn apply(&self, p: &mut Tensor, grad: &Tensor, exp_avg: &mut Tensor, exp_avg_sq: &mut Tensor, decay: bool) {
        if decay && self.weight_decay != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - self.lr * self.weight_decay);
        }
        let _ = exp_avg.lerp_(grad, 1.0 - self.b1);
        let _ = exp_avg_sq.g_mul_scalar_(self.b2);
        let _ = exp_avg_sq.addcmul_(&(grad * (1.0 - self.b2)), grad);
        let denom = exp_avg_sq.sqrt() / self.bc2_sqrt + self.eps;
        let _ = p.addcdiv_(&(&*exp_avg * (-self.lr / self.bc1)), &denom);
    }
}

/// The learning-rate schedule: warmup (of [`WarmupType`]) to `lr`, then linear
/// decay to `final_lr` at `total` steps.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Steps the schedule spans.
    pub total: u64,
    /// Warmup steps.
    pub warmup: u64,
    /// The warmup's shape.
    pub warmup_type: WarmupType,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end (and, for `log`, at the start).
    pub final_lr: f64,
}

impl Schedule {
    /// The schedule `[train]` describes over `total` steps.
    pub fn new(t: &TrainConfig, total: u64) -> Self {
        Self { total, warmup: t.warmup_steps, warmup_type: t.warmup_type, lr: t.lr, final_lr: t.final_lr }
    }

    /// Learning rate at optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        match self.warmup_type {
            WarmupType::Linear => self.linear_at(step),
            WarmupType::Log => self.deepspeed_log_at(step),
        }
    }

    /// transformers' linear schedule (warmup from 0), ending at `final_lr` instead of 0.
    fn linear_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * step as f64 / self.warmup.max(1) as f64;
        }
        let remaining = self.total.saturating_sub(step) as f64 / self.total.saturating_sub(self.warmup).max(1) as f64;
        self.final_lr + (self.lr - self.final_lr) * remaining.clamp(0.0, 1.0)
    }

    /// DeepSpeed 0.16's `WarmupDecayLR(warmup_type="log")` with `warmup_min_lr =
    /// final_lr`, `warmup_max_lr = lr`. The engine sets the LR at construction
    /// (index -1: the min LR) and steps the scheduler after each optimizer step,
    /// so step `s` runs at scheduler index `k = s - 1`: steps 0 and 1 both at
    /// `final_lr`. DeepSpeed raises a warmup below 2 steps to 2.
    fn deepspeed_log_at(&self, step: u64) -> f64 {
        let Some(k) = step.checked_sub(1) else {
            return self.final_lr;
        };
        let warmup = self.warmup.max(2);
        let gamma = if k < warmup {
            ((k + 1) as f64).ln() / (warmup as f64).ln()
        } else {
            (self.total as f64 - k as f64).max(0.0) / (self.total as f64 - warmup as f64).max(1.0)
        };
        self.final_lr + (self.lr - self.final_lr) * gamma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(warmup_type: WarmupType) -> Schedule {
        Schedule { total: 30, warmup: 5, warmup_type, lr: 1e-3, final_lr: 1e-5 }
    }

    /// Every step of a 30-step schedule with warmup 5, written out from
    /// DeepSpeed's `_get_gamma` (log) and transformers' linear schedule.
    #[test]
    fn every_step_of_both_warmup_types() {
        let (peak, fin): (f64, f64) = (1e-3, 1e-5);
        let log = schedule(WarmupType::Log);
        let lin = schedule(WarmupType::Linear);
        for s in 0..30u64 {
            let want_log = match s {
                0 | 1 => fin,
                _ if s - 1 < 5 => fin + (peak - fin) * (s as f64).ln() / 5f64.ln(),
                _ => fin + (peak - fin) * (30.0 - (s - 1) as f64) / 25.0,
            };
            let want_lin = if s < 5 { peak * s as f64 / 5.0 } else { fin + (peak - fin) * (30 - s) as f64 / 25.0 };
            assert!((log.at(s) - want_log).abs() <= 1e-15, "log step {s}: {} vs {want_log}", log.at(s));
            assert!((lin.at(s) - want_lin).abs() <= 1e-15, "linear step {s}: {} vs {want_lin}", lin.at(s));
        }
        // Spot values a reader can check by hand.
        assert_eq!(log.at(1), fin);
        assert!((log.at(5) - (fin + (peak - fin) * 5f64.ln() / 5f64.ln())).abs() < 1e-18);
        assert!((log.at(6) - peak).abs() < 1e-15, "index 5 is the first decay step, gamma (30-5)/25 = 1");
        assert_eq!(lin.at(0), 0.0);
    }

    #[test]
    fn log_warmup_below_two_steps_is_two_as_in_deepspeed() {
        let s = Schedule { total: 10, warmup: 0, warmup_type: WarmupType::Log, lr: 1.0, final_lr: 0.0 };
        assert_eq!([s.at(0), s.at(1), s.at(2), s.at(3)], [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(s.at(9), 2.0 / 8.0);
    }

    /// The norm against a float64 reference summed in Rust, on a tensor the
    /// shape of the small model's stacked modulation-head gradient with values
    /// spread over six orders of magnitude.
    #[test]
    fn gradient_norm_matches_a_float64_reference() {
        let n = 4 * 1536 * 256;
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let x = ((i as u64).wrapping_mul(2654435761) % 1_000_003) as f32 / 1_000_003.0;
                (x - 0.5) * 10f32.powi((i % 7) as i32 - 4)
            })
            .collect();
        let reference = values.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
        let g = Tensor::from_slice(&values).reshape([4, 1536, 256]);
        let got = l2_norm_f64(&g);
        assert!(((got - reference) / reference).abs() < 1e-9, "{got} vs {reference}");
        let chunked = l2_norm_f64_in_chunks(&g, 100_003);
        assert!(((chunked - reference) / reference).abs() < 1e-9, "in chunks: {chunked} vs {reference}");
        // Summed across several tensors as the clip does.
        let parts = [g.narrow(0, 0, 1), g.narrow(0, 1, 3)];
        let combined = parts.iter().map(|p| l2_norm_f64(p).powi(2)).sum::<f64>().sqrt();
        assert!(((combined - reference) / reference).abs() < 1e-9);
    }
}
