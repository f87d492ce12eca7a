//! Metric statistics: the unbiased pass@k estimator, standard errors and
//! seeded bootstrap confidence intervals over items.

use serde::Serialize;
use crate::rng::SplitMix64;

/// Unbiased pass@k for one problem with `n` samples of which `c` are correct: `1 - C(n-c, k) / C(n, k)`.
///
/// Computed as `1 - prod_{i=n-c+1..=n} (1 - k/i)` (Chen et al., 2021), which never forms the
/// binomials that overflow for large `n`. Needs `k <= n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(k >= 1 && k <= n && c <= n, "pass@{k} with n = {n}, c = {c}");
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// The pass@k to report for `n` samples per problem: k in {1, 5, 10} with k <= n.
pub fn ks_for(n: usize) -> Vec<usize> {
    [1, 5, 10].into_iter().filter(|&k| k <= n).collect()
}

/// Resamples of the bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// Seed of the bootstrap, fixed so that a report is reproducible (small enough for JSON readers' doubles).
pub const BOOTSTRAP_SEED: u64 = 0x5eed;

/// A metric over items: its mean, the standard error of the mean and a bootstrap 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Mean of the per-item scores.
    pub value: f64,
    /// Number of items.
    pub n: usize,
    /// Standard error of the mean (sample standard deviation / sqrt(n)); 0 for one item.
    pub stderr: f64,
    /// Percentile bootstrap 95% confidence interval of the mean, [low, high].
    pub ci95: [f64; 2],
}

/// Mean, standard error and bootstrap interval of per-item `scores` (at least one).
pub fn summarize(scores: &[f64]) -> Summary {
    let n = scores.len();
    assert!(n > 0, "no scores to summarise");
    let value = mean(scores);
    let stderr = if n > 1 {
        let var = scores.iter().map(|s| (s - value).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    } else {
        0.0
    };
    Summary { value, n, stderr, ci95: bootstrap_ci(scores, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED) }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Percentile 95% interval of the mean over `resamples` resamples of the items with replacement.
pub fn bootstrap_ci(scores: &[f64], resamples: usize, seed: u64) -> [f64; 2] {
    let mut rng = SplitMix64::new(seed);
    let n = scores.len();
    // `range` (modulo), not `below` (multiply-shift): the intervals in existing reports stay reproducible.
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| scores[rng.range(0, n as u64 - 1) as usize]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64).floor() as usize).min(resamples - 1)];
    [at(0.025), at(0.975)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `1 - C(n-c, k) / C(n, k)` from exact binomials, for small n.
    fn by_binomials(n: u64, c: u64, k: u64) -> f64 {
        let binom = |n: u64, k: u64| -> f64 {
            if k > n {
                0.0
            } else {
                (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
            }
        };
        1.0 - binom(n - c, k) / binom(n, k)
    }

    #[test]
    fn pass_at_k_matches_hand_computed_values() {
        // n = 10, c = 1: pass@1 = 0.1, pass@5 = 1 - C(9,5)/C(10,5) = 1 - 126/252 = 0.5, pass@10 = 1.
        assert!((pass_at_k(10, 1, 1) - 0.1).abs() < 1e-12);
        assert!((pass_at_k(10, 1, 5) - 0.5).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 1, 10), 1.0);
        // n = 10, c = 3, k = 5: 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12.
        assert!((pass_at_k(10, 3, 5) - 11.0 / 12.0).abs() < 1e-12);
        // n = 5, c = 2, k = 2: 1 - C(3,2)/C(5,2) = 1 - 3/10.
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 0, 5), 0.0);
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        for n in 1..=20u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let (a, b) = (pass_at_k(n as usize, c as usize, k as usize), by_binomials(n, c, k));
                    assert!((a - b).abs() < 1e-9, "n={n} c={c} k={k}: {a} vs {b}");
                }
            }
        }
        // Large n stays finite where the binomials would overflow f64.
        let p = pass_at_k(2000, 7, 10);
        assert!(p.is_finite() && p > 0.0 && p < 1.0);
        assert_eq!(ks_for(10), [1, 5, 10]);
        assert_eq!(ks_for(7), [1, 5]);
        assert_eq!(ks_for(1), [1]);
    }

    #[test]
    fn summary_of_known_scores() {
        let s = summarize(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(s.value, 0.5);
        // Sample sd = sqrt(1/3), over sqrt(4).
        assert!((s.stderr - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert!(s.ci95[0] <= 0.5 && s.ci95[1] >= 0.5 && s.ci95[0] >= 0.0 && s.ci95[1] <= 1.0);
        assert_eq!(summarize(&[1.0; 7]).ci95, [1.0, 1.0]);
        assert_eq!(summarize(&[0.3]).stderr, 0.0);
        // Fixed seed: the same interval every time.
        let xs: Vec<f64> = (0..50).map(|i| (i % 3) as f64 / 2.0).collect();
        assert_eq!(summarize(&xs).ci95, summarize(&xs).ci95);
    }
}
