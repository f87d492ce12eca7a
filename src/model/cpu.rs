//! Hand-written CPU paths for decode-sized work (a few rows per call), where
//! libtorch's per-operation overhead or MKL's repacking of the weights costs
//! more than the arithmetic. Each returns `None` (or is not offered) where it
//! does not apply, and the caller uses libtorch.

use tch::{Device, Kind, Tensor};

/// Output columns per weight panel of [`panel_product`]: two AVX2 registers.
pub const PANEL: usize = 16;

/// Most rows [`rms_normalize`] takes; libtorch's five operations amortise
/// their overhead beyond. ([`panel_product`] takes any number.)
pub const MAX_ROWS: i64 = 64;

/// Whether this CPU runs [`panel_product`] (x86-64 with AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return x86::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One product `y = x·W (+ b)` over contiguous f32 buffers: `x` `[rows, in_dim]`,
/// `panels` `[num_panels, in_dim, 16]` (W's columns sixteen at a time, the last
/// panel zero-padded), `bias` `[num_panels·16]` or null, `y` `[rows, out_dim]`.
pub struct PanelProduct {
    /// Input rows.
    pub x: *const f32,
    /// Number of rows.
    pub rows: usize,
    /// Input width.
    pub in_dim: usize,
    /// The packed weight.
    pub panels: *const f32,
    /// Number of panels, `ceil(out_dim / 16)`.
    pub num_panels: usize,
    /// Padded bias, or null.
    pub bias: *const f32,
    /// Output rows.
    pub y: *mut f32,
    /// Output width.
    pub out_dim: usize,
}

/// Runs `job`, its panels split over libtorch's intra-op threads.
///
/// # Safety
/// The pointers of `job` are valid for the stated shapes, `y` is not aliased,
/// and [`available`] is true.
pub unsafe fn panel_product(job: &PanelProduct) {
    #[cfg(target_arch = "x86_64")]
    x86::run(job);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("panel_product runs only where available() is true: {}", job.rows)
}

/// `x / rms(x)` over the last dimension, as [`super::llama::RmsNorm::normalize`]
/// computes it (f32 mean of squares, `rsqrt(mean + eps)`), for up to
/// [`MAX_ROWS`] contiguous f32 CPU rows without gradients: one pass instead of
/// five libtorch operations (~25 µs per call at decode sizes, nine calls per
/// diffusion-path evaluation).
pub fn rms_normalize(x: &Tensor, eps: f64) -> Option<Tensor> {
    let width = *x.size().last()?;
    let numel = x.numel();
    let usable = x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && !x.requires_grad()
        && width > 0
        && numel > 0
        && numel as i64 / width <= MAX_ROWS
        && x.is_contiguous();
    if !usable {
        return None;
    }
    let y = Tensor::empty(x.size(), (Kind::Float, Device::Cpu));
    // SAFETY: both tensors are contiguous f32 on the CPU with `numel` elements, and `y` is new.
    let (src, dst) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, numel),
            std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, numel),
        )
    };
    let eps = eps as f32;
    for (row, out) in src.chunks_exact(width as usize).zip(dst.chunks_exact_mut(width as usize)) {
        let mean_square = sum_of_squares(row) / width as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        for (o, v) in out.iter_mut().zip(row) {
            *o = v * scale;
        }
    }
    Some(y)
}

/// `Σ v²` in eight interleaved partial sums, which the compiler vectorises.
fn sum_of_squares(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ffi::{c_int, c_void};
    use std::sync::OnceLock;

    const P: usize = super::PANEL;

    use super::PanelProduct as Job;

    /// `GOMP_parallel(fn, data, num_threads, flags)`: libgomp's `#pragma omp parallel`.
    type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);
    /// `omp_get_thread_num()` / `omp_get_num_threads()`.
    type ThreadQuery = unsafe extern "C" fn() -> c_int;

    /// libgomp's entry for `#pragma omp parallel`, and the thread queries.
    struct OpenMp {
        parallel: Parallel,
        thread_num: ThreadQuery,
        num_threads: ThreadQuery,
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
                        parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                        thread_num: std::mem::transmute::<*mut c_void, ThreadQuery>(thread_num),
                        num_threads: std::mem::transmute::<*mut c_void, ThreadQuery>(num_threads),
                    })
                }
            })
            .as_ref()
    }

    /// Whether this CPU has AVX2 and FMA.
    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// See [`super::panel_product`].
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the libtorch operations it replaces, for widths with and without
    /// a partial chunk of eight, and every row count up to past the limit.
    #[test]
    fn rms_normalize_equals_libtorch() {
        let eps = 1e-5;
        for width in [1, 7, 8, 256, 259] {
            for rows in [1, 3, 64, 65] {
                let x = Tensor::randn([rows, 1, width], (Kind::Float, Device::Cpu)) * 3.0;
                let want = &x * (x.square().mean_dim(-1, true, Kind::Float) + eps).rsqrt();
                match rms_normalize(&x, eps) {
                    Some(got) => {
                        assert!(rows <= MAX_ROWS);
                        let err = (&want - &got).abs().max().double_value(&[]);
                        assert!(err < 1e-5, "{rows} x {width}: max error {err}");
                    }
                    None => assert!(rows > MAX_ROWS, "{rows} rows of {width} should take the fast path"),
                }
            }
        }
        let empty = Tensor::zeros([0, 8], (Kind::Float, Device::Cpu));
        assert!(rms_normalize(&empty, eps).is_none(), "no rows: libtorch's empty result");
        let strided = Tensor::randn([4, 8], (Kind::Float, Device::Cpu)).tr();
        assert!(rms_normalize(&strided, eps).is_none(), "a transposed view is not contiguous rows");
        let tracked = Tensor::randn([2, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(rms_normalize(&tracked, eps).is_none(), "autograd needs libtorch's operations");
    }
}
