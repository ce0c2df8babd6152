// hubquant: independent tasks shared between the calling thread and XLA's intra-op
// thread pool (rows.cc, tiles.cc, amx.cc), and the buffers a many-row product's
// job reads (tiles.cc, amx.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace hubquant {

struct Tasks {
  std::function<void(int64_t)> run;
  int64_t count = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

inline void take(Tasks& tasks) {
  for (int64_t t; (t = tasks.next.fetch_add(1)) < tasks.count;) {
    tasks.run(t);
    tasks.done.fetch_add(1);
  }
}

// Runs run(0) .. run(count - 1) on the calling thread and as many pool threads
// as help; returns when every task is done (a task taken is always being worked
// on, so nothing waits on a helper still queued). A helper that starts after
// the last task was taken touches nothing but the shared counters.
inline void run_tasks(xla::ffi::ThreadPool& pool, int64_t count,
                      std::function<void(int64_t)> run) {
  auto tasks = std::make_shared<Tasks>();
  tasks->run = std::move(run);
  tasks->count = count;
  int64_t helpers = std::min<int64_t>(pool.num_threads(), count - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([tasks] { take(*tasks); });
  take(*tasks);
  while (tasks->done.load() < count) std::this_thread::yield();
}

// A many-row product's job with its shapes and buffers filled in: x [m, kx],
// codes [n, ...], scale and out [m, n].
template <typename Job>
Job product_job(xla::ffi::Buffer<xla::ffi::F32>& x, xla::ffi::Buffer<xla::ffi::S8>& codes,
                xla::ffi::Buffer<xla::ffi::F32>& scale,
                xla::ffi::ResultBuffer<xla::ffi::F32>& out) {
  Job job{};
  job.m = x.dimensions()[0];
  job.kx = x.dimensions()[1];
  job.n = codes.dimensions()[0];
  job.x = x.typed_data();
  job.codes = codes.typed_data();
  job.scale = scale.typed_data();
  job.out = out->typed_data();
  return job;
}

}  // namespace hubquant
