//! ODE integrators for the L2D sampler: `dx/dt = v(x, t)` from `t = 0` to `t = 1`.
//!
//! The reference calls `torchdiffeq.odeint(func, x0, linspace(0, 1, S), method, atol, rtol)`
//! and keeps the last state; these solvers reproduce torchdiffeq's stepping, step-size
//! control and evaluation counts (stage times checked against torchdiffeq 0.2.5). Two deliberate
//! differences in the adaptive solvers: the last step is clamped onto `t = 1` instead of
//! stepping past it and interpolating back, and stages at the end of a step see `t1` itself
//! rather than torchdiffeq's `nextafter(t1, -inf)`, which for a step ending exactly on 1 would
//! put the L2D field `(x1_hat - x) / (1 - t)` one ulp before its singularity.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};


pub use crate::config::Solver;

impl Solver {
    /// Whether the solver picks its own steps (and so honours `atol`, `rtol`, `max_evals`).
    pub fn is_adaptive(&self) -> bool {
        self.tableau().is_some()
    }

    fn tableau(&self) -> Option<&'static Tableau> {
        match self {
            Solver::Euler | Solver::Midpoint | Solver::Rk4 => None,
            Solver::Bosh3 => Some(&BOGACKI_SHAMPINE),
            Solver::Dopri5 => Some(&DORMAND_PRINCE_SHAMPINE),
            Solver::AdaptiveHeun => Some(&ADAPTIVE_HEUN),
        }
    }
}

/// Settings of one integration from `t = 0` to `t = 1`.
#[derive(Debug, Clone)]
pub struct OdeOptions {
    /// The integrator.
    pub solver: Solver,
    /// Grid points `S` of `linspace(0, 1, S)` ("discretisation levels"); fixed-grid solvers take `S - 1` steps.
    pub steps: usize,
    /// Absolute tolerance of adaptive solvers.
    pub atol: f64,
    /// Relative tolerance of adaptive solvers.
    pub rtol: f64,
    /// Most evaluations an adaptive solver may spend before giving up.
    pub max_evals: usize,
}

impl Default for OdeOptions {
    /// The paper's setting: midpoint with `S = 8` (14 evaluations), `atol = rtol = 1e-5`.
    fn default() -> Self {
        OdeOptions { solver: Solver::Midpoint, steps: 8, atol: 1e-5, rtol: 1e-5, max_evals: 1000 }
    }
}

/// Integrates `dx/dt = f(t, x)` from `t = 0` to `t = 1`; returns the final state and the number of calls of `f`.
pub fn integrate(
    opts: &OdeOptions,
    x0: &Tensor,
    f: &mut dyn FnMut(f64, &Tensor) -> Result<Tensor>,
) -> Result<(Tensor, usize)> {
    debug_assert!(opts.steps >= 2, "config::check requires l2d.steps >= 2");
    let mut field = Field { f, evals: 0 };
    let x1 = match opts.solver.tableau() {
        None => integrate_fixed(opts, x0, &mut field)?,
        Some(tableau) => Adaptive { opts, tableau, field: &mut field }.integrate(x0)?,
    };
    Ok((x1, field.evals))
}

/// The velocity field, counting its calls.
struct Field<'a> {
    f: &'a mut dyn FnMut(f64, &Tensor) -> Result<Tensor>,
    evals: usize,
}

impl Field<'_> {
    fn eval(&mut self, t: f64, x: &Tensor) -> Result<Tensor> {
        self.evals += 1;
        let v = (self.f)(t, x)?;
        // A broadcastable but wrong shape would silently change the state's shape.
        if v.size() != x.size() {
            bail!("ODE velocity at t = {t} has shape {:?}, the state has {:?}", v.size(), x.size());
        }
        Ok(v)
    }
}

/// `dt * sum_j c_j k_j` over the terms with a non-zero coefficient; `None` if there are none.
fn weighted_sum<'t>(terms: impl IntoIterator<Item = (&'t Tensor, f64)>, dt: f64) -> Option<Tensor> {
    terms.into_iter().filter(|&(_, c)| c != 0.0).map(|(k, c)| k * (c * dt)).reduce(|mut acc, term| {
        // `acc` is a fresh product, so accumulating in place saves one allocation per term.
        acc += term;
        acc
    })
}

/// `base + dt * sum_j c_j k_j`.
fn combine<'t>(base: &Tensor, terms: impl IntoIterator<Item = (&'t Tensor, f64)>, dt: f64) -> Tensor {
    match weighted_sum(terms, dt) {
        Some(sum) => base + sum,
        None => base.shallow_clone(),
    }
}

fn non_finite(solver: Solver, t: f64) -> anyhow::Error {
    anyhow::anyhow!("ODE state became NaN/Inf at t = {t} ({solver})")
}

/// One step of a fixed-grid solver from `t0` to `t1`.
type FixedStep = fn(&mut Field, f64, f64, &Tensor) -> Result<Tensor>;

/// Fixed grid `linspace(0, 1, S)`: no host sync until the final finiteness check.
fn integrate_fixed(opts: &OdeOptions, x0: &Tensor, field: &mut Field) -> Result<Tensor> {
    let step: FixedStep = match opts.solver {
        Solver::Euler => euler_step,
        Solver::Midpoint => midpoint_step,
        Solver::Rk4 => rk4_step,
        adaptive => bail!("{adaptive} is not a fixed-grid solver"),
    };
    let n = (opts.steps - 1) as f64;
    let mut x = x0.shallow_clone();
    for i in 0..opts.steps - 1 {
        x = step(field, i as f64 / n, (i + 1) as f64 / n, &x)?;
    }
    if !all_finite(&x) {
        // Checking every step would cost a host sync per step; only the end is known to be bad.
        bail!("ODE state became NaN/Inf at t = 1 or earlier ({}; fixed grids check only the final state)", opts.solver);
    }
    Ok(x)
}

fn all_finite(x: &Tensor) -> bool {
    x.isfinite().all().int64_value(&[]) != 0
}

fn euler_step(field: &mut Field, t0: f64, t1: f64, x: &Tensor) -> Result<Tensor> {
    let h = t1 - t0;
    Ok(x + field.eval(t0, x)? * h)
}

fn midpoint_step(field: &mut Field, t0: f64, t1: f64, x: &Tensor) -> Result<Tensor> {
    let h = t1 - t0;
    let x_mid = x + field.eval(t0, x)? * (h / 2.0);
    Ok(x + field.eval(t0 + h / 2.0, &x_mid)? * h)
}

/// torchdiffeq's `rk4_alt_step_func` (3/8 rule); its last stage is evaluated at exactly `t1`.
fn rk4_step(field: &mut Field, t0: f64, t1: f64, x: &Tensor) -> Result<Tensor> {
    let h = t1 - t0;
    let k1 = field.eval(t0, x)?;
    let k2 = field.eval(t0 + h / 3.0, &combine(x, [(&k1, 1.0 / 3.0)], h))?;
    let k3 = field.eval(t0 + 2.0 * h / 3.0, &combine(x, [(&k1, -1.0 / 3.0), (&k2, 1.0)], h))?;
    let k4 = field.eval(t1, &combine(x, [(&k1, 1.0), (&k2, -1.0), (&k3, 1.0)], h))?;
    Ok(combine(x, [(&k1, 0.125), (&k2, 0.375), (&k3, 0.375), (&k4, 0.125)], h))
}

/// An embedded Runge-Kutta pair in torchdiffeq's `_ButcherTableau` layout.
struct Tableau {
    /// Stage times as fractions of the step (the first stage, at 0, is implicit).
    alpha: &'static [f64],
    /// Row `i` gives stage `i + 1`'s state from the derivatives `k[0..=i]`.
    beta: &'static [&'static [f64]],
    /// Weights of the propagated solution.
    c_sol: &'static [f64],
    /// Weights of the error estimate (solution minus embedded solution).
    c_error: &'static [f64],
    /// The higher order of the pair; torchdiffeq's step control uses `1 / order` as exponent.
    order: u32,
}

impl Tableau {
    /// Whether the solution is the last stage's input, as torchdiffeq checks, saving one combination.
    fn solution_is_last_stage(&self) -> bool {
        let (last, rest) = self.c_sol.split_last().expect("non-empty tableau");
        *last == 0.0 && self.beta.last().is_some_and(|row| *row == rest)
    }
}

/// torchdiffeq's `_DORMAND_PRINCE_SHAMPINE_TABLEAU`.
static DORMAND_PRINCE_SHAMPINE: Tableau = Tableau {
    alpha: &[1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
    beta: &[
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
        &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
        &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
    ],
    c_sol: &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0, 0.0],
    c_error: &[
        35.0 / 384.0 - 1951.0 / 21600.0,
        0.0,
        500.0 / 1113.0 - 22642.0 / 50085.0,
        125.0 / 192.0 - 451.0 / 720.0,
        -2187.0 / 6784.0 - -12231.0 / 42400.0,
        11.0 / 84.0 - 649.0 / 6300.0,
        -1.0 / 60.0,
    ],
    order: 5,
};

/// torchdiffeq's `_BOGACKI_SHAMPINE_TABLEAU`.
static BOGACKI_SHAMPINE: Tableau = Tableau {
    alpha: &[1.0 / 2.0, 3.0 / 4.0, 1.0],
    beta: &[&[1.0 / 2.0], &[0.0, 3.0 / 4.0], &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0]],
    c_sol: &[2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0, 0.0],
    c_error: &[2.0 / 9.0 - 7.0 / 24.0, 1.0 / 3.0 - 1.0 / 4.0, 4.0 / 9.0 - 1.0 / 3.0, -1.0 / 8.0],
    order: 3,
};

/// torchdiffeq's `_ADAPTIVE_HEUN_TABLEAU`.
static ADAPTIVE_HEUN: Tableau =
    Tableau { alpha: &[1.0], beta: &[&[1.0]], c_sol: &[0.5, 0.5], c_error: &[0.5, -0.5], order: 2 };

/// torchdiffeq's step-control constants (`RKAdaptiveStepsizeODESolver` defaults).
const SAFETY: f64 = 0.9;
const IFACTOR: f64 = 10.0;
const DFACTOR: f64 = 0.2;

/// One accepted-or-not embedded RK step.
struct Trial {
    x1: Tensor,
    f1: Tensor,
    err: Tensor,
}

/// An adaptive integration driven by one tableau.
struct Adaptive<'o, 'f, 'a> {
    opts: &'o OdeOptions,
    tableau: &'static Tableau,
    field: &'f mut Field<'a>,
}

impl Adaptive<'_, '_, '_> {
    fn integrate(&mut self, x0: &Tensor) -> Result<Tensor> {
        let (mut t, mut x) = (0.0, x0.shallow_clone());
        let mut f = self.field.eval(t, &x)?;
        let mut dt = self.initial_step(&x, &f)?;
        while t < 1.0 {
            self.check_budget(t)?;
            // Clamping onto t = 1 replaces torchdiffeq's overshoot-and-interpolate.
            let (h, t1) = if t + dt >= 1.0 { (1.0 - t, 1.0) } else { (dt, t + dt) };
            if t1 <= t {
                bail!("ODE step size underflow at t = {t} ({}, step {dt:e})", self.opts.solver);
            }
            let trial = self.step(t, h, t1, &x, &f)?;
            let ratio = self.error_ratio(&trial, &x, t)?;
            if ratio <= 1.0 {
                (t, x, f) = (t1, trial.x1, trial.f1);
            }
            dt = next_step_size(h, ratio, self.tableau.order);
        }
        Ok(x)
    }

    fn check_budget(&self, t: f64) -> Result<()> {
        let evals = self.field.evals;
        if evals + self.tableau.alpha.len() > self.opts.max_evals {
            bail!(
                "ODE solver {} exceeded max_evals = {}: {evals} evaluations spent, reached t = {t:.6} of 1",
                self.opts.solver,
                self.opts.max_evals
            );
        }
        Ok(())
    }

    /// torchdiffeq's `_runge_kutta_step`; stages with `alpha == 1` use `t1` itself to land exactly on it.
    fn step(&mut self, t0: f64, dt: f64, t1: f64, y0: &Tensor, f0: &Tensor) -> Result<Trial> {
        let tab = self.tableau;
        let mut k = vec![f0.shallow_clone()];
        let mut yi = y0.shallow_clone();
        for (&alpha, &beta) in tab.alpha.iter().zip(tab.beta) {
            let ti = if alpha == 1.0 { t1 } else { t0 + alpha * dt };
            yi = combine(y0, k.iter().zip(beta.iter().copied()), dt);
            k.push(self.field.eval(ti, &yi)?);
        }
        let x1 =
            if tab.solution_is_last_stage() { yi } else { combine(y0, k.iter().zip(tab.c_sol.iter().copied()), dt) };
        let err = weighted_sum(k.iter().zip(tab.c_error.iter().copied()), dt).expect("a non-zero error weight");
        // torchdiffeq carries the last stage's derivative into the next step (FSAL). For adaptive
        // Heun that is f at the Euler predictor, not at x1: kept, since it is what the reference computes.
        let f1 = k.pop().expect("at least one stage");
        Ok(Trial { x1, f1, err })
    }

    /// RMS of `err / (atol + rtol max(|x0|, |x1|))`; the one host sync per step, which also checks finiteness.
    fn error_ratio(&self, trial: &Trial, x0: &Tensor, t: f64) -> Result<f64> {
        let tol = x0.abs().maximum(&trial.x1.abs()) * self.opts.rtol + self.opts.atol;
        let ratio = rms(&(&trial.err / tol));
        let finite = trial.x1.isfinite().all().to_kind(Kind::Double);
        let both = Tensor::stack(&[ratio, finite], 0).to_device(Device::Cpu);
        let (ratio, finite) = (both.double_value(&[0]), both.double_value(&[1]));
        if !ratio.is_finite() || finite == 0.0 {
            return Err(non_finite(self.opts.solver, t));
        }
        Ok(ratio)
    }

    /// torchdiffeq's `_select_initial_step` (Hairer, Norsett & Wanner I, II.4): one extra evaluation.
    fn initial_step(&mut self, x0: &Tensor, f0: &Tensor) -> Result<f64> {
        let (atol, rtol, solver) = (self.opts.atol, self.opts.rtol, self.opts.solver);
        let scale = x0.abs() * rtol + atol;
        let d = Tensor::stack(&[rms(&(x0 / &scale)), rms(&(f0 / &scale))], 0).to_device(Device::Cpu);
        let (d0, d1) = (d.double_value(&[0]), d.double_value(&[1]));
        if !(d0.is_finite() && d1.is_finite()) {
            return Err(non_finite(solver, 0.0));
        }
        let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
        let f1 = self.field.eval(h0, &(x0 + f0 * h0))?;
        let d2 = rms(&((f1 - f0) / &scale)).double_value(&[]) / h0;
        if !d2.is_finite() {
            return Err(non_finite(solver, h0));
        }
        let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
            (h0 * 1e-3).max(1e-6)
        } else {
            (0.01 / d1.max(d2)).powf(1.0 / f64::from(self.tableau.order))
        };
        Ok((100.0 * h0).min(h1))
    }
}

/// Root mean square over all elements, in fp64.
fn rms(x: &Tensor) -> Tensor {
    x.to_kind(Kind::Double).square().mean(Kind::Double).sqrt()
}

/// torchdiffeq's `_optimal_step_size`: never shrink after an accepted step, never grow more than `IFACTOR`.
fn next_step_size(dt: f64, ratio: f64, order: u32) -> f64 {
    if ratio == 0.0 {
        return dt * IFACTOR;
    }
    let dfactor = if ratio < 1.0 { 1.0 } else { DFACTOR };
    let factor = (SAFETY / ratio.powf(1.0 / f64::from(order))).max(dfactor).min(IFACTOR);
    dt * factor
}
