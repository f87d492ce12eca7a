// The C ABI of dist.h over c10d. Built with -DUSE_C10D_GLOO (without it
// ProcessGroupGloo.hpp declares nothing) and third_party/gloo/include on the
// include path (the torch wheel ships c10d's headers but not gloo's).
#include "dist.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace l2d_dist {
// dist_nccl.cpp defines these when NCCL is built in, the fallbacks below otherwise.
c10::intrusive_ptr<c10d::Backend> make_nccl(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
    std::chrono::milliseconds timeout, int device_index);
bool has_nccl();
}  // namespace l2d_dist

#ifndef L2D_DIST_WITH_NCCL
namespace l2d_dist {
c10::intrusive_ptr<c10d::Backend> make_nccl(
    const c10::intrusive_ptr<c10d::Store>&, int, int, std::chrono::milliseconds,
    int) {
  TORCH_CHECK(false,
              "this l2d was built without NCCL (run scripts/setup.sh on a "
              "CUDA machine, then rebuild)");
}
bool has_nccl() { return false; }
}  // namespace l2d_dist
#endif

struct L2dDist {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
  // The store without this attempt's prefix: under torchrun's agent store,
  // what is written there outlives a restart of the group.
  c10::intrusive_ptr<c10d::Store> job_store;
};

namespace {

// Runs f; every C++ exception becomes *err and -1.
template <class F>
int guarded(char** err, F&& f) {
  *err = nullptr;
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = ::strdup(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = ::strdup(e.what());
  } catch (...) {
    *err = ::strdup("unknown C++ exception");
  }
  return -1;
}

const at::Tensor& tensor_at(void* const* ts, size_t i) {
  TORCH_CHECK(ts[i] != nullptr, "tensor ", i, " is null");
  const at::Tensor& t = *static_cast<const at::Tensor*>(ts[i]);
  TORCH_CHECK(t.defined(), "tensor ", i, " is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, "tensor ", i, " is not dense");
  return t;
}

// Consecutive tensors of one dtype and device moved as one flat buffer; a
// lone contiguous tensor is its own buffer (a view, nothing copied).
struct Bucket {
  std::vector<at::Tensor> members;
  at::Tensor flat;

  bool is_view() const {
    return members.size() == 1 && members[0].is_contiguous();
  }
};

std::vector<Bucket> buckets_of(void* const* ts, size_t n, int64_t max_bytes) {
  std::vector<Bucket> out;
  int64_t bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensor_at(ts, i);
    const int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
    bool fresh = out.empty();
    if (!fresh) {
      const at::Tensor& first = out.back().members.front();
      fresh = first.scalar_type() != t.scalar_type() ||
              first.device() != t.device() ||
              (max_bytes > 0 && bytes + size > max_bytes);
    }
    if (fresh) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().members.push_back(t);  // shares storage with the caller's
    bytes += size;
  }
  for (auto& b : out) {
    if (b.is_view()) {
      b.flat = b.members[0].view({-1});
      continue;
    }
    std::vector<at::Tensor> parts;
    for (const auto& t : b.members) {
      parts.push_back(t.reshape({-1}));
    }
    b.flat = at::cat(parts, 0);
  }
  return out;
}

void unpack(std::vector<Bucket>& buckets) {
  for (auto& b : buckets) {
    if (b.is_view()) {
      continue;
    }
    int64_t offset = 0;
    for (auto& t : b.members) {
      t.copy_(b.flat.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

// Waits for every work item, even after one failed (no collective may still
// write into buffers about to be freed), then rethrows the first failure.
void wait_all(std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  std::exception_ptr first;
  for (auto& w : works) {
    try {
      w->wait();
    } catch (...) {
      if (!first) {
        first = std::current_exception();
      }
    }
  }
  if (first) {
    std::rethrow_exception(first);
  }
}

// One collective per bucket, all in flight together.
template <class Issue>
void bucketed(void* const* ts, size_t n, int64_t bucket_bytes, Issue issue) {
  at::NoGradGuard no_grad;
  auto buckets = buckets_of(ts, n, bucket_bytes);
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  for (auto& b : buckets) {
    std::vector<at::Tensor> one{b.flat};
    works.push_back(issue(one));
  }
  wait_all(works);
  unpack(buckets);
}

}  // namespace

extern "C" {

L2dDist* l2d_dist_new(const char* master_addr, int port, int rank,
                      int world_size, int store_is_server, int backend,
                      int64_t timeout_ms, const char* prefix, int device_index,
                      char** err) {
  L2dDist* out = nullptr;
  guarded(err, [&] {
    TORCH_CHECK(rank >= 0 && rank < world_size, "RANK ", rank,
                " is outside WORLD_SIZE ", world_size);
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = store_is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    // Every rank checks in and the host waits for all of them, so a missing
    // rank is a timeout at start-up rather than a hang in the first collective.
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), opts);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == L2D_DIST_NCCL) {
      pg = l2d_dist::make_nccl(store, rank, world_size, timeout, device_index);
    } else {
      // Binds to GLOO_SOCKET_IFNAME if set, else to the address the host
      // name resolves to; the timeout is that of every Gloo collective.
      auto gloo = c10d::ProcessGroupGloo::Options::create_default(timeout);
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, gloo);
    }
    out = new L2dDist{store, pg, rank, world_size, tcp};
  });
  return out;
}

void l2d_dist_free(L2dDist* pg) {
  if (pg == nullptr) {
    return;
  }
  try {
    pg->backend->shutdown();
  } catch (...) {
    // A peer already gone: nothing left to shut down cleanly.
  }
  try {
    delete pg;
  } catch (...) {
  }
}

int l2d_dist_all_reduce_sum(L2dDist* pg, void* const* tensors, size_t n,
                            int64_t bucket_bytes, char** err) {
  return guarded(err, [&] {
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    bucketed(tensors, n, bucket_bytes, [&](std::vector<at::Tensor>& one) {
      return pg->backend->allreduce(one, opts);
    });
  });
}

int l2d_dist_broadcast(L2dDist* pg, void* const* tensors, size_t n, int root,
                       int64_t bucket_bytes, char** err) {
  return guarded(err, [&] {
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    bucketed(tensors, n, bucket_bytes, [&](std::vector<at::Tensor>& one) {
      return pg->backend->broadcast(one, opts);
    });
  });
}

int l2d_dist_all_gather(L2dDist* pg, void* out, void* in, char** err) {
  return guarded(err, [&] {
    at::NoGradGuard no_grad;
    void* pair[2] = {out, in};
    at::Tensor o = tensor_at(pair, 0);
    at::Tensor i = tensor_at(pair, 1);
    TORCH_CHECK(o.numel() == i.numel() * pg->world && o.is_contiguous() &&
                    i.is_contiguous(),
                "all_gather: out must be contiguous with world_size times "
                "the elements of in");
    at::Tensor flat_out = o.view({-1});
    at::Tensor flat_in = i.view({-1});
    pg->backend->_allgather_base(flat_out, flat_in, c10d::AllgatherOptions())->wait();
  });
}

int l2d_dist_reduce_scatter_sum(L2dDist* pg, void* out, void* in, char** err) {
  return guarded(err, [&] {
    at::NoGradGuard no_grad;
    void* pair[2] = {out, in};
    at::Tensor o = tensor_at(pair, 0);
    at::Tensor i = tensor_at(pair, 1);
    TORCH_CHECK(i.numel() == o.numel() * pg->world && o.is_contiguous() &&
                    i.is_contiguous() && o.scalar_type() == i.scalar_type(),
                "reduce_scatter: in must be contiguous with world_size times "
                "the elements of out, of the same dtype");
    at::Tensor flat_out = o.view({-1});
    at::Tensor flat_in = i.view({-1});
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    pg->backend->_reduce_scatter_base(flat_out, flat_in, opts)->wait();
  });
}

int l2d_dist_probe_alive(L2dDist* pg, const char* tag, int64_t wait_ms,
                         uint8_t* alive, char** err) {
  return guarded(err, [&] {
    const std::string base = std::string("alive/") + tag + "/";
    pg->store->set(base + std::to_string(pg->rank), std::vector<uint8_t>{1});
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    while (true) {
      int seen = 0;
      for (int r = 0; r < pg->world; ++r) {
        alive[r] = pg->store->check({base + std::to_string(r)}) ? 1 : 0;
        seen += alive[r];
      }
      if (seen == pg->world || std::chrono::steady_clock::now() >= deadline) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

int l2d_dist_job_set(L2dDist* pg, const char* key, char** err) {
  return guarded(err, [&] { pg->job_store->set(key, std::vector<uint8_t>{1}); });
}

int l2d_dist_job_has(L2dDist* pg, const char* key, int* present, char** err) {
  return guarded(err, [&] { *present = pg->job_store->check({key}) ? 1 : 0; });
}

void l2d_dist_free_error(char* err) { std::free(err); }

int l2d_dist_has_nccl(void) { return l2d_dist::has_nccl() ? 1 : 0; }

}  // extern "C"
