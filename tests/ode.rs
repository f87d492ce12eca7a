//! ODE integrators against closed-form solutions, in fp64.

use anyhow::Result;
use tch::{Kind, Tensor};

use l2d::error::exit_code;
use l2d::sampling::ode::{integrate, OdeOptions, Solver};

const FIXED: [Solver; 3] = [Solver::Euler, Solver::Midpoint, Solver::Rk4];
const ADAPTIVE: [Solver; 3] = [Solver::Bosh3, Solver::Dopri5, Solver::AdaptiveHeun];

fn opts(solver: Solver, steps: usize, tol: f64) -> OdeOptions {
    OdeOptions { solver, steps, atol: tol, rtol: tol, max_evals: 1_000_000 }
}

fn state(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).to_kind(Kind::Double)
}

fn values(x: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(x.flatten(0, -1)).unwrap()
}

/// Integrates `f` from `x0` and returns the final state's values and the evaluation count.
fn solve(o: &OdeOptions, x0: &Tensor, mut f: impl FnMut(f64, &Tensor) -> Tensor) -> (Vec<f64>, usize) {
    let (x1, evals) = integrate(o, x0, &mut |t, x| Ok(f(t, x))).unwrap();
    assert_eq!(x1.size(), x0.size());
    assert_eq!(x1.kind(), Kind::Double);
    (values(&x1), evals)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Largest `|got - want| / (atol + rtol |want|)` over the elements.
fn tol_units(got: &[f64], want: &[f64], tol: f64) -> f64 {
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / (tol + tol * w.abs())).fold(0.0, f64::max)
}

fn scaled(x0: &[f64], c: f64) -> Vec<f64> {
    x0.iter().map(|v| v * c).collect()
}

const X0: [f64; 4] = [1.0, -2.0, 0.5, 3.0];

/// dx/dt = -x: x(1) = x0 e^-1.
fn decay(_: f64, x: &Tensor) -> Tensor {
    -x
}

/// dx/dt = -2 t x: x(1) = x0 e^-1 too, but the field depends on t.
fn gaussian(t: f64, x: &Tensor) -> Tensor {
    x * (-2.0 * t)
}

/// x' = -y, y' = x on rows `[x, y]`: a rotation by 1 radian.
fn rotation(_: f64, s: &Tensor) -> Tensor {
    Tensor::cat(&[-s.narrow(1, 1, 1), s.narrow(1, 0, 1)], 1)
}

fn rotated(rows: &[[f64; 2]]) -> Vec<f64> {
    let (sin, cos) = 1f64.sin_cos();
    rows.iter().flat_map(|[x, y]| [x * cos - y * sin, x * sin + y * cos]).collect()
}

const ROWS: [[f64; 2]; 3] = [[1.0, 0.0], [0.3, -2.0], [-1.5, 0.7]];

fn rows_state() -> Tensor {
    state(&ROWS.concat()).view([3, 2])
}

#[test]
fn fixed_solvers_match_exponential_decay() {
    let want = scaled(&X0, (-1f64).exp());
    // Leading error terms at h = 1/100 for |x0| = 3: e^-1 |x0| h/2, h^2/6 and h^4/120 of that scale.
    for (solver, bound) in [(Solver::Euler, 7e-3), (Solver::Midpoint, 3e-5), (Solver::Rk4, 1e-10)] {
        let (got, _) = solve(&opts(solver, 101, 0.0), &state(&X0), decay);
        let err = max_abs_diff(&got, &want);
        assert!(err < bound, "{solver}: error {err:e} >= {bound:e}");
    }
}

#[test]
fn quadrature_closed_forms_for_pure_time_fields() {
    // With x' = g(t), each fixed solver is a quadrature rule with a known sum.
    let n = 7.0;
    let h = 1.0 / n;
    let t2 = |t: f64, x: &Tensor| x.ones_like() * (t * t);
    let t3 = |t: f64, x: &Tensor| x.ones_like() * (t * t * t);
    let x0 = state(&[0.0, 1.0]);
    let run = |solver, f: &dyn Fn(f64, &Tensor) -> Tensor| solve(&opts(solver, 8, 0.0), &x0, f).0;
    // Left Riemann sum of t^2: h^3 sum_{i<n} i^2 = (1 - h)(2 - h)/6.
    let euler = run(Solver::Euler, &t2);
    assert!(max_abs_diff(&euler, &[(1.0 - h) * (2.0 - h) / 6.0, 1.0 + (1.0 - h) * (2.0 - h) / 6.0]) < 1e-14);
    // Midpoint rule of t^2 misses by h^2/12.
    let mid = run(Solver::Midpoint, &t2);
    assert!(max_abs_diff(&mid, &[1.0 / 3.0 - h * h / 12.0, 4.0 / 3.0 - h * h / 12.0]) < 1e-14);
    // The 3/8 rule (Simpson's 3/8 quadrature here) is exact for cubics.
    assert!(max_abs_diff(&run(Solver::Rk4, &t2), &[1.0 / 3.0, 4.0 / 3.0]) < 1e-14);
    assert!(max_abs_diff(&run(Solver::Rk4, &t3), &[0.25, 1.25]) < 1e-14);
}

#[test]
fn rotation_in_the_plane() {
    let want = rotated(&ROWS);
    let (rk4, _) = solve(&opts(Solver::Rk4, 33, 0.0), &rows_state(), rotation);
    assert!(max_abs_diff(&rk4, &want) < 1e-7);
    for solver in ADAPTIVE {
        let (got, _) = solve(&opts(solver, 8, 1e-8), &rows_state(), rotation);
        let units = tol_units(&got, &want, 1e-8);
        assert!(units <= 10.0, "{solver}: {units} tolerance units off");
    }
}

#[test]
fn periodic_coefficient_returns_to_start() {
    // dx/dt = cos(2 pi t) x: x(t) = x0 exp(sin(2 pi t) / (2 pi)), so x(1) = x0.
    let field = |t: f64, x: &Tensor| x * (2.0 * std::f64::consts::PI * t).cos();
    let (rk4, _) = solve(&opts(Solver::Rk4, 65, 0.0), &state(&X0), field);
    assert!(max_abs_diff(&rk4, &X0) < 1e-8);
    for solver in ADAPTIVE {
        for tol in [1e-5, 1e-8] {
            let (got, _) = solve(&opts(solver, 8, tol), &state(&X0), field);
            let units = tol_units(&got, &X0, tol);
            assert!(units <= 10.0, "{solver} at {tol:e}: {units} tolerance units off");
        }
    }
}

/// Least-squares slope of log(error) against log(h) over S - 1 = 8, 16, 32, 64.
fn convergence_order(solver: Solver, field: fn(f64, &Tensor) -> Tensor) -> f64 {
    let want = scaled(&X0, (-1f64).exp());
    let points: Vec<(f64, f64)> = [8usize, 16, 32, 64]
        .iter()
        .map(|&n| {
            let (got, _) = solve(&opts(solver, n + 1, 0.0), &state(&X0), field);
            ((1.0 / n as f64).ln(), max_abs_diff(&got, &want).ln())
        })
        .collect();
    let m = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / m, points.iter().map(|p| p.1).sum::<f64>() / m);
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

#[test]
fn fixed_solvers_converge_at_their_order() {
    for (solver, order) in [(Solver::Euler, 1.0), (Solver::Midpoint, 2.0), (Solver::Rk4, 4.0)] {
        for (name, field) in [("decay", decay as fn(f64, &Tensor) -> Tensor), ("gaussian", gaussian)] {
            let slope = convergence_order(solver, field);
            eprintln!("{solver} on {name}: order {slope:.3}");
            assert!((slope - order).abs() <= 0.3, "{solver} on {name}: slope {slope}, want {order}");
        }
    }
}

#[test]
fn adaptive_solvers_meet_tolerance_and_pay_for_tighter_ones() {
    let want = scaled(&X0, (-1f64).exp());
    for solver in ADAPTIVE {
        for (name, field) in [("decay", decay as fn(f64, &Tensor) -> Tensor), ("gaussian", gaussian)] {
            let mut evals = Vec::new();
            for tol in [1e-5, 1e-8] {
                let (got, n) = solve(&opts(solver, 8, tol), &state(&X0), field);
                let units = tol_units(&got, &want, tol);
                eprintln!("{solver} on {name} at {tol:e}: {n} evaluations, {units:.3} tolerance units off");
                assert!(units <= 10.0, "{solver} on {name} at {tol:e}: {units} tolerance units off");
                evals.push(n);
            }
            assert!(evals[1] > evals[0], "{solver} on {name}: {evals:?}");
        }
    }
}

#[test]
fn fixed_solvers_spend_exact_evaluation_counts() {
    assert_eq!(solve(&opts(Solver::Midpoint, 8, 0.0), &state(&X0), decay).1, 14);
    for steps in [2, 3, 8, 17] {
        assert_eq!(solve(&opts(Solver::Euler, steps, 0.0), &state(&X0), decay).1, steps - 1);
        assert_eq!(solve(&opts(Solver::Midpoint, steps, 0.0), &state(&X0), decay).1, 2 * (steps - 1));
        assert_eq!(solve(&opts(Solver::Rk4, steps, 0.0), &state(&X0), decay).1, 4 * (steps - 1));
    }
}

#[test]
fn adaptive_counts_are_init_plus_whole_steps() {
    // f(0) and the initial-step probe, then 6 / 3 / 1 new evaluations per tried step (FSAL).
    for (solver, per_step) in [(Solver::Dopri5, 6), (Solver::Bosh3, 3), (Solver::AdaptiveHeun, 1)] {
        let mut times = Vec::new();
        let (_, evals) = solve(&opts(solver, 8, 1e-6), &state(&X0), |t, x| {
            times.push(t);
            -x
        });
        assert_eq!(evals, times.len());
        assert!(evals > 2 && (evals - 2) % per_step == 0, "{solver}: {evals}");
        assert_eq!(times[0], 0.0);
        assert_eq!(*times.last().unwrap(), 1.0, "{solver} lands exactly on t = 1");
        assert!(times.iter().all(|&t| (0.0..=1.0).contains(&t)), "{solver} stays inside [0, 1]");
    }
}

#[test]
fn state_of_any_shape() {
    let x0 = Tensor::arange(24, (Kind::Double, tch::Device::Cpu)).view([2, 3, 4]) / 10.0;
    let want = scaled(&values(&x0), (-1f64).exp());
    for (solver, bound) in [(Solver::Midpoint, 1e-3), (Solver::Dopri5, 1e-6)] {
        let (got, _) = solve(&opts(solver, 33, 1e-8), &x0, decay);
        let err = max_abs_diff(&got, &want);
        assert!(err < bound, "{solver}: error {err:e}");
    }
}

/// The L2D field towards `c`: v = (c - x) / (1 - t), 0 at t >= 1.
fn l2d_field(c: &Tensor) -> impl Fn(f64, &Tensor) -> Tensor + '_ {
    move |t, x| if t >= 1.0 { x.zeros_like() } else { (c - x) / (1.0 - t) }
}

#[test]
fn l2d_field_reaches_its_target() {
    let c = state(&[0.25, -1.0, 2.0, 0.0]);
    let (cv, x0) = (values(&c), state(&X0));
    let target = l2d_field(&c);
    // The straight line x0 + t (c - x0) is exact for every stage that sees t < 1.
    for solver in [Solver::Euler, Solver::Midpoint] {
        let (got, _) = solve(&opts(solver, 8, 0.0), &x0, &target);
        assert!(max_abs_diff(&got, &cv) < 1e-14, "{solver}: {got:?}");
    }
    // RK4's last stage sits on t = 1 where v = 0, so the last step falls short by h/8 of c - x0.
    let h = 1.0 / 7.0;
    let (rk4, _) = solve(&opts(Solver::Rk4, 8, 0.0), &x0, &target);
    let short: Vec<f64> = X0.iter().zip(&cv).map(|(a, c)| a + (1.0 - h / 8.0) * (c - a)).collect();
    assert!(max_abs_diff(&rk4, &short) < 1e-14, "rk4: {rk4:?}");
    // An adaptive step landing on t = 1 sees v = 0 in its alpha = 1 stages; what that costs depends
    // on where those stages enter the solution and the error estimate:
    // - bosh3: only the FSAL stage sits at t = 1 and it has no weight in the solution, so c is exact;
    // - adaptive_heun: the deficit dt/2 (c - x0) is exactly the error estimate, so it stays within tolerance;
    // - dopri5: the deficit is 11/84 dt (c - x0) but the estimate only (176/6300 - 1/60) dt (c - x0),
    //   11.6 times smaller, so it ends about 10 tolerance units short.
    for (solver, bound) in [(Solver::Bosh3, 1e-6), (Solver::AdaptiveHeun, 2.0), (Solver::Dopri5, 15.0)] {
        for tol in [1e-5, 1e-8] {
            let (got, evals) = solve(&opts(solver, 8, tol), &x0, &target);
            let units = tol_units(&got, &cv, tol);
            eprintln!("{solver} on the L2D field at {tol:e}: {evals} evaluations, {units:.4} tolerance units off");
            assert!(units <= bound, "{solver} at {tol:e}: {units} tolerance units off");
        }
    }
}

#[test]
fn unknown_solver_is_a_usage_error() {
    // Solvers are a typed choice, checked once where the config is read.
    let err = l2d::config::load(None, &["l2d.solver=rk45".to_string()]).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    let msg = err.to_string();
    assert!(msg.contains("rk45") && msg.contains("dopri5") && msg.contains("adaptive_heun"), "{msg}");
    for &solver in Solver::ALL {
        assert_eq!(solver.name().parse::<Solver>().unwrap(), solver);
        assert_eq!(solver.is_adaptive(), ADAPTIVE.contains(&solver));
    }
    assert!(FIXED.iter().all(|s| !s.is_adaptive()));
}

fn solve_err(o: &OdeOptions, x0: &Tensor, mut f: impl FnMut(f64, &Tensor) -> Tensor) -> anyhow::Error {
    let mut calls = 0;
    let err = integrate(o, x0, &mut |t, x| -> Result<Tensor> {
        calls += 1;
        Ok(f(t, x))
    })
    .unwrap_err();
    assert!(calls <= o.max_evals.max(1000), "{calls} calls");
    err
}

#[test]
fn one_grid_point_is_a_usage_error() {
    // Checked once, where the config is read: no integration ever sees it.
    for solver in [Solver::Midpoint, Solver::Dopri5] {
        let sets = [format!("l2d.solver={solver}"), "l2d.steps=1".to_string()];
        let err = l2d::config::load(None, &sets).unwrap_err();
        assert_eq!(exit_code(&err), 2);
        assert!(err.to_string().contains("steps"), "{err}");
    }
}

#[test]
fn nan_velocity_is_a_runtime_error() {
    let nan_late = |t: f64, x: &Tensor| if t > 0.5 { x.full_like(f64::NAN) } else { -x };
    for &solver in Solver::ALL {
        let err = solve_err(&opts(solver, 8, 1e-5), &state(&X0), nan_late);
        assert_eq!(exit_code(&err), 1, "{solver}: {err}");
        assert!(err.to_string().contains("NaN"), "{solver}: {err}");
    }
    let err = solve_err(&opts(Solver::Dopri5, 8, 1e-5), &state(&X0), |_, x| x.full_like(f64::NAN));
    assert!(err.to_string().contains("NaN"), "{err}");
}

#[test]
fn velocity_errors_propagate() {
    let err =
        integrate(&opts(Solver::Bosh3, 8, 1e-5), &state(&X0), &mut |_, _| anyhow::bail!("model failed")).unwrap_err();
    assert!(err.to_string().contains("model failed"));
}

#[test]
fn blow_up_stops_at_the_evaluation_cap() {
    // x' = x^2 from 2 blows up at t = 0.5.
    for solver in ADAPTIVE {
        let o = OdeOptions { max_evals: 300, ..opts(solver, 8, 1e-5) };
        let err = solve_err(&o, &state(&[2.0]), |_, x| x * x);
        let msg = err.to_string();
        eprintln!("{msg}");
        assert_eq!(exit_code(&err), 1, "{msg}");
        assert!(msg.contains(solver.name()) && msg.contains("evaluations"), "{msg}");
    }
}
