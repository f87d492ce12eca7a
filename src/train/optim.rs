//! AdamW exactly as `torch.optim.AdamW` computes it, with state that can be
//! saved and restored bit for bit.

use anyhow::Result;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Decoupled weight-decay Adam over named parameters.
pub struct AdamW {
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken.
    pub step: i64,
    /// Per parameter: first and second moments, and whether it decays.
    state: Vec<Moments>,
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
        Self { betas, eps, weight_decay, step: 0, state }
    }

    /// One update of every parameter from its `.grad()` at learning rate `lr`.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        for ((_, p), m) in params.iter().zip(&mut self.state) {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let grad = grad.to_kind(Kind::Float);
            let mut p = p.shallow_clone();
            if m.decay && self.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = m.exp_avg.lerp_(&grad, 1.0 - b1);
            let _ = m.exp_avg_sq.g_mul_scalar_(b2);
            let _ = m.exp_avg_sq.addcmul_(&(&grad * (1.0 - b2)), &grad);
            let denom = m.exp_avg_sq.sqrt() / bc2_sqrt + self.eps;
            let _ = p.addcdiv_(&(&m.exp_avg * (-lr / bc1)), &denom);
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
    pub fn load_state(&mut self, mut saved: HashMap<String, Tensor>, step: i64) -> Result<()> {
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

/// Scales gradients so that their global L2 norm is at most `max_norm` (0 = no
/// clipping); returns the norm before clipping, as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    if max_norm > 0.0 {
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(coef);
            }
        }
    }
    total
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from 0, then
/// linear decay to `final_lr` at `total` steps (transformers' linear schedule,
/// ending at `final_lr` instead of 0).
pub fn learning_rate(step: u64, total: u64, warmup: u64, lr: f64, final_lr: f64) -> f64 {
    if step < warmup {
        return lr * step as f64 / warmup.max(1) as f64;
    }
    let remaining = total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64;
    final_lr + (lr - final_lr) * remaining.clamp(0.0, 1.0)
}
