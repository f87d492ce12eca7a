//! The main path's keys and values, kept as a value the caller owns.
//!
//! The diffusion stream reads a layer's keys and values many times per token
//! (once per ODE evaluation), so the cache is passed around explicitly rather
//! than hidden inside the layers.

use tch::{Device, Kind, Tensor};

/// Keys and values of every layer for a batch of sequences.
pub struct KvCache {
    /// Per layer: `[B, kv_heads, capacity, head_dim]` buffers, or `None` until first written.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions filled so far.
    len: i64,
    /// Preallocated positions; `None` grows by concatenation (keeps autograd intact).
    capacity: Option<i64>,
}

impl KvCache {
    /// An empty cache that grows as tokens arrive; used for training, where gradients flow.
    pub fn growing(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0, capacity: None }
    }

    /// An empty cache with room for `capacity` positions; used for decoding.
    pub fn with_capacity(num_layers: usize, capacity: i64) -> Self {
        Self { layers: (0..num_layers).map(|_| None).collect(), len: 0, capacity: Some(capacity) }
    }

    /// Positions filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores the new keys/values `[B, kv_heads, T, head_dim]` of `layer` at
    /// positions `len..len+T` and returns the layer's keys/values up to there.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let start = self.len;
        let slot = &mut self.layers[layer];
        match (self.capacity, slot.as_mut()) {
            (Some(cap), None) => {
                let mut shape = k.size();
                shape[2] = cap;
                let kb = Tensor::zeros(&shape, (k.kind(), k.device()));
                let vb = Tensor::zeros(&shape, (v.kind(), v.device()));
                *slot = Some((kb, vb));
            }
            (None, None) => {
                *slot = Some((k.shallow_clone(), v.shallow_clone()));
                return (k.shallow_clone(), v.shallow_clone());
            }
            _ => {}
        }
        let (kb, vb) = slot.as_mut().expect("initialised above");
        if self.capacity.is_some() {
            kb.narrow(2, start, t).copy_(k);
            vb.narrow(2, start, t).copy_(v);
            (kb.narrow(2, 0, start + t), vb.narrow(2, 0, start + t))
        } else {
            *kb = Tensor::cat(&[&*kb, k], 2);
            *vb = Tensor::cat(&[&*vb, v], 2);
            (kb.shallow_clone(), vb.shallow_clone())
        }
    }

    /// Keys and values of `layer` for all filled positions.
    pub fn get(&self, layer: usize) -> (Tensor, Tensor) {
        let (k, v) = self.layers[layer].as_ref().expect("layer not written yet");
        (k.narrow(2, 0, self.len), v.narrow(2, 0, self.len))
    }

    /// Marks `t` more positions as filled, after every layer has appended them.
    pub fn advance(&mut self, t: i64) {
        self.len += t;
        if let Some(cap) = self.capacity {
            assert!(self.len <= cap, "KV cache overflow: {} > {cap}", self.len);
        }
    }

    /// A deep copy: appending to it leaves this cache untouched.
    pub fn duplicate(&self) -> KvCache {
        let layers = self.layers.iter().map(|l| l.as_ref().map(|(k, v)| (k.copy(), v.copy()))).collect();
        KvCache { layers, len: self.len, capacity: self.capacity }
    }

    /// A copy holding every row `n` times (`[n·B, ..]`, see [`super::repeat_batch`]),
    /// with no room to grow: for evaluations that only read the cache.
    pub fn repeat_rows(&self, n: i64) -> KvCache {
        let repeat = |x: &Tensor| super::repeat_batch(&x.narrow(2, 0, self.len), n);
        let layers = self.layers.iter().map(|l| l.as_ref().map(|(k, v)| (repeat(k), repeat(v)))).collect();
        KvCache { layers, len: self.len, capacity: None }
    }

    /// Keeps only the rows in `index` (e.g. the unfinished sequences of a batch).
    pub fn select_rows(&mut self, index: &Tensor) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, index);
            *v = v.index_select(0, index);
        }
    }

    /// The device and dtype of the stored tensors, if any.
    pub fn options(&self) -> Option<(Kind, Device)> {
        self.layers.iter().flatten().next().map(|(k, _)| (k.kind(), k.device()))
    }
}
