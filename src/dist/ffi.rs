//! Declarations of the C ABI in `csrc/dist.h`.

use std::ffi::{c_char, c_int, c_void};

/// The shim's process group (opaque).
#[repr(C)]
pub struct L2dDist {
    _private: [u8; 0],
}

/// `L2D_DIST_GLOO` in `csrc/dist.h`.
pub const GLOO: c_int = 0;
/// `L2D_DIST_NCCL` in `csrc/dist.h`.
pub const NCCL: c_int = 1;

extern "C" {
    pub fn l2d_dist_new(
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world_size: c_int,
        store_is_server: c_int,
        backend: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        device_index: c_int,
        err: *mut *mut c_char,
    ) -> *mut L2dDist;
    pub fn l2d_dist_free(pg: *mut L2dDist);
    pub fn l2d_dist_all_reduce_sum(pg: *mut L2dDist, tensors: *const *mut c_void, n: usize, bucket_bytes: i64, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_broadcast(pg: *mut L2dDist, tensors: *const *mut c_void, n: usize, root: c_int, bucket_bytes: i64, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_all_gather(pg: *mut L2dDist, out: *mut c_void, input: *mut c_void, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_reduce_scatter_sum(pg: *mut L2dDist, out: *mut c_void, input: *mut c_void, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_probe_alive(pg: *mut L2dDist, tag: *const c_char, wait_ms: i64, alive: *mut u8, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_job_set(pg: *mut L2dDist, key: *const c_char, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_job_has(pg: *mut L2dDist, key: *const c_char, present: *mut c_int, err: *mut *mut c_char) -> c_int;
    pub fn l2d_dist_free_error(err: *mut c_char);
    pub fn l2d_dist_has_nccl() -> c_int;
}
