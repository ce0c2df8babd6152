// hubquant: products of a few float32 rows with a quantized [n, k] matrix read as
// stored (int8 codes, or int4 codes packed two to a byte along k), for decoding.
// XLA FFI custom calls, built by hubquant/layers/native.py. Output rows are
// independent: they are split into chunks that XLA's intra-op threads and the
// calling thread take in turn.
#include <algorithm>
#include <cstdint>

#include "tasks.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kMaxRows = 16;  // products.FEW_ROWS
constexpr int64_t kPiece = 64;    // bytes of a group decoded at a time
constexpr int64_t kChunk = 16;    // output rows per task

struct Job {
  const float* even;    // int4: [m, w] even input elements; int8: [m, k] input
  const float* odd;     // int4: [m, w] odd input elements
  const int8_t* codes;  // [n, w]
  const float* scale;   // int4: [n, g]; int8: [n]
  float* out;           // [m, n]
  int64_t m, n, w, g, group_bytes;
  bool int4;
};

inline void decode(const int8_t* c, float* lo, float* hi, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    int b = c[j];
    lo[j] = static_cast<float>(static_cast<int8_t>(b << 4) >> 4);
    hi[j] = static_cast<float>(b >> 4);
  }
}

inline float dot2(const float* lo, const float* hi, const float* e, const float* o,
                  int64_t len) {
  float acc = 0.0f;
  for (int64_t j = 0; j < len; ++j) acc += lo[j] * e[j] + hi[j] * o[j];
  return acc;
}

inline float int8_dot(const int8_t* c, const float* x, int64_t len) {
  float acc = 0.0f;
  for (int64_t j = 0; j < len; ++j) acc += static_cast<float>(c[j]) * x[j];
  return acc;
}

// int4: the sums of one group (bytes [start, end)) for every input row.
void int4_group(const Job& job, const int8_t* c, int64_t start, int64_t end, float* acc) {
  alignas(64) float lo[kPiece], hi[kPiece];
  for (int64_t i = 0; i < job.m; ++i) acc[i] = 0.0f;
  for (int64_t p = start; p < end; p += kPiece) {
    int64_t len = std::min(kPiece, end - p);
    decode(c + p, lo, hi, len);
    for (int64_t i = 0; i < job.m; ++i)
      acc[i] += dot2(lo, hi, job.even + i * job.w + p, job.odd + i * job.w + p, len);
  }
}

// One input row, R output rows at a time: decoding fused with the sums (nothing
// stored), R independent sums so the adds do not wait on each other.
template <int R>
void int4_row_block(const Job& job, int64_t r) {
  float y[R] = {};
  for (int64_t k = 0; k < job.g; ++k) {
    int64_t start = k * job.group_bytes;
    int64_t len = std::min(job.group_bytes, job.w - start);
    const float* e = job.even + start;
    const float* o = job.odd + start;
    float acc[R] = {};
    for (int64_t j = 0; j < len; ++j) {
      float ej = e[j], oj = o[j];
      for (int t = 0; t < R; ++t) {
        int b = job.codes[(r + t) * job.w + start + j];
        acc[t] += static_cast<float>(static_cast<int8_t>(b << 4) >> 4) * ej +
                  static_cast<float>(b >> 4) * oj;
      }
    }
    for (int t = 0; t < R; ++t) y[t] += job.scale[(r + t) * job.g + k] * acc[t];
  }
  for (int t = 0; t < R; ++t) job.out[r + t] = y[t];
}

void int4_row(const Job& job, int64_t first, int64_t last) {
  int64_t r = first;
  for (; r + 4 <= last; r += 4) int4_row_block<4>(job, r);
  for (; r < last; ++r) int4_row_block<1>(job, r);
}

void int4_rows(const Job& job, int64_t first, int64_t last) {
  if (job.m == 1) return int4_row(job, first, last);
  float acc[kMaxRows], y[kMaxRows];
  for (int64_t r = first; r < last; ++r) {
    const int8_t* c = job.codes + r * job.w;
    const float* s = job.scale + r * job.g;
    for (int64_t i = 0; i < job.m; ++i) y[i] = 0.0f;
    for (int64_t k = 0; k < job.g; ++k) {
      int64_t start = k * job.group_bytes;
      int4_group(job, c, start, std::min(job.w, start + job.group_bytes), acc);
      for (int64_t i = 0; i < job.m; ++i) y[i] += s[k] * acc[i];
    }
    for (int64_t i = 0; i < job.m; ++i) job.out[i * job.n + r] = y[i];
  }
}

void int8_rows(const Job& job, int64_t first, int64_t last) {
  for (int64_t r = first; r < last; ++r) {
    const int8_t* c = job.codes + r * job.w;
    for (int64_t i = 0; i < job.m; ++i)
      job.out[i * job.n + r] = job.scale[r] * int8_dot(c, job.even + i * job.w, job.w);
  }
}

void run(ffi::ThreadPool& pool, const Job& job) {
  hubquant::run_tasks(pool, (job.n + kChunk - 1) / kChunk, [&job](int64_t chunk) {
    int64_t first = chunk * kChunk, last = std::min(job.n, first + kChunk);
    job.int4 ? int4_rows(job, first, last) : int8_rows(job, first, last);
  });
}

ffi::Error Int4Rows(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> even,
                    ffi::Buffer<ffi::F32> odd, ffi::Buffer<ffi::S8> codes,
                    ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> out,
                    int64_t group_bytes) {
  Job job{};
  job.m = even.dimensions()[0];
  job.w = even.dimensions()[1];
  job.n = codes.dimensions()[0];
  job.g = scale.dimensions()[1];
  if (job.m > kMaxRows || codes.dimensions()[1] != job.w || group_bytes < 1)
    return ffi::Error::InvalidArgument("hubquant_int4_rows: bad shapes");
  job.even = even.typed_data();
  job.odd = odd.typed_data();
  job.codes = codes.typed_data();
  job.scale = scale.typed_data();
  job.out = out->typed_data();
  job.group_bytes = group_bytes;
  job.int4 = true;
  run(pool, job);
  return ffi::Error::Success();
}

ffi::Error Int8Rows(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::S8> codes, ffi::Buffer<ffi::F32> scale,
                    ffi::ResultBuffer<ffi::F32> out) {
  Job job{};
  job.m = x.dimensions()[0];
  job.w = x.dimensions()[1];
  job.n = codes.dimensions()[0];
  if (codes.dimensions()[1] != job.w)
    return ffi::Error::InvalidArgument("hubquant_int8_rows: bad shapes");
  job.even = x.typed_data();
  job.codes = codes.typed_data();
  job.scale = scale.typed_data();
  job.out = out->typed_data();
  job.int4 = false;
  run(pool, job);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(hubquant_int4_rows, Int4Rows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("group_bytes"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(hubquant_int8_rows, Int8Rows,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
