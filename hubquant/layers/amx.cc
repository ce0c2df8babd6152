// hubquant: products of many float32 rows (a prefill, a calibration batch) with
// an int8 or int4 [n, k] matrix on Intel AMX tiles, integer arithmetic for a
// product bound by arithmetic. Each input row is cut into blocks of k (an int4
// group, or 512 inputs for int8), and each block into two int8 parts with one
// scale s: x ~ s * (hi + lo / 254), hi and lo in [-127, 127]. About 15 bits of
// the input are kept (error at most max|x| / 64516 of its block), so the result
// has weight-only quality, not that of an 8-bit activation. The int8 codes (or
// int4 nibbles minus their zero points, in [-15, 15]) are decoded once per
// panel of 32 output columns into the tiles' VNNI layout; int32 sums of each
// block are exact and are scaled into float32 at the block's end. XLA FFI
// custom calls, built with rows.cc and tiles.cc by native.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tasks.h"
#include "xla/ffi/api/ffi.h"

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__AVX512F__) && defined(__linux__)
#define HUBQUANT_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kStep = 64;   // inputs per tile product (64 int8 per tile row)
constexpr int64_t kTile = 16;   // rows of a tile, and int32 columns of a sum tile
constexpr int64_t kCols = 32;   // output columns of a panel: two tiles
constexpr int64_t kTileBytes = kTile * kStep;
constexpr float kLo = 254.0f;

// Inputs padded to whole tile steps.
constexpr int64_t padded(int64_t kx) { return (kx + kStep - 1) / kStep * kStep; }

struct Job {
  const float* x;       // [m, kx]
  const int8_t* codes;  // int4: [n, kx / 2]; int8: [n, kx]
  const float* scale;   // int4: [n, g]; int8: [n]
  const int8_t* zero;   // int4: [n, g]
  float* out;           // [m, n]
  int64_t m, n, kx, g, block;
  bool int4;
  // Derived: inputs padded to whole steps, rows to whole tiles.
  int64_t kp, mp, blocks, row_parts;
  std::vector<int8_t> hi, lo;  // [mp, kp]
  std::vector<float> xs;       // [mp, blocks]
};

#if HUBQUANT_AMX

typedef float Vec __attribute__((vector_size(64)));
typedef int32_t Ints __attribute__((vector_size(64)));

// max |x[k]| for k < len, 16 lanes at a time; NaN where any x[k] is NaN.
float peak_of(const float* x, int64_t len) {
  Vec most{};
  Ints nan{};
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    Vec v;
    std::memcpy(&v, x + k, sizeof v);
    nan |= v != v;
    v = v < 0 ? -v : v;
    most = v > most ? v : most;
  }
  float peak = 0.0f;
  bool any_nan = false;
  for (int j = 0; j < 16; ++j) {
    peak = std::max(peak, most[j]);
    any_nan |= nan[j] != 0;
  }
  for (; k < len; ++k) {
    peak = std::max(peak, std::fabs(x[k]));
    any_nan |= x[k] != x[k];
  }
  return any_nan ? std::numeric_limits<float>::quiet_NaN() : peak;
}

// Row i's blocks as two int8 parts and one scale per block (zero past kx).
void split_row(Job& job, int64_t i) {
  int8_t* hi = job.hi.data() + i * job.kp;
  int8_t* lo = job.lo.data() + i * job.kp;
  const float* x = job.x + i * job.kx;
  for (int64_t b = 0; b < job.blocks; ++b) {
    int64_t k0 = b * job.block, k1 = std::min(job.kx, k0 + job.block);
    float peak = peak_of(x + k0, k1 - k0);
    if (!(peak <= std::numeric_limits<float>::max())) {  // NaN or infinity: as float would
      job.xs[i * job.blocks + b] = std::numeric_limits<float>::quiet_NaN();
      continue;  // its parts stay zero; the NaN scale makes the row's outputs NaN
    }
    float s = peak > 0.0f ? peak / 127.0f : 1.0f, inverse = 1.0f / s;
    job.xs[i * job.blocks + b] = s;
    for (int64_t k = k0; k < k1; ++k) {
      float t = x[k] * inverse, h = std::nearbyint(t);
      hi[k] = static_cast<int8_t>(h);
      lo[k] = static_cast<int8_t>(std::clamp(std::nearbyint((t - h) * kLo), -127.0f, 127.0f));
    }
  }
}

typedef int8_t Half __attribute__((vector_size(32)));
typedef int8_t Step __attribute__((vector_size(64)));

// The 64 decoded values of column col for step s (zero past kx and n).
Step column_step(const Job& job, int64_t col, int64_t s) {
  Step v{};
  if (col >= job.n) return v;
  int64_t k0 = s * kStep;
  if (!job.int4) {
    std::memcpy(&v, job.codes + col * job.kx + k0, std::min(kStep, job.kx - k0));
    return v;
  }
  int64_t w = job.kx / 2;
  Half packed{};
  std::memcpy(&packed, job.codes + col * w + k0 / 2, std::min(kStep / 2, w - k0 / 2));
  Half low = (packed << 4) >> 4, high = packed >> 4;
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
  v = __builtin_shufflevector(low, high, 0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7,
                              39, 8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47,
                              16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                              24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63);
#else
  for (int j = 0; j < kStep / 2; ++j) {  // byte j holds inputs 2j (low) and 2j + 1
    v[2 * j] = low[j];
    v[2 * j + 1] = high[j];
  }
#endif
  int64_t group = k0 / job.block;
  v -= job.zero[col * job.g + group];
  int64_t valid = job.kx - k0;  // codes past kx decode to zero points: clear them
  if (valid < kStep)
    for (int64_t k = valid; k < kStep; ++k) v[k] = 0;
  return v;
}

// Panel of columns [n0, n0 + 32): per step, two tiles of 16 rows (4 inputs
// each) by 16 columns x 4 bytes; and each column's weight scale per block.
void decode_panel(const Job& job, int64_t n0, int8_t* panel, float* weight_scale) {
  int64_t steps = job.kp / kStep;
  for (int64_t c = 0; c < kCols; ++c) {
    int64_t col = n0 + c;
    int8_t* tile = panel + (c / kTile) * kTileBytes + (c % kTile) * 4;
    for (int64_t s = 0; s < steps; ++s) {
      Step v = column_step(job, col, s);
      int8_t* at = tile + s * 2 * kTileBytes;
      for (int64_t r = 0; r < kTile; ++r) std::memcpy(at + r * kStep, &v[4 * r], 4);
    }
    for (int64_t b = 0; b < job.blocks; ++b) {
      float s = col >= job.n ? 0.0f : job.int4 ? job.scale[col * job.g + b] : job.scale[col];
      weight_scale[b * kCols + c] = s;
    }
  }
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: int32 sums (hi x panel tile 0, hi x 1, lo x 0, lo x 1); 4, 5: the
// rows' hi and lo parts; 6, 7: the two panel tiles of a step.
void configure() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTile;
    config.bytes_per_row[t] = 64;
  }
  _tile_loadconfig(&config);
}

// acc[16 rows][32 columns] += block b's int32 sums, scaled to float.
void add_block(const Job& job, int64_t r0, int64_t b, const int32_t (*sums)[kTile * kTile],
               const float* weight_scale, float* acc) {
  Vec w[2];
  std::memcpy(w, weight_scale + b * kCols, sizeof w);
  for (int64_t i = 0; i < kTile; ++i) {
    float s = job.xs[(r0 + i) * job.blocks + b];
    for (int h = 0; h < 2; ++h) {
      Ints high, low;
      std::memcpy(&high, sums[h] + i * kTile, sizeof high);
      std::memcpy(&low, sums[2 + h] + i * kTile, sizeof low);
      Vec sum = __builtin_convertvector(high, Vec) + __builtin_convertvector(low, Vec) / kLo;
      float* at = acc + i * kCols + h * kTile;
      Vec total;
      std::memcpy(&total, at, sizeof total);
      total += sum * (w[h] * s);
      std::memcpy(at, &total, sizeof total);
    }
  }
}

// Block b's steps for the 16 rows from r0 into tiles 0-3 (hi x panel tiles 0
// and 1, lo x panel tiles 0 and 1).
void block_product(const Job& job, int64_t r0, int64_t b, const int8_t* panel) {
  const int8_t* hi = job.hi.data() + r0 * job.kp;
  const int8_t* lo = job.lo.data() + r0 * job.kp;
  int64_t per_block = job.block / kStep, steps = job.kp / kStep;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t s = b * per_block; s < std::min(steps, (b + 1) * per_block); ++s) {
    _tile_loadd(4, hi + s * kStep, job.kp);
    _tile_loadd(5, lo + s * kStep, job.kp);
    _tile_loadd(6, panel + s * 2 * kTileBytes, 64);
    _tile_loadd(7, panel + (s * 2 + 1) * kTileBytes, 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
}

// Rows [r0, r0 + 16) times the panel into out. Block b's sums are scaled
// while the tiles work on block b + 1.
void row_tile(const Job& job, int64_t r0, int64_t n0, const int8_t* panel,
              const float* weight_scale) {
  alignas(64) float acc[kTile * kCols] = {};
  alignas(64) int32_t sums[2][4][kTile * kTile];
  for (int64_t b = 0; b < job.blocks; ++b) {
    block_product(job, r0, b, panel);
    if (b > 0) add_block(job, r0, b - 1, sums[(b - 1) % 2], weight_scale, acc);
    int32_t(*into)[kTile * kTile] = sums[b % 2];
    _tile_stored(0, into[0], 64);
    _tile_stored(1, into[1], 64);
    _tile_stored(2, into[2], 64);
    _tile_stored(3, into[3], 64);
  }
  add_block(job, r0, job.blocks - 1, sums[(job.blocks - 1) % 2], weight_scale, acc);
  int64_t rows = std::min(kTile, job.m - r0), cols = std::min(kCols, job.n - n0);
  for (int64_t i = 0; i < rows; ++i)
    std::memcpy(job.out + (r0 + i) * job.n + n0, acc + i * kCols, cols * sizeof(float));
}

// One task: the output columns of one panel, for one part of the input rows.
void task(const Job& job, int64_t t) {
  thread_local std::vector<int8_t> panel;
  thread_local std::vector<float> weight_scale;
  int64_t n0 = (t / job.row_parts) * kCols, part = t % job.row_parts;
  int64_t tiles = job.mp / kTile;
  int64_t r0 = tiles * part / job.row_parts * kTile, r1 = tiles * (part + 1) / job.row_parts * kTile;
  panel.resize(job.kp / kStep * 2 * kTileBytes);
  weight_scale.resize(job.blocks * kCols);
  decode_panel(job, n0, panel.data(), weight_scale.data());
  configure();
  for (int64_t r = r0; r < r1; r += kTile) row_tile(job, r, n0, panel.data(), weight_scale.data());
  _tile_release();
}

bool request_tiles() {
  constexpr long kRequestPermission = 0x1023, kTileData = 18;
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

#endif  // HUBQUANT_AMX

bool ready() {
#if HUBQUANT_AMX
  static const bool granted = request_tiles();
  return granted;
#else
  return false;
#endif
}

ffi::Error run(ffi::ThreadPool& pool, Job& job) {
#if HUBQUANT_AMX
  if (!ready()) return ffi::Error::Internal("hubquant: AMX tiles not granted");
  job.kp = padded(job.kx);
  job.mp = (job.m + kTile - 1) / kTile * kTile;
  job.blocks = (job.kp + job.block - 1) / job.block;
  job.hi.assign(job.mp * job.kp, 0);
  job.lo.assign(job.mp * job.kp, 0);
  job.xs.assign(job.mp * job.blocks, 0.0f);
  hubquant::run_tasks(pool, job.m, [&job](int64_t i) { split_row(job, i); });
  int64_t panels = (job.n + kCols - 1) / kCols, threads = pool.num_threads() + 1;
  int64_t tiles = job.mp / kTile;
  job.row_parts = std::max<int64_t>(1, std::min(tiles, (2 * threads + panels - 1) / panels));
  hubquant::run_tasks(pool, panels * job.row_parts, [&job](int64_t t) { task(job, t); });
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("hubquant: built without AMX");
#endif
}

ffi::Error Int4Amx(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> codes,
                   ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::S8> zero,
                   ffi::ResultBuffer<ffi::F32> out, int64_t block) {
  auto job = hubquant::product_job<Job>(x, codes, scale, out);
  job.block = block;
  job.g = scale.dimensions()[1];
  job.zero = zero.typed_data();
  job.int4 = true;
  if (2 * codes.dimensions()[1] != job.kx || block < kStep || block % kStep ||
      job.g != (padded(job.kx) + block - 1) / block || zero.dimensions()[1] != job.g ||
      zero.dimensions()[0] != job.n)
    return ffi::Error::InvalidArgument("hubquant_int4_amx: bad shapes");
  return run(pool, job);
}

ffi::Error Int8Amx(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> codes,
                   ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> out,
                   int64_t block) {
  auto job = hubquant::product_job<Job>(x, codes, scale, out);
  job.block = block;
  job.int4 = false;
  if (codes.dimensions()[1] != job.kx || block < kStep || block % kStep)
    return ffi::Error::InvalidArgument("hubquant_int8_amx: bad shapes");
  return run(pool, job);
}

}  // namespace

// 1 where this library was built for AMX and the kernel lets this process use
// its tiles (asked for once), else 0.
extern "C" int hubquant_amx_ready() { return ready() ? 1 : 0; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(hubquant_int4_amx, Int4Amx,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(hubquant_int8_amx, Int8Amx,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("block"));
