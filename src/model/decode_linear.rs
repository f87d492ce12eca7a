//! Linear maps laid out for small-batch decoding, where every weight is read
//! once per evaluation for a handful of rows.
//!
//! On a CPU with AVX2 and FMA, f32 weights are packed into panels of 16 output
//! columns (`[ceil(out/16), in, 16]`, each panel one contiguous block) and
//! multiplied by our own kernel on libtorch's OpenMP threads. MKL repacks the
//! whole weight at every call for a few rows and runs matrix-vector products on
//! one core: the 21 matrices of one diffusion-path evaluation of the `small`
//! preset (2 threads) took 0.57–0.67 ms with MKL against 0.23–0.35 ms here at
//! 1 row, 2.5–3.3 ms against 0.69–0.77 ms at 8 rows, 5.0 against 3.9 ms at 64.
//! Elsewhere the weight is the transposed view `[in, out]` multiplied by
//! libtorch (cuBLAS takes either layout at the same speed).

use tch::{Device, Kind, Tensor};

use super::llama::Linear;

/// Output columns per panel: two AVX2 registers.
const PANEL: i64 = 16;

/// Most rows the packed kernel takes; MKL's own packing pays off beyond.
const MAX_KERNEL_ROWS: i64 = 64;

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
        let _guard = tch::no_grad_guard();
        let (out_dim, in_dim) = linear.weight.size2().expect("[out, in]");
        let bias = linear.bias.as_ref().map(Tensor::detach);
        let w = &linear.weight;
        if !(w.device() == Device::Cpu && w.kind() == Kind::Float && kernel::available()) {
            return Self { weight: w.detach().tr(), bias, out_dim, packed: false };
        }
        let panels = (out_dim + PANEL - 1) / PANEL;
        let pad = panels * PANEL - out_dim;
        let weight = w.detach().tr().constant_pad_nd([0, pad]).view([in_dim, panels, PANEL]).transpose(0, 1).contiguous();
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

    /// Applies the map to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let in_dim = *shape.last().expect("x has a last dimension");
        *shape.last_mut().expect("x has a last dimension") = self.out_dim;
        let x = x.reshape([-1, in_dim]);
        let rows = x.size()[0];
        let y = if !self.packed {
            self.matmul(&x, &self.weight)
        } else if rows <= MAX_KERNEL_ROWS && x.kind() == Kind::Float && !x.requires_grad() {
            self.packed_matmul(&x.contiguous())
        } else {
            self.matmul(&x, &self.unpacked())
        };
        y.view(shape.as_slice())
    }

    /// `x·w (+ b)` by libtorch, `w` `[in, out]`.
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Tensor {
        match &self.bias {
            Some(b) => b.narrow(0, 0, self.out_dim).addmm(x, w),
            None => x.mm(w),
        }
    }

    /// The panels as one `[in, out]` matrix (a copy).
    fn unpacked(&self) -> Tensor {
        let (panels, in_dim, _) = self.weight.size3().expect("[panels, in, 16]");
        self.weight.transpose(0, 1).reshape([in_dim, panels * PANEL]).narrow(1, 0, self.out_dim)
    }

    /// The kernel on contiguous f32 rows `x` `[rows, in]`.
    fn packed_matmul(&self, x: &Tensor) -> Tensor {
        let (rows, in_dim) = x.size2().expect("[rows, in]");
        let y = Tensor::empty([rows, self.out_dim], (Kind::Float, Device::Cpu));
        let job = kernel::Job {
            x: x.data_ptr() as *const f32,
            rows: rows as usize,
            in_dim: in_dim as usize,
            panels: self.weight.data_ptr() as *const f32,
            num_panels: self.weight.size()[0] as usize,
            bias: self.bias.as_ref().map_or(std::ptr::null(), |b| b.data_ptr() as *const f32),
            y: y.data_ptr() as *mut f32,
            out_dim: self.out_dim as usize,
        };
        // SAFETY: the pointers are the live contiguous f32 tensors of the shapes `Job` states.
        unsafe { kernel::run(&job) };
        y
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;
    use std::ffi::{c_int, c_void};
    use std::sync::OnceLock;

    const P: usize = super::PANEL as usize;

    /// One product `y = x·W (+ b)`: contiguous f32 buffers, `x` `[rows, in_dim]`,
    /// `panels` `[num_panels, in_dim, 16]`, `bias` `[num_panels·16]` or null,
    /// `y` `[rows, out_dim]`.
    pub struct Job {
        pub x: *const f32,
        pub rows: usize,
        pub in_dim: usize,
        pub panels: *const f32,
        pub num_panels: usize,
        pub bias: *const f32,
        pub y: *mut f32,
        pub out_dim: usize,
    }

    /// libgomp's entry for `#pragma omp parallel`, and the thread queries.
    struct OpenMp {
        parallel: unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32),
        thread_num: unsafe extern "C" fn() -> c_int,
        num_threads: unsafe extern "C" fn() -> c_int,
    }

    /// libtorch's own OpenMP runtime, found among the loaded libraries: the
    /// kernel then shares libtorch's thread team (already spinning between ops)
    /// instead of a second pool competing for the same cores.
    fn openmp() -> Option<&'static OpenMp> {
        static OPENMP: OnceLock<Option<OpenMp>> = OnceLock::new();
        OPENMP
            .get_or_init(|| {
                let find = |name: &std::ffi::CStr| {
                    // SAFETY: dlsym with a NUL-terminated name; null when absent.
                    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                    (!p.is_null()).then_some(p)
                };
                let (parallel, thread_num, num_threads) =
                    (find(c"GOMP_parallel")?, find(c"omp_get_thread_num")?, find(c"omp_get_num_threads")?);
                // SAFETY: these are libgomp's exported functions of these signatures.
                unsafe {
                    Some(OpenMp {
                        parallel: std::mem::transmute::<*mut c_void, _>(parallel),
                        thread_num: std::mem::transmute::<*mut c_void, _>(thread_num),
                        num_threads: std::mem::transmute::<*mut c_void, _>(num_threads),
                    })
                }
            })
            .as_ref()
    }

    /// Whether this CPU runs the kernel.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// Runs `job`, its panels split over libtorch's intra-op threads.
    ///
    /// # Safety
    /// The pointers of `job` are valid for the stated shapes, `y` is not aliased,
    /// and [`available`] is true.
    pub unsafe fn run(job: &Job) {
        let threads = tch::get_num_threads().max(1) as usize;
        match openmp() {
            Some(omp) if threads > 1 && job.num_panels > 1 => {
                extern "C" fn team_member(data: *mut c_void) {
                    // SAFETY: `data` is the `Job` that `run` passes, alive for the whole region.
                    unsafe {
                        let job = &*(data as *const Job);
                        let omp = openmp().expect("found before the region");
                        let (t, n) = ((omp.thread_num)() as usize, (omp.num_threads)() as usize);
                        panels(job, job.num_panels * t / n, job.num_panels * (t + 1) / n);
                    }
                }
                let threads = threads.min(job.num_panels) as u32;
                (omp.parallel)(team_member, job as *const Job as *mut c_void, threads, 0);
            }
            _ => panels(job, 0, job.num_panels),
        }
    }

    /// Output panels `first..end` of every row: rows four at a time, so that each
    /// loaded weight vector serves four rows from registers.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panels(job: &Job, first: usize, end: usize) {
        let k = job.in_dim;
        for p in first..end {
            let panel = job.panels.add(p * k * P);
            let bias = if job.bias.is_null() { None } else { Some(job.bias.add(p * P)) };
            let cols = (job.out_dim - p * P).min(P);
            let mut r = 0;
            while r < job.rows {
                let (x, y) = (job.x.add(r * k), job.y.add(r * job.out_dim + p * P));
                r += match job.rows - r {
                    1 => rows::<1>(x, k, panel, bias, y, job.out_dim, cols),
                    2 => rows::<2>(x, k, panel, bias, y, job.out_dim, cols),
                    3 => rows::<3>(x, k, panel, bias, y, job.out_dim, cols),
                    _ => rows::<4>(x, k, panel, bias, y, job.out_dim, cols),
                };
            }
        }
    }

    /// `R` rows of `x` times one panel, into the first `cols` columns of the
    /// panel's place in `y` (row stride `out_dim`); returns `R`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const R: usize>(
        x: *const f32,
        k: usize,
        panel: *const f32,
        bias: Option<*const f32>,
        y: *mut f32,
        out_dim: usize,
        cols: usize,
    ) -> usize {
        let init = match bias {
            Some(b) => [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))],
            None => [_mm256_setzero_ps(); 2],
        };
        let mut acc = [init; R];
        for i in 0..k {
            let w = [_mm256_loadu_ps(panel.add(i * P)), _mm256_loadu_ps(panel.add(i * P + 8))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let xi = _mm256_broadcast_ss(&*x.add(r * k + i));
                acc[0] = _mm256_fmadd_ps(xi, w[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(xi, w[1], acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut out = [0f32; P];
            _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
            std::ptr::copy_nonoverlapping(out.as_ptr(), y.add(r * out_dim), cols);
        }
        R
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Unused off x86-64: [`available`] is false there.
    pub struct Job {
        pub x: *const f32,
        pub rows: usize,
        pub in_dim: usize,
        pub panels: *const f32,
        pub num_panels: usize,
        pub bias: *const f32,
        pub y: *mut f32,
        pub out_dim: usize,
    }

    /// The kernel is written for x86-64 (AVX2, FMA).
    pub fn available() -> bool {
        false
    }

    /// Never called: [`available`] is false.
    pub unsafe fn run(_: &Job) {
        unreachable!("the packed kernel runs only on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row count up to past the kernel's limit, output widths with and
    /// without a partial panel, with and without bias, on one and two threads,
    /// against libtorch's `x·W^T + b`.
    #[test]
    fn decode_linear_equals_linear() {
        let opts = (Kind::Float, Device::Cpu);
        let threads = tch::get_num_threads();
        for (out_dim, in_dim) in [(5, 3), (16, 7), (40, 33), (688, 256)] {
            for bias in [None, Some(Tensor::randn([out_dim], opts))] {
                let linear = Linear { weight: Tensor::randn([out_dim, in_dim], opts), bias };
                let decode = DecodeLinear::from_linear(&linear);
                assert_eq!(decode.packed, kernel::available());
                for t in [1, 2] {
                    tch::set_num_threads(t);
                    for rows in [1, 2, 3, 4, 5, 8, 13, 64, 65] {
                        let x = Tensor::randn([rows, 1, in_dim], opts);
                        let (want, got) = (linear.forward(&x), tch::no_grad(|| decode.forward(&x)));
                        assert_eq!(want.size(), got.size());
                        let err = (&want - &got).abs().max().double_value(&[]);
                        assert!(err < 1e-4, "{out_dim}x{in_dim}, {rows} rows, {t} threads: max error {err}");
                    }
                }
            }
        }
        tch::set_num_threads(threads);
    }
}
