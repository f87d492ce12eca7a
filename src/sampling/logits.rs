//! Turning logits into the next token: greedy, temperature, top-k, top-p.

use tch::{Kind, Tensor};

/// The usual decoding settings; `temperature <= 0` is greedy.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    /// Softmax temperature; `0` picks the argmax.
    pub temperature: f64,
    /// Keep the `k` most likely tokens (`0` = all).
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches `p` (`1` = all).
    pub top_p: f64,
}

impl TokenSampler {
    /// Next token ids `[B]` from logits `[B, V]`; fails on NaN/Inf logits.
    pub fn sample(&self, logits: &Tensor) -> anyhow::Result<Tensor> {
        let logits = logits.to_kind(Kind::Float);
        if self.temperature <= 0.0 {
            return Ok(logits.argmax(-1, false));
        }
        let mut logits = logits / self.temperature;
        if self.top_k > 0 && self.top_k < logits.size()[1] {
            logits = keep_top_k(&logits, self.top_k);
        }
        if self.top_p < 1.0 {
            logits = keep_top_p(&logits, self.top_p);
        }
        let ids = logits
            .softmax(-1, Kind::Float)
            .f_multinomial(1, false)
            .map_err(|_| anyhow::anyhow!("the next-token probabilities contain NaN/Inf"))?;
        Ok(ids.squeeze_dim(-1))
    }
}

fn keep_top_k(logits: &Tensor, k: i64) -> Tensor {
    let (values, _) = logits.topk(k, -1, true, true);
    let threshold = values.narrow(1, k - 1, 1);
    logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY)
}

/// Nucleus filtering with transformers' semantics: drop the tokens whose
/// ascending cumulative probability stays within `1 - p`, keep at least one.
fn keep_top_p(logits: &Tensor, p: f64) -> Tensor {
    let (sorted, order) = logits.sort(-1, false);
    let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
    let remove = cum.le(1.0 - p);
    let v = remove.size()[1];
    let _ = remove.narrow(1, v - 1, 1).fill_(0);
    let remove = remove.scatter(1, &order, &remove);
    logits.masked_fill(&remove, f64::NEG_INFINITY)
}
