// C ABI over libtorch's c10d (TCPStore, ProcessGroupGloo, ProcessGroupNCCL),
// called from src/dist/ffi.rs.
//
// Tensors are `at::Tensor*`, what tch's `Tensor::as_ptr()` returns.
// Functions returning int give 0 on success and -1 on failure; on failure
// `*err` holds a malloc'd message for l2d_dist_free_error(). No C++ exception
// crosses this boundary.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct L2dDist L2dDist;

enum { L2D_DIST_GLOO = 0, L2D_DIST_NCCL = 1 };

// Connects to (store_is_server = 0) or hosts (1) the TCPStore at
// master_addr:port, then builds the process group under `prefix` in that
// store. Blocks until every rank has joined or `timeout_ms` passed; the same
// timeout bounds every later collective. `device_index` is the CUDA device of
// NCCL (ignored by Gloo). NULL on failure.
L2dDist* l2d_dist_new(const char* master_addr, int port, int rank,
                      int world_size, int store_is_server, int backend,
                      int64_t timeout_ms, const char* prefix, int device_index,
                      char** err);

// Shuts the group down (joins its threads) and releases the store.
void l2d_dist_free(L2dDist* pg);

// Sums n tensors over ranks in place. Consecutive tensors of one dtype and
// device are packed into flat buckets of at most `bucket_bytes` (<= 0: one
// bucket per run of equal dtype), one collective each.
int l2d_dist_all_reduce_sum(L2dDist* pg, void* const* tensors, size_t n,
                            int64_t bucket_bytes, char** err);

// Overwrites n tensors with `root`'s, bucketed as above.
int l2d_dist_broadcast(L2dDist* pg, void* const* tensors, size_t n, int root,
                       int64_t bucket_bytes, char** err);

// out (contiguous, world_size * in.numel() elements) = every rank's `in`,
// concatenated in rank order.
int l2d_dist_all_gather(L2dDist* pg, void* out, void* in, char** err);

// out (contiguous, in.numel() / world_size elements) = this rank's block of
// the element-wise sum over ranks of `in` (contiguous, world_size equal blocks
// in rank order).
int l2d_dist_reduce_scatter_sum(L2dDist* pg, void* out, void* in, char** err);

// After a failed collective: announces this rank as alive under `tag` in the
// store and waits up to `wait_ms` for the others to do the same. alive[r] is
// set to 1 for each rank seen (world_size entries). -1 when the store itself
// is unreachable.
int l2d_dist_probe_alive(L2dDist* pg, const char* tag, int64_t wait_ms,
                         uint8_t* alive, char** err);

// Sets `key` in the store outside the group's prefix (under torchrun's agent
// store it outlives a restart of the group).
int l2d_dist_job_set(L2dDist* pg, const char* key, char** err);

// *present = 1 when `key` was set in that store (by any attempt), else 0.
int l2d_dist_job_has(L2dDist* pg, const char* key, int* present, char** err);

void l2d_dist_free_error(char* err);

// 1 when this build has ProcessGroupNCCL.
int l2d_dist_has_nccl(void);

#ifdef __cplusplus
}
#endif
