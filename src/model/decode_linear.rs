//! Linear maps laid out for small-batch decoding, where every weight is read
//! once per evaluation for a handful of rows.
//!
//! On a CPU with AVX2 and FMA, f32 weights are packed into panels of 16 output
//! columns (`[ceil(out/16), in, 16]`, each panel one contiguous block) and
//! multiplied by [`cpu::panel_product`] on libtorch's OpenMP threads. MKL repacks the
//! whole weight at every call for a few rows and runs matrix-vector products on
//! one core: the 21 matrices of one diffusion-path evaluation of the `small`
//! preset (2 threads) took 0.57–0.67 ms with MKL against 0.23–0.35 ms here at
//! 1 row, 2.5–3.3 ms against 0.69–0.77 ms at 8 rows, 5.0 against 3.9 ms at 64.
//! Beyond, it stays as fast as MKL without any repacking (256→4096 at 256 rows:
//! 4.2 ms against 5.7; 2048→8192 at 128 rows: 28 against 34 ms; at 1,024 rows
//! within 10% either way), so it serves every row count, and a row's result does
//! not depend on the others in its batch. Elsewhere the weight is the transposed
//! view `[in, out]` multiplied by libtorch (cuBLAS takes either layout at the same speed).

use tch::{Device, Kind, Tensor};

use super::cpu::{self, PanelProduct, PANEL};
use super::llama::{Affine, Linear};

/// A frozen affine map for decoding, without gradients.
pub struct DecodeLinear {
    /// `[ceil(out/16), in, 16]` panels (CPU f32 with AVX2/FMA), or `[in, out]`.
    weight: Tensor,
    /// `[out]`, or `[ceil(out/16)·16]` zero-padded when packed.
    bias: Option<Tensor>,
    /// Output width.
    out_dim: i64,
    /// Whether `weight` holds panels.
    packed: bool,
}

impl DecodeLinear {
    /// The map of `linear`, packed where the kernel runs.
    pub fn from_linear(linear: &Linear) -> Self {
        let (out_dim, in_dim) = linear.weight.size2().expect("[out, in]");
        let bias = linear.bias.as_ref().map(Tensor::detach);
        // Detached: a copy for decoding never carries gradients.
        let w = linear.weight.detach();
        if !(w.device() == Device::Cpu && w.kind() == Kind::Float && cpu::available()) {
            return Self { weight: w.tr(), bias, out_dim, packed: false };
        }
        let panel = PANEL as i64;
        let panels = (out_dim + panel - 1) / panel;
        let pad = panels * panel - out_dim;
        let weight = w.tr().constant_pad_nd([0, pad]).view([in_dim, panels, panel]).transpose(0, 1).contiguous();
        let bias = bias.map(|b| b.constant_pad_nd([0, pad]).contiguous());
        Self { weight, bias, out_dim, packed: true }
    }

    /// Another handle on the same tensors.
    pub fn shallow_clone(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            out_dim: self.out_dim,
            packed: self.packed,
        }
    }

    /// Applies the map to the last dimension of `x` (which carries no gradient).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        debug_assert!(!x.requires_grad(), "DecodeLinear computes without gradients");
        let mut shape = x.size();
        let in_dim = *shape.last().expect("x has a last dimension");
        *shape.last_mut().expect("x has a last dimension") = self.out_dim;
        if self.packed {
            let rows = x.numel() as i64 / in_dim.max(1);
            // Decoding calls this ~20 times per evaluation with f32 contiguous rows:
            // then the kernel path costs one libtorch call (the output's allocation).
            let converted;
            let x = if x.kind() == Kind::Float && x.is_contiguous() {
                x
            } else {
                converted = x.to_kind(Kind::Float).contiguous();
                &converted
            };
            return self.packed_product(x, rows, in_dim, &shape);
        }
        let x = x.reshape([-1, in_dim]);
        let y = match &self.bias {
            Some(b) => b.addmm(&x, &self.weight),
            None => x.mm(&self.weight),
        };
        y.view(shape.as_slice())
    }

    /// The kernel on contiguous f32 `x` of `rows` rows, into a new tensor of `shape`.
    fn packed_product(&self, x: &Tensor, rows: i64, in_dim: i64, shape: &[i64]) -> Tensor {
        let y = Tensor::empty(shape, (Kind::Float, Device::Cpu));
        let job = PanelProduct {
            x: x.data_ptr() as *const f32,
            rows: rows as usize,
            in_dim: in_dim as usize,
            panels: self.weight.data_ptr() as *const f32,
            num_panels: self.weight.size()[0] as usize,
            bias: self.bias.as_ref().map_or(std::ptr::null(), |b| b.data_ptr() as *const f32),
            y: y.data_ptr() as *mut f32,
            out_dim: self.out_dim as usize,
        };
        // SAFETY: `x`, the panels and the bias are live contiguous f32 CPU tensors of
        // the shapes `job` states (checked by the caller and `from_linear`); `y` is new.
        unsafe { cpu::panel_product(&job) };
        y
    }
}

impl Affine for DecodeLinear {
    fn apply(&self, x: &Tensor) -> Tensor {
        self.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row counts from 1 to 130, output widths with and without a partial panel,
    /// with and without bias, on one and two threads, against libtorch's
    /// `x·W^T + b`; and the kernel's results bit-identical on one and two threads
    /// and for a row alone, in a batch and as a strided view.
    #[test]
    fn decode_linear_equals_linear() {
        let opts = (Kind::Float, Device::Cpu);
        let threads = tch::get_num_threads();
        for (out_dim, in_dim) in [(5, 3), (16, 7), (40, 33), (688, 256)] {
            for bias in [None, Some(Tensor::randn([out_dim], opts))] {
                let linear = Linear { weight: Tensor::randn([out_dim, in_dim], opts), bias };
                let decode = DecodeLinear::from_linear(&linear);
                assert_eq!(decode.packed, cpu::available());
                for rows in [1, 2, 3, 4, 5, 8, 13, 64, 65, 130] {
                    let x = Tensor::randn([rows, 1, in_dim], opts);
                    let want = linear.forward(&x);
                    let per_threads: Vec<Tensor> = [1, 2]
                        .into_iter()
                        .map(|t| {
                            tch::set_num_threads(t);
                            tch::no_grad(|| decode.forward(&x))
                        })
                        .collect();
                    for (got, t) in per_threads.iter().zip([1, 2]) {
                        assert_eq!(want.size(), got.size());
                        let err = (&want - got).abs().max().double_value(&[]);
                        assert!(err < 1e-4, "{out_dim}x{in_dim}, {rows} rows, {t} threads: max error {err}");
                    }
                    // Each output column is one thread's, summed in the same order:
                    // results do not depend on the thread count.
                    if decode.packed {
                        assert!(per_threads[0].equal(&per_threads[1]), "{out_dim}x{in_dim}, {rows} rows: 1 vs 2 threads");
                        let last = tch::no_grad(|| decode.forward(&x.narrow(0, rows - 1, 1)));
                        assert!(last.equal(&per_threads[1].narrow(0, rows - 1, 1)), "{out_dim}x{in_dim}: row {rows} alone");
                        // A strided view is made contiguous rows first.
                        let strided = x.squeeze_dim(1).tr().contiguous().tr();
                        let got = tch::no_grad(|| decode.forward(&strided));
                        assert!(got.equal(&per_threads[1].squeeze_dim(1)), "{out_dim}x{in_dim}, {rows} strided rows");
                    }
                }
            }
        }
        tch::set_num_threads(threads);
    }
}
