// hubquant: products of many float32 rows (a prefill, a calibration batch) with a
// quantized [n, k] matrix, for when the product is bound by arithmetic, not by
// reading the weights. A float matrix product copies panels of its right operand
// into a contiguous buffer before multiplying; here that copy is where the codes
// become floats: a panel of kCols output columns and kDepth inputs is decoded
// (int4 nibbles or int8 codes, times their scale) into a buffer that stays in
// cache while every input row is multiplied with it. No float copy of the whole
// matrix is written. XLA FFI custom calls, built with rows.cc by native.py.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One SIMD register of floats, and how many input rows a tile holds so that its
// sums (kRows x kVecs registers) stay in registers.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
constexpr int kRows = 12;
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kRows = 6;
#else
constexpr int kLanes = 4;
constexpr int kRows = 8;
#endif
constexpr int kVecs = 2;               // registers across a panel
constexpr int kCols = kVecs * kLanes;   // output columns of a panel
constexpr int64_t kDepth = 256;         // inputs decoded into a panel at a time (even)

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

struct Job {
  const float* x;       // [m, kx]
  const int8_t* codes;  // int4: [n, kx / 2]; int8: [n, kx]
  const float* scale;   // int4: [n, g]; int8: [n]
  const int8_t* zero;   // int4: [n, g]
  float* out;           // [m, n]
  int64_t m, n, kx, g, group_bytes, row_parts;
  bool int4;
};

typedef int8_t Bytes __attribute__((vector_size(kLanes)));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));

// int4 panel: panel[d * kCols + c] = weight (n0 + c, k0 + d), that is (code -
// zero) * scale of its group, and zero past n. The panel's bytes are first laid
// out byte by column, so that each byte position then decodes as whole
// registers: nibbles, floats, minus the columns' zero points, times their scales.
void decode_int4(const Job& job, int64_t n0, int64_t k0, int64_t depth, float* panel) {
  int64_t w = job.kx / 2, b0 = k0 / 2, count = depth / 2;
  alignas(64) int8_t bytes[kDepth / 2][kCols];
  for (int c = 0; c < kCols; ++c) {
    if (n0 + c >= job.n) {
      for (int64_t b = 0; b < count; ++b) bytes[b][c] = 0;
      continue;
    }
    const int8_t* codes = job.codes + (n0 + c) * w + b0;
    for (int64_t b = 0; b < count; ++b) bytes[b][c] = codes[b];
  }
  for (int64_t b = 0; b < count;) {
    int64_t group = (b0 + b) / job.group_bytes;
    int64_t end = std::min(count, (group + 1) * job.group_bytes - b0);
    alignas(64) float s[kCols], z[kCols];
    for (int c = 0; c < kCols; ++c) {
      bool inside = n0 + c < job.n;
      s[c] = inside ? job.scale[(n0 + c) * job.g + group] : 0.0f;
      z[c] = inside ? job.zero[(n0 + c) * job.g + group] : 0.0f;
    }
    for (; b < end; ++b) {
      for (int h = 0; h < kCols; h += kLanes) {
        Bytes v8;
        std::memcpy(&v8, &bytes[b][h], sizeof v8);
        Ints v = __builtin_convertvector(v8, Ints);
        Vec scale = load(s + h), zero = load(z + h);
        Vec low = __builtin_convertvector((v << 28) >> 28, Vec);
        Vec high = __builtin_convertvector(v >> 4, Vec);
        store(panel + 2 * b * kCols + h, (low - zero) * scale);
        store(panel + (2 * b + 1) * kCols + h, (high - zero) * scale);
      }
    }
  }
}

void decode_int8(const Job& job, int64_t n0, int64_t k0, int64_t depth, float* panel) {
  for (int c = 0; c < kCols; ++c) {
    bool inside = n0 + c < job.n;
    const int8_t* codes = job.codes + (inside ? n0 + c : 0) * job.kx + k0;
    float s = inside ? job.scale[n0 + c] : 0.0f;
    for (int64_t d = 0; d < depth; ++d) panel[d * kCols + c] = codes[d] * s;
  }
}

// out[R, cols] (+)= x[R, depth] @ panel[depth, kCols], sums kept in registers.
template <int R>
void tile(const float* x, int64_t kx, const float* panel, int64_t depth, float* out,
          int64_t n, int cols, bool first) {
  Vec sum[R][kVecs] = {};
  for (int64_t d = 0; d < depth; ++d) {
    Vec b[kVecs];
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) b[j] = load(panel + d * kCols + j * kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      Vec a = Vec{} + x[i * kx + d];
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; ++j) sum[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < R; ++i) {
    float* y = out + i * n;
    if (cols == kCols) {
      for (int j = 0; j < kVecs; ++j) {
        float* at = y + j * kLanes;
        store(at, first ? sum[i][j] : load(at) + sum[i][j]);
      }
      continue;
    }
    alignas(64) float part[kCols];
    for (int j = 0; j < kVecs; ++j) store(part + j * kLanes, sum[i][j]);
    for (int c = 0; c < cols; ++c) y[c] = first ? part[c] : y[c] + part[c];
  }
}

template <int R>
void tiles(const float* x, int64_t kx, const float* panel, int64_t depth, float* out,
           int64_t n, int cols, bool first, int64_t rows) {
  if constexpr (R > 1) {
    if (rows < R) return tiles<R - 1>(x, kx, panel, depth, out, n, cols, first, rows);
  }
  tile<R>(x, kx, panel, depth, out, n, cols, first);
}

// One task: the output columns of one panel, for one part of the input rows.
void task(const Job& job, int64_t t, float* panel) {
  int64_t n0 = (t / job.row_parts) * kCols, part = t % job.row_parts;
  int64_t blocks = (job.m + kRows - 1) / kRows;
  int64_t m0 = blocks * part / job.row_parts * kRows;
  int64_t m1 = std::min(job.m, blocks * (part + 1) / job.row_parts * kRows);
  int cols = static_cast<int>(std::min<int64_t>(kCols, job.n - n0));
  for (int64_t k0 = 0; k0 < job.kx; k0 += kDepth) {
    int64_t depth = std::min(kDepth, job.kx - k0);
    job.int4 ? decode_int4(job, n0, k0, depth, panel) : decode_int8(job, n0, k0, depth, panel);
    for (int64_t r = m0; r < m1; r += kRows)
      tiles<kRows>(job.x + r * job.kx + k0, job.kx, panel, depth, job.out + r * job.n + n0,
                   job.n, cols, k0 == 0, std::min<int64_t>(kRows, m1 - r));
  }
}

// Splits the rows too where there are fewer panels than threads to keep busy.
void run(ffi::ThreadPool& pool, Job& job) {
  int64_t panels = (job.n + kCols - 1) / kCols, threads = pool.num_threads() + 1;
  int64_t blocks = (job.m + kRows - 1) / kRows;
  job.row_parts = std::max<int64_t>(1, std::min(blocks, (2 * threads + panels - 1) / panels));
  hubquant::run_tasks(pool, panels * job.row_parts, [&job](int64_t t) {
    thread_local std::vector<float> panel(kDepth * kCols);
    task(job, t, panel.data());
  });
}

ffi::Error Int4Tiles(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> codes,
                     ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::S8> zero,
                     ffi::ResultBuffer<ffi::F32> out, int64_t group_bytes) {
  auto job = hubquant::product_job<Job>(x, codes, scale, out);
  job.g = scale.dimensions()[1];
  job.zero = zero.typed_data();
  job.group_bytes = group_bytes;
  job.int4 = true;
  if (2 * codes.dimensions()[1] != job.kx || group_bytes < 1 ||
      zero.dimensions()[1] != job.g || zero.dimensions()[0] != job.n)
    return ffi::Error::InvalidArgument("hubquant_int4_tiles: bad shapes");
  run(pool, job);
  return ffi::Error::Success();
}

ffi::Error Int8Tiles(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> codes,
                     ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> out) {
  auto job = hubquant::product_job<Job>(x, codes, scale, out);
  job.int4 = false;
  if (codes.dimensions()[1] != job.kx)
    return ffi::Error::InvalidArgument("hubquant_int8_tiles: bad shapes");
  run(pool, job);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(hubquant_int4_tiles, Int4Tiles,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("group_bytes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(hubquant_int8_tiles, Int8Tiles,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
