//! ZeRO-1 (`train.zero = 1`): the AdamW moments and the update split across
//! data-parallel ranks.
//!
//! The trainable tensors are laid end to end in one flat index space of
//! `total` elements, cut into `world_size` equal shards (the last padded with
//! zeros). Each step the gradients are reduce-scattered so that a rank holds
//! the summed gradient of its own shard only; it updates its shard of the f32
//! trainable tensors and its moments there, with the same element-wise AdamW
//! as the unsharded path, and all-gathers the updated shards back into every
//! rank's trainable tensors. Both collectives move the flat space in buckets
//! of at most `dist.bucket_mb`.
//!
//! When the model computes in f32, the trainable tensors are their own
//! masters: the shard is read from them each step. In bf16/f16 the f32 masters
//! live only in the shards (`keep_masters`), and the trainable tensors the
//! forward pass reads become leaves in the compute dtype (their gradients too):
//! the all-gather rounds the updated masters into them.

use anyhow::{Context, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

use super::optim::{decays, l2_norm_f64, Update};
use crate::dist::Dist;

/// Where each trainable tensor lies in the flat index space, and this rank's shard of it.
struct Layout {
    names: Vec<String>,
    sizes: Vec<Vec<i64>>,
    numels: Vec<i64>,
    offsets: Vec<i64>,
    /// Elements over all tensors.
    total: i64,
    /// Elements per rank (`total` rounded up to a multiple of the world size, divided).
    shard: i64,
    rank: i64,
    world: i64,
    device: Device,
}

/// The part of one tensor that falls into a stretch of the flat index space.
struct Piece {
    /// Which tensor.
    index: usize,
    /// First element within the tensor.
    start: i64,
    /// First element within the stretch.
    at: i64,
    len: i64,
}

impl Layout {
    fn new(params: &[(String, Tensor)], dist: &Dist) -> Result<Self> {
        if let Some((name, _)) = params.iter().find(|(_, p)| !p.is_contiguous()) {
            anyhow::bail!("train.zero = 1: trainable tensor {name} is not contiguous and cannot be sharded in place");
        }
        let numels: Vec<i64> = params.iter().map(|(_, p)| p.numel() as i64).collect();
        let offsets: Vec<i64> = numels.iter().scan(0, |at, n| Some(std::mem::replace(at, *at + n))).collect();
        let total: i64 = numels.iter().sum();
        let world = dist.world_size() as i64;
        Ok(Self {
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            sizes: params.iter().map(|(_, p)| p.size()).collect(),
            numels,
            offsets,
            total,
            shard: (total + world - 1) / world,
            rank: dist.rank() as i64,
            world,
            device: params.first().map_or(Device::Cpu, |(_, p)| p.device()),
        })
    }

    /// First flat element of rank `rank`'s shard.
    fn shard_start(&self, rank: i64) -> i64 {
        rank * self.shard
    }

    /// The tensors' parts within `[lo, lo + len)`, in order.
    fn pieces(&self, lo: i64, len: i64) -> Vec<Piece> {
        let hi = lo + len;
        (0..self.numels.len())
            .filter_map(|i| {
                let (a, b) = (lo.max(self.offsets[i]), hi.min(self.offsets[i] + self.numels[i]));
                (a < b).then(|| Piece { index: i, start: a - self.offsets[i], at: a - lo, len: b - a })
            })
            .collect()
    }

    /// `[lo, lo + len)` of the flat concatenation of `tensors` in f32; an
    /// undefined tensor (a gradient no rank computed) and the padding past
    /// the end read as zeros.
    fn read(&self, tensors: &[Tensor], lo: i64, len: i64) -> Tensor {
        let zeros = |n: i64| Tensor::zeros([n], (Kind::Float, self.device));
        let mut parts: Vec<Tensor> = self
            .pieces(lo, len)
            .into_iter()
            .map(|p| {
                let t = &tensors[p.index];
                if t.defined() { t.detach().reshape([-1]).narrow(0, p.start, p.len).to_kind(Kind::Float) } else { zeros(p.len) }
            })
            .collect();
        let past_end = (lo + len - self.total.max(lo)).min(len);
        if past_end > 0 {
            parts.push(zeros(past_end));
        }
        Tensor::cat(&parts, 0)
    }

    /// Writes `values` (f32, covering `[lo, lo + values.len)`) into the
    /// tensors' storage, cast to their dtype; the padding is dropped.
    fn write(&self, tensors: &[Tensor], lo: i64, values: &Tensor) {
        for p in self.pieces(lo, values.size()[0]) {
            let mut dest = tensors[p.index].view([-1]).narrow(0, p.start, p.len);
            dest.copy_(&values.narrow(0, p.at, p.len));
        }
    }

    /// The element count a bucket of `bucket_bytes` holds per rank (f32), at least 1.
    fn bucket_elements(&self, bucket_bytes: usize) -> i64 {
        ((bucket_bytes as i64) / (4 * self.world)).max(1)
    }

    /// `(start, len)` of the shard's buckets, relative to a shard's start.
    fn buckets(&self, bucket_bytes: usize) -> impl Iterator<Item = (i64, i64)> + '_ {
        let step = self.bucket_elements(bucket_bytes);
        (0..self.shard).step_by(step as usize).map(move |k| (k, step.min(self.shard - k)))
    }
}

/// This rank's shard of the optimizer: both moments, the f32 masters when
/// the trainable tensors are not f32, and the state rank 0 loaded from a
/// checkpoint until it is handed out.
pub struct Shard {
    layout: Layout,
    /// This rank's f32 masters (`None`: the f32 trainable tensors are their own).
    master: Option<Tensor>,
    keep_masters: bool,
    /// Largest input of one collective.
    bucket_bytes: usize,
    decay: Vec<bool>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    loaded: Option<HashMap<String, Tensor>>,
}

impl Shard {
    /// Zero moments for this rank's part of `params`; collectives move at most
    /// `bucket_bytes` each. `keep_masters`: the trainable tensors will be
    /// lowered to the compute dtype, so this rank keeps its f32 masters.
    pub fn new(params: &[(String, Tensor)], dist: &Dist, bucket_bytes: usize, keep_masters: bool) -> Result<Self> {
        let layout = Layout::new(params, dist)?;
        let zeros = || Tensor::zeros([layout.shard], (Kind::Float, layout.device));
        Ok(Self {
            decay: params.iter().map(|(n, p)| decays(n, p)).collect(),
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            layout,
            master: None,
            keep_masters,
            bucket_bytes,
            loaded: None,
        })
    }

    /// Whether this shard holds the f32 masters.
    pub fn keeps_masters(&self) -> bool {
        self.keep_masters
    }

    /// Keeps moments read from a checkpoint (rank 0) after checking them
    /// against the trainable tensors, as the unsharded load does.
    pub fn keep_loaded(&mut self, saved: HashMap<String, Tensor>) -> Result<()> {
        for (name, size) in self.layout.names.iter().zip(&self.layout.sizes) {
            for prefix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{name}");
                let t = saved.get(&key).ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                anyhow::ensure!(&t.size() == size, "optimizer state {key} has shape {:?}, expected {size:?}", t.size());
            }
        }
        self.loaded = Some(saved);
        Ok(())
    }

    /// This rank's masters from `params` (f32 and the same on every rank by
    /// now), when it keeps them; its moments from rank 0's loaded state, one
    /// tensor at a time by broadcast so that no rank ever holds the whole
    /// state (zeros stay when rank 0 loaded none).
    pub fn fill_from_main(&mut self, params: &[(String, Tensor)], dist: &Dist) -> Result<()> {
        let _guard = tch::no_grad_guard();
        if self.keep_masters {
            let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
            self.master = Some(self.layout.read(&tensors, self.layout.shard_start(self.layout.rank), self.layout.shard));
        }
        let loaded = self.loaded.take();
        let any_loaded = dist.sum_f64(&[f64::from(u8::from(loaded.is_some()))], "whether a checkpoint's optimizer state was loaded")?[0] > 0.0;
        if !any_loaded {
            return Ok(());
        }
        let mut loaded = loaded.unwrap_or_default();
        for i in 0..self.layout.names.len() {
            for prefix in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{}", self.layout.names[i]);
                let whole = match loaded.remove(&key) {
                    Some(t) => t.to_device(self.layout.device).to_kind(Kind::Float).reshape([-1]),
                    None => Tensor::zeros([self.layout.numels[i]], (Kind::Float, self.layout.device)),
                };
                dist.broadcast_from_main(&[whole.shallow_clone()], &format!("optimizer state {key}"))?;
                let mut slot = if prefix == "exp_avg" { self.exp_avg.shallow_clone() } else { self.exp_avg_sq.shallow_clone() };
                self.copy_own_part(i, &whole, &mut slot);
            }
        }
        Ok(())
    }

    /// Copies the part of tensor `index` (flat `whole`) that lies in this rank's shard into `slot`.
    fn copy_own_part(&self, index: usize, whole: &Tensor, slot: &mut Tensor) {
        let lo = self.layout.shard_start(self.layout.rank);
        for p in self.layout.pieces(lo, self.layout.shard).into_iter().filter(|p| p.index == index) {
            slot.narrow(0, p.at, p.len).copy_(&whole.narrow(0, p.start, p.len));
        }
    }

    /// This rank's shard of the gradients summed over ranks, bucket by bucket.
    pub fn reduce_scatter_grads(&self, params: &[(String, Tensor)], dist: &Dist) -> Result<Tensor> {
        let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).collect();
        let l = &self.layout;
        let mut parts = Vec::new();
        for (k, len) in l.buckets(self.bucket_bytes) {
            let blocks: Vec<Tensor> = (0..l.world).map(|r| l.read(&grads, l.shard_start(r) + k, len)).collect();
            parts.push(dist.reduce_scatter_sum(&Tensor::cat(&blocks, 0), "gradients")?);
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// The global L2 norm of the gradients from every rank's shard: squares
    /// summed in f64 per tensor part, then over ranks.
    pub fn grad_norm(&self, grads: &Tensor, dist: &Dist) -> Result<f64> {
        let lo = self.layout.shard_start(self.layout.rank);
        let own: f64 = self.layout.pieces(lo, self.layout.shard).iter().map(|p| l2_norm_f64(&grads.narrow(0, p.at, p.len)).powi(2)).sum();
        Ok(dist.sum_f64(&[own], "the gradient norm")?[0].sqrt())
    }

    /// AdamW on this rank's shard of `params` (f32) and its moments, tensor
    /// part by tensor part (each with its own weight decay); returns the
    /// updated shard. Tensors no rank has a gradient for stay as they are, as
    /// in the unsharded step.
    pub fn update(&self, params: &[(String, Tensor)], grads: &Tensor, u: &Update) -> Tensor {
        let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let lo = self.layout.shard_start(self.layout.rank);
        let master = match &self.master {
            Some(m) => m.shallow_clone(),
            None => self.layout.read(&tensors, lo, self.layout.shard),
        };
        for p in self.layout.pieces(lo, self.layout.shard) {
            if !tensors[p.index].grad().defined() {
                continue;
            }
            let part = |t: &Tensor| t.narrow(0, p.at, p.len);
            u.apply(&mut part(&master), &part(grads), &mut part(&self.exp_avg), &mut part(&self.exp_avg_sq), self.decay[p.index]);
        }
        master
    }

    /// Every rank's updated shard (`master` is this rank's) written into `params`, bucket by bucket.
    pub fn all_gather_into(&self, params: &[(String, Tensor)], master: &Tensor, dist: &Dist) -> Result<()> {
        let tensors: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        let l = &self.layout;
        for (k, len) in l.buckets(self.bucket_bytes) {
            let all = dist.all_gather_flat(&master.narrow(0, k, len), "updated weights")?;
            for r in 0..l.world {
                l.write(&tensors, l.shard_start(r) + k, &all.narrow(0, r * len, len));
            }
        }
        Ok(())
    }

    /// Both moments of every tensor, whole, on rank 0's host (empty on the
    /// other ranks), named as the unsharded optimizer names them.
    pub fn gather_moments(&self, dist: &Dist) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for i in 0..self.layout.names.len() {
            for (prefix, shard) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                let key = format!("{prefix}.{}", self.layout.names[i]);
                if let Some(whole) = self.gather_on_main(shard, i, &key, dist)? {
                    out.push((key, whole));
                }
            }
        }
        Ok(out)
    }

    /// The f32 masters of every tensor, whole and named as the trainable
    /// tensors, on rank 0's host (empty on the others); `None` when the
    /// trainable tensors are their own masters.
    pub fn gather_masters(&self, dist: &Dist) -> Result<Option<Vec<(String, Tensor)>>> {
        let Some(master) = &self.master else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (i, name) in self.layout.names.iter().enumerate() {
            if let Some(whole) = self.gather_on_main(master, i, &format!("master weights {name}"), dist)? {
                out.push((name.clone(), whole));
            }
        }
        Ok(Some(out))
    }

    /// Tensor `index` of the flat `shard`s, whole on rank 0's host (`None` on
    /// the other ranks): summed over ranks from the part each holds (zeros
    /// elsewhere, so the sum is exact), one tensor at a time.
    fn gather_on_main(&self, shard: &Tensor, index: usize, what: &str, dist: &Dist) -> Result<Option<Tensor>> {
        let _guard = tch::no_grad_guard();
        let whole = Tensor::zeros([self.layout.numels[index]], (Kind::Float, self.layout.device));
        let lo = self.layout.shard_start(self.layout.rank);
        for p in self.layout.pieces(lo, self.layout.shard).into_iter().filter(|p| p.index == index) {
            whole.narrow(0, p.start, p.len).copy_(&shard.narrow(0, p.at, p.len));
        }
        dist.sum(&[whole.shallow_clone()], what).context("gathering the optimizer state for a checkpoint")?;
        Ok(dist.is_main().then(|| whole.reshape(self.layout.sizes[index].as_slice()).to_device(Device::Cpu)))
    }
}
