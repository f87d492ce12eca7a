//! Algorithm 1: per token, the main path once with its KV cache, then an ODE
//! over the diffusion stream alone, then one last evaluation at t = 1.

use anyhow::Result;
use tch::{Kind, Tensor};

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::{Conditioning, L2dDecoder};
pub use crate::config::X1Estimate;
use crate::config::{L2dConfig, X1Schedule};
use crate::model::{repeat_batch, KvCache, Llama, Step};
use crate::sampling::generate::NextTokenLogits;
use crate::sampling::logits::draw;
use crate::sampling::noise::{RowNoise, Stream};
use crate::sampling::ode::{self, OdeOptions, Solver};

/// Settings of the L2D sampler.
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Solver, grid and tolerances.
    pub ode: OdeOptions,
    /// Sample or average.
    pub x1_estimate: X1Estimate,
    /// Base temperature of `x1_hat`.
    pub x1_temperature: f64,
    /// Time dependence of that temperature.
    pub x1_schedule: X1Schedule,
    /// Class to guide towards, with the guidance weight `w`.
    pub guidance: Option<(i64, f64)>,
}

impl SamplerOptions {
    /// The sampling part of a checked `[l2d]` config section.
    pub fn from_config(c: &L2dConfig) -> Self {
        Self {
            ode: OdeOptions { solver: c.solver, steps: c.steps, atol: c.atol, rtol: c.rtol, max_evals: 10_000 },
            x1_estimate: c.x1_estimate,
            x1_temperature: c.x1_temperature,
            x1_schedule: c.x1_schedule,
            guidance: c.guidance_class.map(|class| (class, c.guidance_weight)),
        }
    }

    /// `tau(t)`.
    fn temperature(&self, t: f64) -> f64 {
        match self.x1_schedule {
            X1Schedule::Constant => self.x1_temperature,
            X1Schedule::Polynomial { power, end } if t < end => self.x1_temperature * (1.0 - t / end).powf(power),
            X1Schedule::Polynomial { .. } => 0.0,
        }
    }

    /// The reference reads the temperature half a step ahead for midpoint and a
    /// full step ahead for Euler.
    fn temperature_offset(&self) -> f64 {
        let h = 1.0 / (self.ode.steps as f64 - 1.0);
        match self.ode.solver {
            Solver::Midpoint => h / 2.0,
            Solver::Euler => h,
            _ => 0.0,
        }
    }
}

/// The guidance labels of an evaluation's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Labels {
    /// Every row the same label (`None` = no label): one conditioning, broadcast over the batch.
    All(Option<i64>),
    /// Classifier-free guidance in one batch: the first `rows` rows `class`,
    /// the next `rows` no label.
    Guided { class: i64, rows: i64 },
}

/// Conditionings by (time bits, labels).
type ConditioningCache = HashMap<(u64, Labels), Rc<Conditioning>>;

/// Most conditionings kept: a fixed grid needs 2S of them; adaptive solvers
/// visit new times at every step, so the cache is cleared when full.
const COND_CACHE: usize = 256;

/// The next-token logits of an L2D model, for [`crate::sampling::generate()`].
pub struct L2dHead<'d> {
    /// The path laid out for decoding.
    decoder: &'d L2dDecoder,
    opts: SamplerOptions,
    evals: usize,
    tokens: usize,
    /// Modulations and gate per (time, label): they depend on nothing else, and
    /// every token integrates over the same times.
    conditionings: RefCell<ConditioningCache>,
}

impl<'d> L2dHead<'d> {
    /// Prepares sampling from `decoder` (cheap: what every sampler reads is in the decoder).
    pub fn new(decoder: &'d L2dDecoder, opts: SamplerOptions) -> Self {
        Self { decoder, opts, evals: 0, tokens: 0, conditionings: RefCell::new(HashMap::new()) }
    }

    /// The conditioning at time `t` for `labels`, computed once.
    fn conditioning(&self, t: f64, labels: Labels, device: tch::Device) -> Result<Rc<Conditioning>> {
        let key = (t.to_bits(), labels);
        if let Some(c) = self.conditionings.borrow().get(&key) {
            return Ok(Rc::clone(c));
        }
        let (tt, lt) = match labels {
            Labels::All(label) => {
                (Tensor::full([1, 1], t, (Kind::Float, device)), label.map(|c| Tensor::full([1, 1], c, (Kind::Int64, device))))
            }
            Labels::Guided { class, rows } => {
                let lt = Tensor::cat(&[Tensor::full([rows, 1], class, (Kind::Int64, device)), Tensor::full([rows, 1], -1, (Kind::Int64, device))], 0);
                (Tensor::full([2 * rows, 1], t, (Kind::Float, device)), Some(lt))
            }
        };
        let cond = Rc::new(self.decoder.condition(&tt, lt.as_ref())?);
        let mut cache = self.conditionings.borrow_mut();
        if cache.len() >= COND_CACHE {
            cache.clear();
        }
        cache.insert(key, Rc::clone(&cond));
        Ok(cond)
    }

    /// `x1_hat` `[B, D]` (f64) from logits `[B, V]` at temperature `tau`, a
    /// sample drawing from `noise` at the token's `eval`-th velocity evaluation
    /// (logits of a guided batch hold the rows twice: conditional, then unconditional).
    fn x1_hat(&self, logits: &Tensor, tau: f64, noise: &RowNoise, eval: usize) -> Tensor {
        if tau <= 0.0 {
            return self.decoder.rep_vocab().index_select(0, &logits.argmax(-1, false));
        }
        let probs = (logits.to_kind(Kind::Float) / tau).softmax(-1, Kind::Float);
        match self.opts.x1_estimate {
            X1Estimate::Sample => {
                let u = |unconditional| noise.uniforms(Stream::X1 { eval, unconditional }, probs.device());
                let u = if logits.size()[0] == noise.rows() as i64 { u(false) } else { Tensor::cat(&[u(false), u(true)], 0) };
                let (y, total) = draw(&probs, &u);
                // NaN logits give a NaN total, and 0·NaN = NaN: carried into x1_hat,
                // the solver's finiteness check reports them without a sync here.
                self.decoder.rep_vocab().index_select(0, &y) + total * 0.0
            }
            X1Estimate::Average => probs.to_kind(Kind::Double).matmul(self.decoder.rep_vocab()),
        }
    }
}

/// One evaluation of the diffusion path for the newest token of each row.
struct Eval<'s> {
    model: &'s Llama,
    hidden: &'s Tensor,
    step: &'s Step,
    cache: &'s KvCache,
}

impl Eval<'_> {
    /// Logits `[B, V]` at state `x` `[B, D]` and time `t` for the rows' `labels`.
    fn logits(&self, head: &L2dHead<'_>, x: &Tensor, t: f64, labels: Labels) -> Result<Tensor> {
        let cond = head.conditioning(t, labels, x.device())?;
        let x = x.to_kind(Kind::Float).unsqueeze(1);
        let logits = head.decoder.logits_conditioned(self.model, self.hidden, &x, &cond, self.step, self.cache);
        Ok(logits.squeeze_dim(1))
    }
}

impl NextTokenLogits for L2dHead<'_> {
    fn logits(&mut self, model: &Llama, hidden: &Tensor, cache: &KvCache, step: &Step, noise: &RowNoise) -> Result<Tensor> {
        let step = step.last();
        let eval = Eval { model, hidden, step: &step, cache };
        let b = hidden.size()[0];
        // Guidance evaluates the conditional and unconditional rows as one batch
        // of 2B: every weight matrix is read once per step instead of twice.
        let doubled = match self.opts.guidance {
            Some((class, w)) if w != 1.0 => Some((class, w, repeat_batch(hidden, 2), step.repeat_rows(2), cache.repeat_rows(2))),
            _ => None,
        };
        let guided = doubled.as_ref().map(|(class, w, hidden, step, cache)| (*class, *w, Eval { model, hidden, step, cache }));
        // Drawn on the CPU, so that a seed gives the same noise on every device.
        let x0 = noise.normals(Stream::X0, self.decoder.shape().flow_dim as usize, hidden.device()) * self.decoder.sigma();
        let offset = self.opts.temperature_offset();
        let mut calls = 0usize;
        // Velocity evaluations so far in this token: which x1 draw each one makes.
        let mut evals = 0usize;
        let (x1, _) = {
            let this = &*self;
            let mut velocity = |t: f64, x: &Tensor| -> Result<Tensor> {
                if t >= 1.0 {
                    return Ok(x.zeros_like());
                }
                let tau = this.opts.temperature(t + offset);
                let index = evals;
                evals += 1;
                let rows_velocity = |eval: &Eval, x: &Tensor, labels: Labels| -> Result<Tensor> {
                    let logits = eval.logits(this, x, t, labels)?;
                    Ok((this.x1_hat(&logits, tau, noise, index) - x) / (1.0 - t))
                };
                match &guided {
                    Some((class, w, eval2)) => {
                        calls += 2;
                        let v = rows_velocity(eval2, &repeat_batch(x, 2), Labels::Guided { class: *class, rows: b })?;
                        Ok(v.narrow(0, 0, b) * *w + v.narrow(0, b, b) * (1.0 - *w))
                    }
                    None => {
                        calls += 1;
                        rows_velocity(&eval, x, Labels::All(this.opts.guidance.map(|(c, _)| c)))
                    }
                }
            };
            ode::integrate(&self.opts.ode, &x0, &mut velocity).map_err(|e| match self.opts.ode.solver.is_adaptive() {
                // v = (x1_hat - x)/(1 - t) grows without bound near t = 1, and a sampled x1_hat jumps.
                true => anyhow::anyhow!(
                    "{e}: the adaptive solver cannot meet l2d.atol/l2d.rtol on this velocity; loosen them, \
                     or use l2d.x1_estimate = \"average\" (smooth in x)"
                ),
                false => e,
            })?
        };
        let label = self.opts.guidance.map(|(c, _)| c);
        let logits = eval.logits(self, &x1, 1.0, Labels::All(label))?;
        self.evals += calls + 1;
        self.tokens += 1;
        Ok(logits)
    }

    fn evals_per_token(&self) -> f64 {
        if self.tokens == 0 { 0.0 } else { self.evals as f64 / self.tokens as f64 }
    }
}
