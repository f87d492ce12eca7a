//! Devices, dtypes and what the local libtorch can do.

use anyhow::Result;
use serde::Serialize;
use tch::{Device, Kind};

use crate::config::Dtype;

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA if available) and checks it exists.
pub fn parse_device(spec: &str) -> Result<Device> {
    let device = match spec {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => crate::bail_usage!("model.device: unknown device {s:?} (expected cpu, cuda, cuda:N or auto)"),
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if count == 0 {
            crate::bail_usage!("model.device: {spec}: CUDA was asked for but no CUDA device is available (see `l2d info`)");
        }
        if n >= count {
            crate::bail_usage!("model.device: {spec}: only {count} CUDA device(s) available");
        }
    }
    Ok(device)
}

/// The tensor kind of `dtype` on `device` (`auto`: bf16 on CUDA, f32 on CPU), if the device supports it.
pub fn kind_of(dtype: Dtype, device: Device) -> Result<Kind> {
    let kind = match dtype {
        Dtype::Auto if device.is_cuda() => Kind::BFloat16,
        Dtype::Auto | Dtype::F32 => Kind::Float,
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
    };
    if kind == Kind::Half && device == Device::Cpu {
        // libtorch's CPU kernels for f16 are partial and slow; bf16 is the CPU half type.
        crate::bail_usage!("model.dtype: f16 is not supported on cpu (use f32 or bf16)");
    }
    Ok(kind)
}

/// What `l2d info` reports.
#[derive(Debug, Serialize)]
pub struct Info {
    /// l2d's own version.
    pub l2d_version: String,
    /// The libtorch the binary was built against.
    pub libtorch_version: String,
    /// Whether CUDA can be used.
    pub cuda_available: bool,
    /// CUDA runtime version libtorch was built with, if any.
    pub cuda_runtime_version: Option<String>,
    /// Whether cuDNN can be used.
    pub cudnn_available: bool,
    /// cuDNN version, if available.
    pub cudnn_version: Option<i64>,
    /// Visible CUDA devices.
    pub devices: Vec<GpuInfo>,
    /// Intra-op CPU threads.
    pub cpu_threads: i32,
    /// Logical CPUs of the machine.
    pub cpu_count: usize,
    /// Whether libtorch was built with MKL.
    pub mkl: bool,
}

/// One CUDA device.
#[derive(Debug, Serialize)]
pub struct GpuInfo {
    /// Ordinal, as in `cuda:N`.
    pub index: usize,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Total memory in bytes.
    pub total_memory_bytes: u64,
}

/// Collects the facts of the local libtorch and devices.
pub fn info() -> Info {
    let cuda = tch::Cuda::is_available();
    let cudnn = cuda && tch::Cuda::cudnn_is_available();
    let devices = if cuda { gpu_devices() } else { Vec::new() };
    Info {
        l2d_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: env!("L2D_LIBTORCH_VERSION").into(),
        cuda_available: cuda,
        cuda_runtime_version: cuda.then(|| format_cuda_version(tch::utils::version_cudart())),
        cudnn_available: cudnn,
        cudnn_version: cudnn.then(tch::utils::version_cudnn),
        devices,
        cpu_threads: tch::get_num_threads(),
        cpu_count: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        mkl: tch::utils::has_mkl(),
    }
}

fn format_cuda_version(v: i64) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Names and memory of the CUDA devices, from the driver API (libtorch does
/// not expose them through tch).
fn gpu_devices() -> Vec<GpuInfo> {
    let count = tch::Cuda::device_count() as usize;
    let driver = cuda_driver::Driver::open();
    (0..count)
        .map(|index| {
            let (name, total_memory_bytes) = driver
                .as_ref()
                .and_then(|d| d.device(index as i32))
                .unwrap_or_else(|| ("unknown".into(), 0));
            GpuInfo { index, name, total_memory_bytes }
        })
        .collect()
}

mod cuda_driver {
    //! The three CUDA driver calls `l2d info` needs, loaded at run time.
    use libloading::{Library, Symbol};
    use std::ffi::{c_char, c_int, CStr};

    pub struct Driver(Library);

    impl Driver {
        pub fn open() -> Option<Self> {
            // SAFETY: libcuda is the system's CUDA driver; loading it runs its
            // initialisers, which libtorch has already done by now.
            let lib = unsafe { Library::new("libcuda.so.1") }.ok()?;
            let init: Symbol<unsafe extern "C" fn(u32) -> c_int> = unsafe { lib.get(b"cuInit") }.ok()?;
            (unsafe { init(0) } == 0).then_some(())?;
            Some(Self(lib))
        }

        pub fn device(&self, ordinal: i32) -> Option<(String, u64)> {
            type GetDevice = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
            type GetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
            type TotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
            // SAFETY: signatures as declared in cuda.h (CUdevice is an int).
            unsafe {
                let get: Symbol<GetDevice> = self.0.get(b"cuDeviceGet").ok()?;
                let name_fn: Symbol<GetName> = self.0.get(b"cuDeviceGetName").ok()?;
                let mem_fn: Symbol<TotalMem> = self.0.get(b"cuDeviceTotalMem_v2").ok()?;
                let mut dev: c_int = 0;
                (get(&mut dev, ordinal) == 0).then_some(())?;
                let mut buf = [0 as c_char; 256];
                (name_fn(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0).then_some(())?;
                let mut bytes: usize = 0;
                (mem_fn(&mut bytes, dev) == 0).then_some(())?;
                Some((CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(), bytes as u64))
            }
        }
    }
}
