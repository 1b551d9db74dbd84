// flora's fused CUDA kernels (f32), compiled at run time with NVRTC by `gpu_kernels.rs`.
//
// Each replaces a chain of generic candle kernels in a training step (a composite LayerNorm and
// its backward are about 34 of them, each a full pass over the activations) by one pass per
// direction. Row kernels take a warp or a block per row; element kernels a thread per element or
// per group of eight.
// Every kernel has a CPU twin in `fused.rs` or `gpu_ops.rs` that the tests compare it with.

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// bf16 as its bits: the kernels read and write candle's bf16 tensors without cuda_bf16.h, which
// NVRTC and the emulator would both have to find. Loads widen to f32, the arithmetic is f32, and
// stores round to nearest even (as __float2bfloat16 and half::bf16::from_f32 do; NaN stays NaN).
typedef unsigned short bf16_bits;

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }

__device__ __forceinline__ float load(const bf16_bits *p, size_t i) {
  return __uint_as_float((unsigned int)p[i] << 16);
}

__device__ __forceinline__ void store(float *p, size_t i, float v) { p[i] = v; }

// v rounded to bf16's bits. From sm_80 one `cvt` instruction rounds (to nearest even; a NaN
// becomes the canonical 0x7fff), where the integer arithmetic of the emulator and older cards
// takes six.
__device__ __forceinline__ unsigned int bf16_of(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned short r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
  return r;
#else
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
#endif
}

// Two floats rounded to bf16 in one register, the first in the low half: from sm_80 one `cvt`
// for both.
__device__ __forceinline__ unsigned int bf16_pair(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned int r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return bf16_of(lo) | (bf16_of(hi) << 16);
#endif
}

__device__ __forceinline__ void store(bf16_bits *p, size_t i, float v) {
  p[i] = (bf16_bits)bf16_of(v);
}

// Groups of eight elements: the kernels over rows and columns give each thread eight adjacent
// columns (`launch_shapes::GROUP`), so that their index arithmetic is done once per eight and,
// where the group's address is 16-byte aligned, it moves as one 16-byte access (eight bf16 or
// two times four f32) instead of eight. Unaligned groups (a tensor that starts inside its
// storage, a row width that is no multiple of 8) go element by element.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define UNROLL _Pragma("unroll")
__device__ __forceinline__ uint4 load16(const void *p) { return *(const uint4 *)p; }
__device__ __forceinline__ void store16(void *p, uint4 v) { *(uint4 *)p = v; }
__device__ __forceinline__ unsigned int load_pair(const bf16_bits *p) {
  return *(const unsigned int *)p;
}
__device__ __forceinline__ void store_pair(bf16_bits *p, unsigned int v) {
  *(unsigned int *)p = v;
}
#else
#define UNROLL
// Two adjacent bf16 as one 32-bit word (4-byte aligned; the low half first), copied as the
// emulation's load16 is.
inline unsigned int load_pair(const bf16_bits *p) {
  unsigned int v;
  memcpy(&v, p, 4);
  return v;
}
inline void store_pair(bf16_bits *p, unsigned int v) { memcpy(p, &v, 4); }
#endif

__device__ __forceinline__ bool aligned16(const void *p) {
  return ((unsigned long long)p & 15ull) == 0;
}

__device__ __forceinline__ void load8(const float *p, float *v) {
  if (aligned16(p)) {
    const uint4 a = load16(p), b = load16(p + 4);
    v[0] = __uint_as_float(a.x), v[1] = __uint_as_float(a.y);
    v[2] = __uint_as_float(a.z), v[3] = __uint_as_float(a.w);
    v[4] = __uint_as_float(b.x), v[5] = __uint_as_float(b.y);
    v[6] = __uint_as_float(b.z), v[7] = __uint_as_float(b.w);
    return;
  }
  UNROLL for (int k = 0; k < 8; k++) v[k] = p[k];
}

__device__ __forceinline__ void load8(const bf16_bits *p, float *v) {
  if (aligned16(p)) {
    const uint4 a = load16(p);
    const unsigned int w[4] = {a.x, a.y, a.z, a.w};
    UNROLL for (int k = 0; k < 4; k++) {
      v[2 * k] = __uint_as_float(w[k] << 16);
      v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
    return;
  }
  UNROLL for (int k = 0; k < 8; k++) v[k] = load(p, k);
}

__device__ __forceinline__ void store8(float *p, const float *v) {
  if (aligned16(p)) {
    uint4 a, b;
    a.x = __float_as_uint(v[0]), a.y = __float_as_uint(v[1]);
    a.z = __float_as_uint(v[2]), a.w = __float_as_uint(v[3]);
    b.x = __float_as_uint(v[4]), b.y = __float_as_uint(v[5]);
    b.z = __float_as_uint(v[6]), b.w = __float_as_uint(v[7]);
    store16(p, a);
    store16(p + 4, b);
    return;
  }
  UNROLL for (int k = 0; k < 8; k++) p[k] = v[k];
}

__device__ __forceinline__ void store8(bf16_bits *p, const float *v) {
  if (aligned16(p)) {
    uint4 a;
    a.x = bf16_pair(v[0], v[1]);
    a.y = bf16_pair(v[2], v[3]);
    a.z = bf16_pair(v[4], v[5]);
    a.w = bf16_pair(v[6], v[7]);
    store16(p, a);
    return;
  }
  UNROLL for (int k = 0; k < 8; k++) store(p, k, v[k]);
}

// Four f32 from or to a 16-byte aligned address, as one access.
__device__ __forceinline__ void load4(const float *p, float *v) {
  const uint4 a = load16(p);
  v[0] = __uint_as_float(a.x), v[1] = __uint_as_float(a.y);
  v[2] = __uint_as_float(a.z), v[3] = __uint_as_float(a.w);
}

__device__ __forceinline__ void store4(float *p, const float *v) {
  uint4 a;
  a.x = __float_as_uint(v[0]), a.y = __float_as_uint(v[1]);
  a.z = __float_as_uint(v[2]), a.w = __float_as_uint(v[3]);
  store16(p, a);
}

// Up to four elements of p from i on, `count` of them (1 to 4): as one access where there are
// four and `whole` (the group's addresses aligned), else one by one; the rest 0.
__device__ __forceinline__ void load_up_to4(const float *p, size_t i, int count, bool whole,
                                            float *v) {
  if (whole) {
    load4(p + i, v);
    return;
  }
  UNROLL for (int k = 0; k < 4; k++) v[k] = k < count ? p[i + k] : 0.0f;
}

__device__ __forceinline__ void store_up_to4(float *p, size_t i, int count, bool whole,
                                             const float *v) {
  if (whole) {
    store4(p + i, v);
    return;
  }
  for (int k = 0; k < count; k++) p[i + k] = v[k];
}

// The first column of this thread's group in a kernel launched as rows by column groups.
__device__ __forceinline__ unsigned int group_column() {
  return (blockIdx.y * blockDim.x + threadIdx.x) * 8u;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}

// The row of a kernel launched with a warp per row (`launch_shapes::warp_per_row`).
__device__ __forceinline__ unsigned int warp_row() {
  return blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
}

// The sum of `v` over the block (blockDim.x a multiple of 32), returned to every thread. `sh`
// holds 32 floats; the first barrier lets a previous call's readers finish with it.
__device__ float block_sum(float v, float *sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? sh[lane] : 0.0f);
}

__device__ float block_max(float v, float *sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  return warp_max(lane < warps ? sh[lane] : NEG_INF);
}

// A uniform draw in [0, 1) for element i under `seed` (SplitMix64's finaliser: counter-based, so
// a mask needs no state and its backward pass redraws it). `gpu_ops::keep` is its CPU twin.
__device__ __forceinline__ float unit_draw(unsigned long long seed, unsigned long long i) {
  unsigned long long z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// Whether dropout at p keeps element i under seed (`dropped`'s draw; flash attention makes it once
// for the values that share it).
__device__ __forceinline__ bool kept(float p, unsigned long long seed, unsigned long long i) {
  return p <= 0.0f || unit_draw(seed, i) >= p;
}

// Inverted dropout's scale of a kept element, 1 / (1 - p). Kernels compute it once per thread and
// multiply by it: a division per element is some ten instructions and a branch to a slow path
// (the compiler does not share one division between branches), where the attention kernels are
// bound by instructions.
__device__ __forceinline__ float keep_scale(float p) { return 1.0f / (1.0f - p); }

// Inverted dropout at rate p under seed, with its scale.
struct Dropout {
  float p, scale;
  unsigned long long seed;
};

__device__ __forceinline__ Dropout dropout_at(float p, unsigned long long seed) {
  return Dropout{p, keep_scale(p), seed};
}

// v through inverted dropout d for element i: v / (1 - p) if kept, else 0. At p = 0 every draw
// is kept and v / 1 is v: no draw is made.
__device__ __forceinline__ float dropped(float v, const Dropout &d, unsigned long long i) {
  if (d.p <= 0.0f) return v;
  return kept(d.p, d.seed, i) ? v * d.scale : 0.0f;
}

// The LayerNorm row kernels give each row a warp (`launch_shapes::warp_per_row`: eight rows to a
// block of 256 threads), lane l holding columns l, l + 32, ...: the row's sums are warp
// shuffles, with no block-wide barrier, and a row of up to 32 x LN_VALUES columns stays in
// registers between the passes over it (768, the paper's width, at LN_VALUES 24; more would cost
// registers that the warps in flight need). Longer rows are read again in each pass. `row` is past
// the last row for a whole warp at once.
#define LN_VALUES 24

// The lane's first LN_VALUES columns of row xr of n (0 past the row).
__device__ __forceinline__ void lane_values(const float *xr, int n, float *v) {
  const int lane = threadIdx.x & 31;
  UNROLL for (int k = 0; k < LN_VALUES; k++) {
    const int j = lane + 32 * k;
    v[k] = j < n ? xr[j] : 0.0f;
  }
}

// The mean and 1 / sqrt(variance + eps) of row xr of n, by its warp, from the lane's values v
// (`lane_values`) and the columns past them in memory.
__device__ float2 warp_moments(const float *v, const float *xr, int n, float eps) {
  const int lane = threadIdx.x & 31;
  float s = 0.0f;
  UNROLL for (int k = 0; k < LN_VALUES; k++) s += v[k];
  for (int j = lane + 32 * LN_VALUES; j < n; j += 32) s += xr[j];
  const float mean = warp_sum(s) / n;
  float q = 0.0f;
  UNROLL for (int k = 0; k < LN_VALUES; k++) {
    const float d = lane + 32 * k < n ? v[k] - mean : 0.0f;
    q += d * d;
  }
  for (int j = lane + 32 * LN_VALUES; j < n; j += 32) {
    const float d = xr[j] - mean;
    q += d * d;
  }
  return make_float2(mean, rsqrtf(warp_sum(q) / n + eps));
}

// Row xr's LayerNorm into yr: (x - mean) * rstd * w + b, from the lane's values v.
__device__ __forceinline__ void ln_row_out(const float *v, const float *xr, const float *w,
                                           const float *b, float *yr, int n, float2 m) {
  const int lane = threadIdx.x & 31;
  UNROLL for (int k = 0; k < LN_VALUES; k++) {
    const int j = lane + 32 * k;
    if (j < n) yr[j] = (v[k] - m.x) * m.y * w[j] + b[j];
  }
  for (int j = lane + 32 * LN_VALUES; j < n; j += 32) yr[j] = (xr[j] - m.x) * m.y * w[j] + b[j];
}

// LayerNorm over `rows` rows of n: y = (x - mean) * rstd * w + b.
extern "C" __global__ void ln_fwd(const float *x, const float *w, const float *b, float *y,
                                  int rows, int n, float eps) {
  const unsigned int row = warp_row();
  if (row >= (unsigned int)rows) return;
  const float *xr = x + (size_t)row * n;
  float v[LN_VALUES];
  lane_values(xr, n, v);
  ln_row_out(v, xr, w, b, y + (size_t)row * n, n, warp_moments(v, xr, n, eps));
}

// A dense layer's output added to the residual stream, and the sum's LayerNorm, in one pass where
// the layer's epilogue (bias and dropout) and the residual add with its LayerNorm were two: over
// rows of n, z = product + bias (product in T, the dense layer's: f32 or bf16) through inverted
// dropout at p (`bias_epilogue_at`'s mask over the flat index; none at 0), plus r, into sum (the
// backward pass's input), and its LayerNorm into out. Each lane reads back only the sums it wrote.
template <typename T>
__device__ void bias_dropout_add_ln_at(const T *product, const float *bias, const float *r,
                                       const float *w, const float *b, float *sum, float *out,
                                       int rows, int n, float p, unsigned long long seed,
                                       float eps) {
  const unsigned int row = warp_row();
  if (row >= (unsigned int)rows) return;
  const int lane = threadIdx.x & 31;
  const size_t off = (size_t)row * n;
  const Dropout d = dropout_at(p, seed);
  // Column j's sum: the dense layer's output through its dropout, plus the residual stream.
  const auto summed = [&](int j) {
    return dropped(load(product, off + j) + bias[j], d, off + j) + r[off + j];
  };
  float v[LN_VALUES];
  UNROLL for (int k = 0; k < LN_VALUES; k++) {
    const int j = lane + 32 * k;
    v[k] = j < n ? summed(j) : 0.0f;
    if (j < n) sum[off + j] = v[k];
  }
  for (int j = lane + 32 * LN_VALUES; j < n; j += 32) sum[off + j] = summed(j);
  const float2 m = warp_moments(v, sum + off, n, eps);
  ln_row_out(v, sum + off, w, b, out + off, n, m);
}

extern "C" __global__ void bias_dropout_add_ln_f32(const float *product, const float *bias,
                                                   const float *r, const float *w,
                                                   const float *b, float *sum, float *out,
                                                   int rows, int n, float p,
                                                   unsigned long long seed, float eps) {
  bias_dropout_add_ln_at(product, bias, r, w, b, sum, out, rows, n, p, seed, eps);
}

extern "C" __global__ void bias_dropout_add_ln_bf16(const bf16_bits *product, const float *bias,
                                                    const float *r, const float *w,
                                                    const float *b, float *sum, float *out,
                                                    int rows, int n, float p,
                                                    unsigned long long seed, float eps) {
  bias_dropout_add_ln_at(product, bias, r, w, b, sum, out, rows, n, p, seed, eps);
}

// LayerNorm's output gradient: g, plus a second gradient `extra` of the same output where there
// is one (the residual stream's, added here instead of in a pass of its own; f32 or bf16).
template <typename E>
__device__ __forceinline__ float grad_plus(const float *g, const E *extra, size_t i) {
  return extra ? g[i] + load(extra, i) : g[i];
}

// LayerNorm's input gradient, a warp per row, into dx; the row's mean and rstd into
// stats[2 row], stats[2 row + 1] for `ln_bwd_cols_at`. Where dz is not null, dx through the
// inverted dropout d too, in U, into dz: the gradient before the dense layer whose output (through
// that dropout) this LayerNorm's residual sum took (`bias_dropout_add_ln_at`), which its products
// read, in the pass that writes dx instead of one that reads it back (`dropout_to_bf16`).
template <typename E, typename U>
__device__ void ln_bwd_rows_at(const float *x, const float *w, const float *g, const E *extra,
                               float *dx, float *stats, U *dz, const Dropout &d, int rows, int n,
                               float eps) {
  const unsigned int row = warp_row();
  if (row >= (unsigned int)rows) return;
  const int lane = threadIdx.x & 31;
  const size_t off = (size_t)row * n;
  const float *xr = x + off;
  float *dr = dx + off;
  float v[LN_VALUES], gw[LN_VALUES];
  lane_values(xr, n, v);
  const float2 m = warp_moments(v, xr, n, eps);
  const float mean = m.x, rstd = m.y;
  float sgw = 0.0f, sgwx = 0.0f;
  UNROLL for (int k = 0; k < LN_VALUES; k++) {
    const int j = lane + 32 * k;
    gw[k] = j < n ? grad_plus(g, extra, off + j) * w[j] : 0.0f;
    sgw += gw[k];
    sgwx += gw[k] * (v[k] - mean) * rstd;
  }
  for (int j = lane + 32 * LN_VALUES; j < n; j += 32) {
    const float gwj = grad_plus(g, extra, off + j) * w[j];
    sgw += gwj;
    sgwx += gwj * (xr[j] - mean) * rstd;
  }
  const float m1 = warp_sum(sgw) / n;
  const float m2 = warp_sum(sgwx) / n;
  UNROLL for (int k = 0; k < LN_VALUES; k++) {
    const int j = lane + 32 * k;
    if (j >= n) continue;
    const float dxj = rstd * (gw[k] - m1 - (v[k] - mean) * rstd * m2);
    dr[j] = dxj;
    if (dz) store(dz, off + j, dropped(dxj, d, off + j));
  }
  for (int j = lane + 32 * LN_VALUES; j < n; j += 32) {
    const float xhat = (xr[j] - mean) * rstd;
    const float dxj = rstd * (grad_plus(g, extra, off + j) * w[j] - m1 - xhat * m2);
    dr[j] = dxj;
    if (dz) store(dz, off + j, dropped(dxj, d, off + j));
  }
  if (lane == 0) {
    stats[2 * row] = mean;
    stats[2 * row + 1] = rstd;
  }
}

extern "C" __global__ void ln_bwd_rows(const float *x, const float *w, const float *g, float *dx,
                                       float *stats, int rows, int n, float eps) {
  ln_bwd_rows_at(x, w, g, (const float *)0, dx, stats, (float *)0, dropout_at(0.0f, 0), rows, n,
                 eps);
}

extern "C" __global__ void ln_bwd_rows_plus_f32(const float *x, const float *w, const float *g,
                                                const float *extra, float *dx, float *stats,
                                                int rows, int n, float eps) {
  ln_bwd_rows_at(x, w, g, extra, dx, stats, (float *)0, dropout_at(0.0f, 0), rows, n, eps);
}

extern "C" __global__ void ln_bwd_rows_plus_bf16(const float *x, const float *w, const float *g,
                                                 const bf16_bits *extra, float *dx,
                                                 float *stats, int rows, int n, float eps) {
  ln_bwd_rows_at(x, w, g, extra, dx, stats, (float *)0, dropout_at(0.0f, 0), rows, n, eps);
}

// `ln_bwd_rows` and `ln_bwd_rows_plus_*` that also write the dense layer's dropped gradient dz
// (see `ln_bwd_rows_at`) in the products' type: f32, or bf16 (whose second gradient, the
// feed-forward's, is bf16 too).
extern "C" __global__ void ln_bwd_rows_to_f32(const float *x, const float *w, const float *g,
                                              float *dx, float *stats, float *dz, int rows,
                                              int n, float eps, float p,
                                              unsigned long long seed) {
  ln_bwd_rows_at(x, w, g, (const float *)0, dx, stats, dz, dropout_at(p, seed), rows, n, eps);
}

extern "C" __global__ void ln_bwd_rows_to_bf16(const float *x, const float *w, const float *g,
                                               float *dx, float *stats, bf16_bits *dz, int rows,
                                               int n, float eps, float p,
                                               unsigned long long seed) {
  ln_bwd_rows_at(x, w, g, (const float *)0, dx, stats, dz, dropout_at(p, seed), rows, n, eps);
}

extern "C" __global__ void ln_bwd_rows_plus_to_f32(const float *x, const float *w, const float *g,
                                                   const float *extra, float *dx, float *stats,
                                                   float *dz, int rows, int n, float eps,
                                                   float p, unsigned long long seed) {
  ln_bwd_rows_at(x, w, g, extra, dx, stats, dz, dropout_at(p, seed), rows, n, eps);
}

extern "C" __global__ void ln_bwd_rows_plus_to_bf16(const float *x, const float *w,
                                                    const float *g, const bf16_bits *extra,
                                                    float *dx, float *stats, bf16_bits *dz,
                                                    int rows, int n, float eps, float p,
                                                    unsigned long long seed) {
  ln_bwd_rows_at(x, w, g, extra, dx, stats, dz, dropout_at(p, seed), rows, n, eps);
}

// Per chunk of rows (blockIdx.y), partial sums over its rows of g * xhat (dw) and g (db) for 32
// columns (blockIdx.x); block (32, 8). partial[chunk * 2n + j] is dw's, [chunk * 2n + n + j] db's.
template <typename E>
__device__ void ln_bwd_cols_at(const float *x, const float *g, const E *extra,
                               const float *stats, float *partial, int rows, int n,
                               int rows_per_chunk) {
  __shared__ float sw[8][33], sb[8][33];
  const int j = blockIdx.x * 32 + threadIdx.x;
  const int r0 = blockIdx.y * rows_per_chunk;
  const int r1 = min(rows, r0 + rows_per_chunk);
  float dw = 0.0f, db = 0.0f;
  if (j < n) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const size_t i = (size_t)r * n + j;
      const float gv = grad_plus(g, extra, i);
      dw += gv * (x[i] - stats[2 * r]) * stats[2 * r + 1];
      db += gv;
    }
  }
  sw[threadIdx.y][threadIdx.x] = dw;
  sb[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int k = 1; k < 8; k++) {
      dw += sw[k][threadIdx.x];
      db += sb[k][threadIdx.x];
    }
    partial[(size_t)blockIdx.y * 2 * n + j] = dw;
    partial[(size_t)blockIdx.y * 2 * n + n + j] = db;
  }
}

extern "C" __global__ void ln_bwd_cols(const float *x, const float *g, const float *stats,
                                       float *partial, int rows, int n, int rows_per_chunk) {
  ln_bwd_cols_at(x, g, (const float *)0, stats, partial, rows, n, rows_per_chunk);
}

extern "C" __global__ void ln_bwd_cols_plus_f32(const float *x, const float *g,
                                                const float *extra, const float *stats,
                                                float *partial, int rows, int n,
                                                int rows_per_chunk) {
  ln_bwd_cols_at(x, g, extra, stats, partial, rows, n, rows_per_chunk);
}

extern "C" __global__ void ln_bwd_cols_plus_bf16(const float *x, const float *g,
                                                 const bf16_bits *extra, const float *stats,
                                                 float *partial, int rows, int n,
                                                 int rows_per_chunk) {
  ln_bwd_cols_at(x, g, extra, stats, partial, rows, n, rows_per_chunk);
}

// Per chunk of rows (blockIdx.y), partial column sums of g (rows x n) for 32 columns; block
// (32, 8). partial[chunk * n + j].
template <typename T>
__device__ void col_sum_chunk(const T *g, float *partial, int rows, int n, int rows_per_chunk) {
  __shared__ float sh[8][33];
  const int j = blockIdx.x * 32 + threadIdx.x;
  const int r0 = blockIdx.y * rows_per_chunk;
  const int r1 = min(rows, r0 + rows_per_chunk);
  float s = 0.0f;
  if (j < n) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) s += load(g, (size_t)r * n + j);
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int k = 1; k < 8; k++) s += sh[k][threadIdx.x];
    partial[(size_t)blockIdx.y * n + j] = s;
  }
}

extern "C" __global__ void col_sum_chunks(const float *g, float *partial, int rows, int n,
                                          int rows_per_chunk) {
  col_sum_chunk(g, partial, rows, n, rows_per_chunk);
}

// col_sum_chunks for a bf16 gradient (rows x n), a thread to eight adjacent columns read as one
// 16-byte access where aligned: blocks of (32, 8) threads over 256 columns
// (`launch_shapes::column_group_chunks`) by chunks of rows (blockIdx.y). Two bytes a thread
// at a time, as col_sum_chunk reads, left the reads at about half the card's bandwidth.
extern "C" __global__ void col_sum_chunks_bf16(const bf16_bits *g, float *partial, int rows,
                                               int n, int rows_per_chunk) {
  __shared__ float sh[8][8 * 32 + 1];
  const unsigned int j = (blockIdx.x * 32 + threadIdx.x) * 8;
  const int r0 = blockIdx.y * rows_per_chunk;
  const int r1 = min(rows, r0 + rows_per_chunk);
  float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  if (j < (unsigned int)n) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const bf16_bits *row = g + (size_t)r * n + j;
      float v[8];
      if (j + 8 <= (unsigned int)n) {
        load8(row, v);
      } else {
        UNROLL for (int k = 0; k < 8; k++) v[k] = j + k < (unsigned int)n ? load(row, k) : 0.0f;
      }
      UNROLL for (int k = 0; k < 8; k++) s[k] += v[k];
    }
  }
  UNROLL for (int k = 0; k < 8; k++) sh[threadIdx.y][threadIdx.x * 8 + k] = s[k];
  __syncthreads();
  if (threadIdx.y != 0) return;
  for (int k = 0; k < 8 && j + k < (unsigned int)n; k++) {
    float t = s[k];
    for (int y = 1; y < 8; y++) t += sh[y][threadIdx.x * 8 + k];
    partial[(size_t)blockIdx.y * n + j + k] = t;
  }
}

// out[offset + j] = sum over chunks of partial[chunk * width + j], in chunk order (so the result
// does not depend on scheduling).
// Eight chunks' loads are issued before their adds, which stay in order: at the paper's size a
// column has 336 chunks, and one load at a time waited on each.
extern "C" __global__ void sum_chunks(const float *partial, float *out, unsigned long long offset,
                                      int width, int chunks) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  float s = 0.0f;
  int c = 0;
  for (; c + 8 <= chunks; c += 8) {
    float v[8];
    UNROLL for (int k = 0; k < 8; k++) v[k] = partial[(size_t)(c + k) * width + j];
    UNROLL for (int k = 0; k < 8; k++) s += v[k];
  }
  for (; c < chunks; c++) s += partial[(size_t)c * width + j];
  out[offset + j] = s;
}

// Softmax over rows of n.
extern "C" __global__ void softmax_fwd(const float *x, float *y, int n) {
  __shared__ float sh[32];
  const float *xr = x + (size_t)blockIdx.x * n;
  float *yr = y + (size_t)blockIdx.x * n;
  float m = NEG_INF;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j]);
  m = block_max(m, sh);
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(xr[j] - m);
  const float inv = 1.0f / block_sum(s, sh);
  for (int j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
}

// Softmax's input gradient from its output y and the output's gradient g: y (g - sum(g y)).
extern "C" __global__ void softmax_bwd(const float *y, const float *g, float *dx, int n) {
  __shared__ float sh[32];
  const size_t off = (size_t)blockIdx.x * n;
  float s = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += g[off + j] * y[off + j];
  s = block_sum(s, sh);
  for (int j = threadIdx.x; j < n; j += blockDim.x) dx[off + j] = y[off + j] * (g[off + j] - s);
}

// The standard normal distribution function, Phi(x) = (1 + erf(x / sqrt 2)) / 2: erff is half
// the instructions of normcdff (sm_90: about 30 an element against 60), whose erfc keeps
// Phi's relative precision far into the left tail, where GELU's x Phi(x) is 0 to within 1e-7
// anyway. This is PyTorch's GELU, and the CPU's (`fused::phi`) error is of the same size. The
// dense layers' GELU epilogues run 66 M of these a layer at the paper's size.
__device__ __forceinline__ float normal_cdf(float x) {
  return 0.5f * (1.0f + erff(x * 0.70710678118654752f));
}

// GELU (erf form), x Phi(x), and its slope Phi(x) + x phi(x).
__device__ __forceinline__ float gelu_of(float x) { return x * normal_cdf(x); }

__device__ __forceinline__ float gelu_slope(float x) {
  return normal_cdf(x) + x * __expf(-0.5f * x * x) * 0.3989422804014327f;
}

// GELU, erf form: x Phi(x).
extern "C" __global__ void gelu_fwd(const float *x, float *y, unsigned long long len) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < len) y[i] = gelu_of(x[i]);
}

// g GELU'(x), GELU'(x) = Phi(x) + x phi(x).
extern "C" __global__ void gelu_bwd(const float *x, const float *g, float *dx,
                                    unsigned long long len) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  const float v = x[i];
  dx[i] = g[i] * gelu_slope(v);
}

// Rows of a table picked by ids: y[t, j] = table[ids[t], j]. This and the two kernels after it
// are launched as rows (blockIdx.x: t) by blocks of columns (`launch_shapes::rows_by_columns`).
extern "C" __global__ void gather_rows(const float *table, const unsigned int *ids, float *y,
                                       int n) {
  const unsigned int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j < (unsigned int)n) y[(size_t)blockIdx.x * n + j] = table[(size_t)ids[blockIdx.x] * n + j];
}

// The table's gradient from gather_rows': dtable[ids[t], j] += g[t, j] (dtable zeroed first).
extern "C" __global__ void scatter_add_rows(const float *g, const unsigned int *ids, float *dtable,
                                            int n) {
  const unsigned int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j < (unsigned int)n)
    atomicAdd(&dtable[(size_t)ids[blockIdx.x] * n + j], g[(size_t)blockIdx.x * n + j]);
}

// x + bias over rows of n.
extern "C" __global__ void bias_add(const float *x, const float *b, float *y, int n) {
  const unsigned int j = blockIdx.y * blockDim.x + threadIdx.x;
  const size_t i = (size_t)blockIdx.x * n + j;
  if (j < (unsigned int)n) y[i] = x[i] + b[j];
}

// Inverted dropout: x / (1 - p) where the draw is at least p, else 0. Its own backward pass.
// Eight elements per thread (`launch_shapes::element_groups`).
extern "C" __global__ void dropout(const float *x, float *y, float p, unsigned long long seed,
                                   unsigned long long len) {
  const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (i >= len) return;
  const Dropout d = dropout_at(p, seed);
  if (i + 8 > len) {
    for (size_t k = i; k < len; k++) y[k] = dropped(x[k], d, k);
    return;
  }
  float v[8];
  load8(x + i, v);
  UNROLL for (int k = 0; k < 8; k++) v[k] = dropped(v[k], d, i + k);
  store8(y + i, v);
}

// A dense layer's epilogue after its product (rows of n, in the products' type T): the bias
// added, then GELU when gelu is set, else inverted dropout at p (`dropout`'s mask over the flat
// index; none at 0), into y of type U (f32, or bf16 where the next product reads it). One pass
// where the cast of the product to f32, the bias add and the epilogue were three. Launched as
// rows by groups of eight columns (`launch_shapes::rows_by_column_groups`): no division per
// element.
template <typename T, typename U>
__device__ void bias_epilogue_at(const T *product, const float *bias, U *y, int n, int gelu,
                                 float p, unsigned long long seed) {
  const unsigned int col = group_column();
  if (col >= (unsigned int)n) return;
  const size_t i = (size_t)blockIdx.x * n + col;
  const Dropout d = dropout_at(p, seed);
  if (col + 8 > (unsigned int)n) {
    for (unsigned int k = 0; col + k < (unsigned int)n; k++) {
      const float z = load(product, i + k) + bias[col + k];
      store(y, i + k, gelu ? gelu_of(z) : dropped(z, d, i + k));
    }
    return;
  }
  float v[8];
  load8(product + i, v);
  UNROLL for (int k = 0; k < 8; k++) {
    const float z = v[k] + bias[col + k];
    v[k] = gelu ? gelu_of(z) : dropped(z, d, i + k);
  }
  store8(y + i, v);
}

extern "C" __global__ void bias_epilogue_f32(const float *product, const float *bias, float *y,
                                             int n, int gelu, float p, unsigned long long seed) {
  bias_epilogue_at(product, bias, y, n, gelu, p, seed);
}

extern "C" __global__ void bias_epilogue_bf16(const bf16_bits *product, const float *bias,
                                              float *y, int n, int gelu, float p,
                                              unsigned long long seed) {
  bias_epilogue_at(product, bias, y, n, gelu, p, seed);
}

extern "C" __global__ void bias_epilogue_bf16_to_bf16(const bf16_bits *product,
                                                      const float *bias, bf16_bits *y, int n,
                                                      int gelu, float p,
                                                      unsigned long long seed) {
  bias_epilogue_at(product, bias, y, n, gelu, p, seed);
}

// The gradient before a dense layer's GELU, in the products' type T: g GELU'(product + bias),
// with the pre-activation recomputed from the product the forward pass kept; g is f32, or bf16
// where the output was. Launched as bias_epilogue_at is.
template <typename T, typename G>
__device__ void bias_gelu_grad_at(const T *product, const float *bias, const G *g, T *dz,
                                  int n) {
  const unsigned int col = group_column();
  if (col >= (unsigned int)n) return;
  const size_t i = (size_t)blockIdx.x * n + col;
  if (col + 8 > (unsigned int)n) {
    for (unsigned int k = 0; col + k < (unsigned int)n; k++)
      store(dz, i + k, load(g, i + k) * gelu_slope(load(product, i + k) + bias[col + k]));
    return;
  }
  float z[8], gv[8];
  load8(product + i, z);
  load8(g + i, gv);
  UNROLL for (int k = 0; k < 8; k++) z[k] = gv[k] * gelu_slope(z[k] + bias[col + k]);
  store8(dz + i, z);
}

extern "C" __global__ void bias_gelu_grad_f32(const float *product, const float *bias,
                                              const float *g, float *dz, int n) {
  bias_gelu_grad_at(product, bias, g, dz, n);
}

extern "C" __global__ void bias_gelu_grad_bf16(const bf16_bits *product, const float *bias,
                                               const float *g, bf16_bits *dz, int n) {
  bias_gelu_grad_at(product, bias, g, dz, n);
}

extern "C" __global__ void bias_gelu_grad_bf16_from_bf16(const bf16_bits *product,
                                                         const float *bias, const bf16_bits *g,
                                                         bf16_bits *dz, int n) {
  bias_gelu_grad_at(product, bias, g, dz, n);
}

// The first of this thread's eight elements in a kernel launched by element groups
// (`launch_shapes::element_groups`).
__device__ __forceinline__ size_t group_element() {
  return ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
}

// The gradient before a dense layer's dropout (its mask redrawn; none at p = 0), cast to bf16 for
// the products of the backward pass, eight elements per thread. (In f32, `dropout` is the same
// pass.)
extern "C" __global__ void dropout_to_bf16(const float *g, bf16_bits *y, float p,
                                           unsigned long long seed, unsigned long long len) {
  const size_t i = group_element();
  if (i >= len) return;
  const Dropout d = dropout_at(p, seed);
  if (i + 8 > len) {
    for (size_t k = i; k < len; k++) store(y, k, dropped(g[k], d, k));
    return;
  }
  float v[8];
  load8(g + i, v);
  UNROLL for (int k = 0; k < 8; k++) v[k] = dropped(v[k], d, i + k);
  store8(y + i, v);
}

// a + b, b in bf16, into f32, eight elements per thread: a layer's input gradient, the residual
// stream's (f32) plus the one through q, k and v (in the products' type), in one pass where a
// cast and an add were two.
extern "C" __global__ void add_bf16_to_f32(const float *a, const bf16_bits *b, float *y,
                                           unsigned long long len) {
  const size_t i = group_element();
  if (i >= len) return;
  if (i + 8 > len) {
    for (size_t k = i; k < len; k++) y[k] = a[k] + load(b, k);
    return;
  }
  float u[8], v[8];
  load8(a + i, u);
  load8(b + i, v);
  UNROLL for (int k = 0; k < 8; k++) u[k] += v[k];
  store8(y + i, u);
}

// The attention kernels give each row of n keys one warp (`launch_shapes::warp_per_row`: eight
// rows to a block of 256 threads), lane j holding keys j, j + 32, ...: the row's max and sum are
// warp shuffles, with no block-wide barrier, and a row of up to 32 x ROW_KEYS keys stays in
// registers between its passes, so each score is read, exponentiated and drawn for dropout once.
// Longer rows are read again in each pass. `row` is past the last row for a whole warp at once.
#define ROW_KEYS 16


// Attention probabilities from the raw scores of `rows` rows of n keys, ordered (batch, head,
// query), rows_per_batch to a sequence: softmax over scores * scale + key_mask[batch, key]
// (additive: 0, or a large negative for padding), into probs; and inverted dropout of them at p
// (`dropout`'s mask over the flat index) into kept, which the context product reads; at p = 0
// kept is not written (the context product reads probs). One pass over the scores where scale,
// mask, softmax and dropout were four. The exponentials are the card's fast ones (`__expf`, its
// approximate ex2 of x log2 e: a few units in the last place from expf, where a probability is
// rounded to bf16's 8 bits, as in PyTorch's fused attention), since these kernels are bound by
// instructions rather than memory. T is float or bf16 bits.
template <typename T>
__device__ void attention_probs_rows(const T *scores, const float *key_mask, T *probs, T *kept,
                                     int rows, int n, int rows_per_batch, float scale, float p,
                                     unsigned long long seed) {
  const unsigned int row = warp_row();
  if (row >= (unsigned int)rows) return;
  const int lane = threadIdx.x & 31;
  const size_t off = (size_t)row * n;
  const float *mask = key_mask + (size_t)(row / (unsigned int)rows_per_batch) * n;
  const Dropout d = dropout_at(p, seed);
  if (n <= 32 * ROW_KEYS) {
    float v[ROW_KEYS];
    float m = NEG_INF;
    UNROLL for (int k = 0; k < ROW_KEYS; k++) {
      const int j = lane + 32 * k;
      v[k] = j < n ? load(scores, off + j) * scale + mask[j] : NEG_INF;
      m = fmaxf(m, v[k]);
    }
    m = warp_max(m);
    float s = 0.0f;
    UNROLL for (int k = 0; k < ROW_KEYS; k++) {
      v[k] = lane + 32 * k < n ? __expf(v[k] - m) : 0.0f;
      s += v[k];
    }
    const float inv = 1.0f / warp_sum(s);
    UNROLL for (int k = 0; k < ROW_KEYS; k++) {
      const int j = lane + 32 * k;
      if (j < n) {
        const float y = v[k] * inv;
        store(probs, off + j, y);
        if (p > 0.0f) store(kept, off + j, dropped(y, d, off + j));
      }
    }
    return;
  }
  float m = NEG_INF;
  for (int j = lane; j < n; j += 32) m = fmaxf(m, load(scores, off + j) * scale + mask[j]);
  m = warp_max(m);
  float s = 0.0f;
  for (int j = lane; j < n; j += 32) s += __expf(load(scores, off + j) * scale + mask[j] - m);
  const float inv = 1.0f / warp_sum(s);
  for (int j = lane; j < n; j += 32) {
    const float y = __expf(load(scores, off + j) * scale + mask[j] - m) * inv;
    store(probs, off + j, y);
    if (p > 0.0f) store(kept, off + j, dropped(y, d, off + j));
  }
}

extern "C" __global__ void attention_probs_f32(const float *scores, const float *key_mask,
                                               float *probs, float *kept, int rows, int n,
                                               int rows_per_batch, float scale, float p,
                                               unsigned long long seed) {
  attention_probs_rows(scores, key_mask, probs, kept, rows, n, rows_per_batch, scale, p, seed);
}

extern "C" __global__ void attention_probs_bf16(const bf16_bits *scores, const float *key_mask,
                                                bf16_bits *probs, bf16_bits *kept, int rows,
                                                int n, int rows_per_batch, float scale, float p,
                                                unsigned long long seed) {
  attention_probs_rows(scores, key_mask, probs, kept, rows, n, rows_per_batch, scale, p, seed);
}

// The scores' gradient from the probabilities and the gradient of the dropped probabilities:
// dropout's backward pass, softmax's (y (g - sum(g y))), and the scale, in one pass over `rows`
// rows of n, a warp to a row as in attention_probs_rows. Dropout's mask is read from `kept`, the
// forward pass's dropped-out copy, rather than drawn again: an element is kept where that copy is
// not 0 (y / (1 - p) is not 0 where y is not), and where y is 0 the gradient is multiplied by 0
// whatever the mask, so this is the drawn mask's result exactly, for a 2-byte read in place of a
// 64-bit hash per element. At p = 0, kept is not read.
__device__ __forceinline__ float kept_grad(float g, float kept_value, float p, float scale) {
  if (p <= 0.0f) return g;
  return kept_value != 0.0f ? g * scale : 0.0f;
}

template <typename T>
__device__ void attention_probs_grad_rows(const T *probs, const T *kept, const T *grad,
                                          T *dscores, int rows, int n, float scale, float p) {
  const unsigned int row = warp_row();
  if (row >= (unsigned int)rows) return;
  const int lane = threadIdx.x & 31;
  const size_t off = (size_t)row * n;
  // The kept copy's value at j, read only when there is dropout.
  auto kept_at = [&](size_t j) { return p > 0.0f ? load(kept, j) : 1.0f; };
  const float ks = keep_scale(p);
  if (n <= 32 * ROW_KEYS) {
    float y[ROW_KEYS], g[ROW_KEYS];
    float s = 0.0f;
    UNROLL for (int k = 0; k < ROW_KEYS; k++) {
      const int j = lane + 32 * k;
      y[k] = j < n ? load(probs, off + j) : 0.0f;
      g[k] = j < n ? kept_grad(load(grad, off + j), kept_at(off + j), p, ks) : 0.0f;
      s += g[k] * y[k];
    }
    s = warp_sum(s);
    UNROLL for (int k = 0; k < ROW_KEYS; k++) {
      const int j = lane + 32 * k;
      if (j < n) store(dscores, off + j, scale * y[k] * (g[k] - s));
    }
    return;
  }
  float s = 0.0f;
  for (int j = lane; j < n; j += 32)
    s += kept_grad(load(grad, off + j), kept_at(off + j), p, ks) * load(probs, off + j);
  s = warp_sum(s);
  for (int j = lane; j < n; j += 32) {
    const float g = kept_grad(load(grad, off + j), kept_at(off + j), p, ks);
    store(dscores, off + j, scale * load(probs, off + j) * (g - s));
  }
}

extern "C" __global__ void attention_probs_grad_f32(const float *probs, const float *kept,
                                                    const float *grad, float *dscores, int rows,
                                                    int n, float scale, float p) {
  attention_probs_grad_rows(probs, kept, grad, dscores, rows, n, scale, p);
}

extern "C" __global__ void attention_probs_grad_bf16(const bf16_bits *probs,
                                                     const bf16_bits *kept,
                                                     const bf16_bits *grad, bf16_bits *dscores,
                                                     int rows, int n, float scale, float p) {
  attention_probs_grad_rows(probs, kept, grad, dscores, rows, n, scale, p);
}

// Flash attention in bf16 on tensor cores: the scores, probabilities and their gradients never
// leave the chip, where the attached attention (attention_probs_* between four cuBLAS products)
// writes and reads the (batch, heads, len, len) scores and probabilities in memory. Each warp
// multiplies 16 x 16 by 16 x 8 tiles with PTX's `mma.m16n8k16` (bf16 in, f32 accumulators). The
// fragment layouts are PTX's: in a warp, lane = 4 g + t holds A (16 x 16, row-major) rows g and
// g + 8 at columns 2t, 2t + 1 and 2t + 8, 2t + 9; B (16 x 8) column g at rows 2t, 2t + 1 and
// 2t + 8, 2t + 9; C (16 x 8) rows g and g + 8 at columns 2t and 2t + 1. A pair of bf16 shares a
// 32-bit register, the lower column or row in the low half.
//
// q, k and v are (batch, heads, len, head_dim); the context and its gradient are (batch, len,
// heads x head_dim), as the output dense layer reads and writes them. head_dim is a multiple of
// 16 up to FLASH_DMAX and every buffer starts 16-byte aligned (`flash_attention.rs` checks). The
// dropout mask is `dropped`'s over the flat index of (batch, heads, query, key), the one that
// attention_probs_* draw, so the two paths drop the same probabilities. The exponentials are
// `__expf`, as in attention_probs_*, and dropout's scale a multiply by `keep_scale`.
//
// Three kernels, each a block of FLASH_WARPS warps over (a tile of rows, batch x head):
// - flash_attention_fwd_bf16: 16 queries a warp; over key tiles of FLASH_KEYS, the scores, an
//   online softmax (running max and sum, the context rescaled as the max grows), dropout, and
//   the context's product. Writes the context and each query's log-sum-exp.
// - flash_attention_dq_bf16: 16 queries a warp; each query's delta = sum(dcontext x context)
//   (softmax's backward term), then over key tiles the probabilities again from the
//   log-sum-exp, dP = dcontext v^T, dS, and dq += dS k.
// - flash_attention_dkv_bf16: 16 keys a warp; over query tiles of FLASH_QUERIES, the same
//   recomputed transposed (keys as rows), dv += dropped(P)^T dcontext and dk += dS^T q.
// Two backward kernels rather than one with atomic adds into dq keep the gradients
// deterministic. With dropout, flash_dropout_mask draws the mask first, a bit per probability
// (4 MB a layer at 84 x 6 heads x 256^2), and all three read it rather than each drawing it: one
// hash per probability where there were three, and none in the kernels' registers. Shared tiles'
// rows are padded by FLASH_PAD elements (16 bytes), so that a warp's 32-bit fragment loads fall
// in 32 different banks.
#define FLASH_WARPS 4
#define FLASH_KEYS 64
#define FLASH_QUERIES 32
#define FLASH_DMAX 128
#define FLASH_PAD 8
#define FLASH_STRIDE (FLASH_DMAX + FLASH_PAD)
// The dk and dv kernel's block of keys is one tile of the kept mask's words.
static_assert(FLASH_KEYS == 16 * FLASH_WARPS, "a block of keys is one tile of mask words");

// Tiles of FLASH_KEYS keys in a row of len.
__device__ __forceinline__ int key_tiles(int len) { return (len + FLASH_KEYS - 1) / FLASH_KEYS; }

// Dropout's mask in the forward pass's packed result, after the log-sum-exps at the next multiple
// of four bf16 words (`Dims::keep_offset`): four 16-bit words per query row (of all `bhs`
// sequences x heads) and tile of keys, in the order the forward and dq kernels' lanes hold them:
// word t has bit 2 n + e set where key 8 n + 2 t + e of the tile (n < 8, e < 2) is kept, so that
// each lane reads one word.
__device__ __forceinline__ bf16_bits *keep_words(const bf16_bits *packed, size_t bhs, int len,
                                                 int head_dim) {
  const size_t rows = bhs * len;
  return (bf16_bits *)packed + ((rows * head_dim + 2 * rows + 3) & ~(size_t)3);
}

// Where query `row`'s mask words over tile `tile` of keys are.
__device__ __forceinline__ size_t keep_at(size_t bh, int row, int tile, int len) {
  return (((size_t)bh * len + row) * key_tiles(len) + tile) * 4;
}

// Query `row`'s four mask words over tile `tile` of keys as one, word t in bits 16 t ..: every
// key kept without dropout.
__device__ __forceinline__ unsigned long long keep_row(const bf16_bits *keeps, size_t bh, int row,
                                                       int tile, int len, float p) {
  if (p <= 0.0f || row >= len) return ~0ull;
  return *(const unsigned long long *)(keeps + keep_at(bh, row, tile, len));
}

// Lane t's mask word of query `row` over tile `tile` of keys: every key kept without dropout.
__device__ __forceinline__ unsigned int keep_part(const bf16_bits *keeps, size_t bh, int row,
                                                  int tile, int t, int len, float p) {
  if (p <= 0.0f || row >= len) return 0xffffu;
  return keeps[keep_at(bh, row, tile, len) + t];
}

// Where key j (< FLASH_KEYS) of a tile is in keep_row's 64 bits.
__device__ __forceinline__ int keep_bit(int j) {
  return 16 * ((j & 7) >> 1) + 2 * (j >> 3) + (j & 1);
}

// Dropout's mask at p for flash attention over `bhs` sequences x heads of len queries and keys,
// into the packed result `out` of the forward kernel that runs next: `dropped`'s draw over the
// flat (batch, head, query, key) index, one thread per mask word (16 keys); keys past the last
// are not kept. Launched as a thread per word (`launch_shapes::elementwise`).
extern "C" __global__ void flash_dropout_mask(bf16_bits *out, int bhs, int len, int head_dim,
                                              float p, unsigned long long seed) {
  const int tiles = key_tiles(len);
  const size_t word = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (word >= (size_t)bhs * len * tiles * 4) return;
  const int t = word & 3, tile = (word >> 2) % tiles;
  const size_t row = (word >> 2) / tiles;
  unsigned int bits = 0u;
  UNROLL for (int n = 0; n < 8; n++) {
    UNROLL for (int e = 0; e < 2; e++) {
      const int key = FLASH_KEYS * tile + 8 * n + 2 * t + e;
      if (key < len && kept(p, seed, row * len + key)) bits |= 1u << (2 * n + e);
    }
  }
  keep_words(out, bhs, len, head_dim)[word] = (bf16_bits)bits;
}

__device__ __forceinline__ float pair_lo(unsigned int u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float pair_hi(unsigned int u) { return __uint_as_float(u & 0xffff0000u); }

// c (16 x 8, f32) += a (16 x 16, bf16) b (16 x 8, bf16), by the whole warp. The emulator has no
// tensor cores: there every lane gathers its rows of a and columns of b by shuffles.
__device__ __forceinline__ void mma_bf16(float *c, const unsigned int *a, const unsigned int *b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  // Before sm_80 there is no bf16 mma; `flash_attention.rs` launches none there.
  __trap();
#else
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  UNROLL for (int s = 0; s < 4; s++) {
    // Lane 4 g + s holds rows g and g + 8 at columns 2s, 2s + 1 and 2s + 8, 2s + 9.
    const unsigned int row_lo = __shfl_sync(FULL_MASK, a[0], 4 * g + s);
    const unsigned int row8_lo = __shfl_sync(FULL_MASK, a[1], 4 * g + s);
    const unsigned int row_hi = __shfl_sync(FULL_MASK, a[2], 4 * g + s);
    const unsigned int row8_hi = __shfl_sync(FULL_MASK, a[3], 4 * g + s);
    UNROLL for (int n = 0; n < 2; n++) {
      // Lane 4 (2t + n) + s holds column 2t + n at rows 2s, 2s + 1 and 2s + 8, 2s + 9.
      const unsigned int col_lo = __shfl_sync(FULL_MASK, b[0], 4 * (2 * t + n) + s);
      const unsigned int col_hi = __shfl_sync(FULL_MASK, b[1], 4 * (2 * t + n) + s);
      c[n] += pair_lo(row_lo) * pair_lo(col_lo) + pair_hi(row_lo) * pair_hi(col_lo) +
              pair_lo(row_hi) * pair_lo(col_hi) + pair_hi(row_hi) * pair_hi(col_hi);
      c[2 + n] += pair_lo(row8_lo) * pair_lo(col_lo) + pair_hi(row8_lo) * pair_hi(col_lo) +
                  pair_lo(row8_hi) * pair_lo(col_hi) + pair_hi(row8_hi) * pair_hi(col_hi);
    }
  }
#endif
}

// The A fragments of a warp's 16 rows of x from row `row0` (rows of `stride` elements; rows at or
// past `rows` read as 0), column blocks of 16 up to `dim`.
__device__ __forceinline__ void rows_as_a(const bf16_bits *x, int row0, int rows, int stride,
                                          int dim, unsigned int a[FLASH_DMAX / 16][4]) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = row0 + g, r1 = row0 + g + 8;
  UNROLL for (int kk = 0; kk < FLASH_DMAX / 16; kk++) {
    if (16 * kk >= dim) break;
    const int c = 16 * kk + 2 * t;
    a[kk][0] = r0 < rows ? load_pair(x + (size_t)r0 * stride + c) : 0u;
    a[kk][1] = r1 < rows ? load_pair(x + (size_t)r1 * stride + c) : 0u;
    a[kk][2] = r0 < rows ? load_pair(x + (size_t)r0 * stride + c + 8) : 0u;
    a[kk][3] = r1 < rows ? load_pair(x + (size_t)r1 * stride + c + 8) : 0u;
  }
}

// Rows [row0, row0 + count) of x (rows of `stride` elements, `dim` of them wanted) into the
// shared tile `tile` (rows of FLASH_STRIDE), 16 bytes a thread at a time; rows at or past `rows`
// as 0.
__device__ __forceinline__ void tile_in(bf16_bits (*tile)[FLASH_STRIDE], const bf16_bits *x,
                                        int row0, int count, int rows, int stride, int dim) {
  const int groups = dim / 8;
  for (int i = threadIdx.x; i < count * groups; i += blockDim.x) {
    const int r = i / groups, c = (i % groups) * 8;
    uint4 v = {0u, 0u, 0u, 0u};
    if (row0 + r < rows) v = load16(x + (size_t)(row0 + r) * stride + c);
    store16(&tile[r][c], v);
  }
}

// Four 8 x 8 bf16 matrices from shared memory, by the whole warp (PTX's `ldmatrix .x4`): lane
// 8 m + r gives the address of row r of matrix m (16 bytes, 16-byte aligned), and lane 4 g + t
// receives row g's elements 2t and 2t + 1 of matrix m in x[m]; with `.trans` (ldmatrix4_t) the
// matrix's column g at rows 2t and 2t + 1 instead. The emulator gathers the rows by shuffles.
#if !defined(__CUDA_ARCH__) && !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
// The emulator's lane reads its own row as it arrives, before any shuffle waits for the warp: a
// row that another lane of the warp writes without a barrier first is then read before or after
// the write depending on the schedule, and the emulator's race check sees the difference (where
// a card gives no order without __syncwarp). Elements 0-3 in lo, 4-7 in hi, the first lowest.
inline void emulated_row(const bf16_bits *row, unsigned long long &lo, unsigned long long &hi) {
  const uint4 v = load16(row);
  lo = v.x | ((unsigned long long)v.y << 32);
  hi = v.z | ((unsigned long long)v.w << 32);
}
#endif
#if defined(__CUDA_ARCH__)
// A generic address of shared memory as the 32-bit address that `ldmatrix` takes.
__device__ __forceinline__ unsigned int shared_address(const void *p) {
  unsigned int at;
  asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(at) : "l"(p));
  return at;
}
#endif

__device__ __forceinline__ void ldmatrix4(unsigned int *x, const bf16_bits *row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned int at = shared_address(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(at));
#elif defined(__CUDA_ARCH__)
  // Only flash attention loads so; `flash_attention.rs` launches none before sm_80.
  __trap();
#else
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned long long lo, hi;
  emulated_row(row, lo, hi);
  UNROLL for (int m = 0; m < 4; m++) {
    const unsigned long long a = __shfl_sync(FULL_MASK, lo, 8 * m + g);
    const unsigned long long b = __shfl_sync(FULL_MASK, hi, 8 * m + g);
    x[m] = (unsigned int)((t < 2 ? a : b) >> (32 * (t & 1)));
  }
#endif
}

__device__ __forceinline__ void ldmatrix4_t(unsigned int *x, const bf16_bits *row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned int at = shared_address(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(at));
#elif defined(__CUDA_ARCH__)
  // Only flash attention loads so; `flash_attention.rs` launches none before sm_80.
  __trap();
#else
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  unsigned long long lo, hi;
  emulated_row(row, lo, hi);
  UNROLL for (int m = 0; m < 4; m++) {
    const unsigned long long a0 = __shfl_sync(FULL_MASK, lo, 8 * m + 2 * t);
    const unsigned long long b0 = __shfl_sync(FULL_MASK, hi, 8 * m + 2 * t);
    const unsigned long long a1 = __shfl_sync(FULL_MASK, lo, 8 * m + 2 * t + 1);
    const unsigned long long b1 = __shfl_sync(FULL_MASK, hi, 8 * m + 2 * t + 1);
    const int at = 16 * (g & 3);
    x[m] = (unsigned int)(((g < 4 ? a0 : b0) >> at) & 0xffffu) |
           ((unsigned int)(((g < 4 ? a1 : b1) >> at) & 0xffffu) << 16);
  }
#endif
}

// The A fragment of rows row0 .. row0 + 15 at columns 16 kk of a row-major shared tile.
__device__ __forceinline__ void tile_as_a(const bf16_bits (*tile)[FLASH_STRIDE], int row0, int kk,
                                          unsigned int a[4]) {
  const int lane = threadIdx.x & 31, m = lane >> 3, r = lane & 7;
  ldmatrix4(a, &tile[row0 + 8 * (m & 1) + r][16 * kk + 8 * (m >> 1)]);
}

// The B fragments of rows n0 .. n0 + 7 (b[0]) and n0 + 8 .. n0 + 15 (b[1]) at columns 16 kk of a
// row-major shared tile: the product's second operand transposed (scores = q k^T reads k's rows
// so).
__device__ __forceinline__ void rows_as_b(const bf16_bits (*tile)[FLASH_STRIDE], int n0, int kk,
                                          unsigned int b[2][2]) {
  const int lane = threadIdx.x & 31, m = lane >> 3, r = lane & 7;
  unsigned int x[4];
  ldmatrix4(x, &tile[n0 + 8 * (m >> 1) + r][16 * kk + 8 * (m & 1)]);
  b[0][0] = x[0], b[0][1] = x[1], b[1][0] = x[2], b[1][1] = x[3];
}

// The B fragments of rows k0 .. k0 + 15 at columns n0 .. n0 + 7 (b[0]) and n0 + 8 .. n0 + 15
// (b[1]) of a row-major shared tile: the product's second operand as it is (context = P v reads
// v so).
__device__ __forceinline__ void columns_as_b(const bf16_bits (*tile)[FLASH_STRIDE], int k0, int n0,
                                             unsigned int b[2][2]) {
  const int lane = threadIdx.x & 31, m = lane >> 3, r = lane & 7;
  unsigned int x[4];
  ldmatrix4_t(x, &tile[k0 + 8 * (m & 1) + r][n0 + 8 * (m >> 1)]);
  b[0][0] = x[0], b[0][1] = x[1], b[1][0] = x[2], b[1][1] = x[3];
}

// The sum of v over the four lanes of a quad (the lanes that share a fragment row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(FULL_MASK, v, 1);
  return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
  return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}

// Query `row`'s log-sum-exp, stored by the forward kernel after the context as its f32 bits in
// two bf16 words: +inf past the last query (every probability recomputed from it is then 0).
__device__ __forceinline__ float lse_at(const bf16_bits *tail, size_t bh_row, int row, int len) {
  if (row >= len) return __int_as_float(0x7f800000);
  return __uint_as_float((unsigned int)tail[2 * bh_row] | ((unsigned int)tail[2 * bh_row + 1] << 16));
}

// The tensor cores' conventions that flash attention builds on, alone, for a card's tests to
// check before the attention kernels (`gpu_tensor_core_fragments_follow_ptx_layouts`): one warp
// multiplies a (16 x 16, row-major) by b (16 x 16, row-major [k][n]) three ways, each into c
// (3 x 16 x 16, f32, row-major): its fragments read from global memory in PTX's documented
// layouts; through shared memory with ldmatrix (a) and ldmatrix.trans (b); and with b given
// transposed (bt, [n][k]) through plain ldmatrix. Launched as one block of 32 threads.
extern "C" __global__ void mma_fragments_probe(const bf16_bits *a, const bf16_bits *b,
                                               const bf16_bits *bt, float *c) {
  __shared__ __align__(16) bf16_bits as[16][FLASH_STRIDE];
  __shared__ __align__(16) bf16_bits bs[16][FLASH_STRIDE];
  __shared__ __align__(16) bf16_bits bts[16][FLASH_STRIDE];
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  for (int i = lane; i < 16 * 16; i += 32) {
    as[i / 16][i % 16] = a[i];
    bs[i / 16][i % 16] = b[i];
    bts[i / 16][i % 16] = bt[i];
  }
  __syncthreads();
  unsigned int fa[4], fb[2][2];
  float acc[3][2][4] = {};
  // 1. PTX's layouts, read element by element.
  fa[0] = (unsigned int)a[16 * g + 2 * t] | ((unsigned int)a[16 * g + 2 * t + 1] << 16);
  fa[1] = (unsigned int)a[16 * (g + 8) + 2 * t] | ((unsigned int)a[16 * (g + 8) + 2 * t + 1] << 16);
  fa[2] = (unsigned int)a[16 * g + 2 * t + 8] | ((unsigned int)a[16 * g + 2 * t + 9] << 16);
  fa[3] = (unsigned int)a[16 * (g + 8) + 2 * t + 8] | ((unsigned int)a[16 * (g + 8) + 2 * t + 9] << 16);
  UNROLL for (int n = 0; n < 2; n++) {
    const int col = 8 * n + g;
    fb[n][0] = (unsigned int)b[16 * (2 * t) + col] | ((unsigned int)b[16 * (2 * t + 1) + col] << 16);
    fb[n][1] = (unsigned int)b[16 * (2 * t + 8) + col] | ((unsigned int)b[16 * (2 * t + 9) + col] << 16);
    mma_bf16(acc[0][n], fa, fb[n]);
  }
  // 2. ldmatrix for a, ldmatrix.trans for b.
  tile_as_a(as, 0, 0, fa);
  columns_as_b(bs, 0, 0, fb);
  UNROLL for (int n = 0; n < 2; n++) mma_bf16(acc[1][n], fa, fb[n]);
  // 3. b transposed, through plain ldmatrix.
  rows_as_b(bts, 0, 0, fb);
  UNROLL for (int n = 0; n < 2; n++) mma_bf16(acc[2][n], fa, fb[n]);
  UNROLL for (int w = 0; w < 3; w++) {
    UNROLL for (int n = 0; n < 2; n++) {
      float *cw = c + 256 * w + 8 * n + 2 * t;
      cw[16 * g] = acc[w][n][0], cw[16 * g + 1] = acc[w][n][1];
      cw[16 * (g + 8)] = acc[w][n][2], cw[16 * (g + 8) + 1] = acc[w][n][3];
    }
  }
}

extern "C" __global__ void flash_attention_fwd_bf16(const bf16_bits *q, const bf16_bits *k,
                                                    const bf16_bits *v, const float *key_mask,
                                                    bf16_bits *out, int heads, int len,
                                                    int head_dim, float scale, float p) {
  __shared__ __align__(16) bf16_bits ks[FLASH_KEYS][FLASH_STRIDE];
  __shared__ __align__(16) bf16_bits vs[FLASH_KEYS][FLASH_STRIDE];
  __shared__ float ms[FLASH_KEYS];
  const int bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int q0 = blockIdx.x * (16 * FLASH_WARPS) + 16 * (threadIdx.x >> 5);
  const int r0 = q0 + g, r1 = q0 + g + 8;
  const size_t head = (size_t)bh * len * head_dim;
  unsigned int qa[FLASH_DMAX / 16][4];
  rows_as_a(q + head, q0, len, head_dim, head_dim, qa);
  float o[FLASH_DMAX / 8][4];
  UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  // Rows g and g + 8: the running max (the shift of the exponentials) and this lane's share of
  // the sum of exponentials.
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
  const float kscale = keep_scale(p);
  for (int k0 = 0; k0 < len; k0 += FLASH_KEYS) {
    __syncthreads();
    tile_in(ks, k + head, k0, FLASH_KEYS, len, head_dim, head_dim);
    tile_in(vs, v + head, k0, FLASH_KEYS, len, head_dim, head_dim);
    for (int j = threadIdx.x; j < FLASH_KEYS; j += blockDim.x)
      ms[j] = k0 + j < len ? key_mask[(size_t)b * len + k0 + j] : NEG_INF;
    __syncthreads();
    float s[FLASH_KEYS / 8][4];
    float x0 = m0, x1 = m1;
    UNROLL for (int nt = 0; nt < FLASH_KEYS / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    UNROLL for (int np = 0; np < FLASH_KEYS / 16; np++) {
      UNROLL for (int kk = 0; kk < FLASH_DMAX / 16; kk++) {
        if (16 * kk >= head_dim) break;
        unsigned int kb[2][2];
        rows_as_b(ks, 16 * np, kk, kb);
        mma_bf16(s[2 * np], qa[kk], kb[0]);
        mma_bf16(s[2 * np + 1], qa[kk], kb[1]);
      }
    }
    UNROLL for (int nt = 0; nt < FLASH_KEYS / 8; nt++) {
      UNROLL for (int e = 0; e < 4; e++) {
        s[nt][e] = s[nt][e] * scale + ms[8 * nt + 2 * t + (e & 1)];
        if (e < 2) x0 = fmaxf(x0, s[nt][e]);
        else x1 = fmaxf(x1, s[nt][e]);
      }
    }
    x0 = quad_max(x0), x1 = quad_max(x1);
    // While every key so far is masked out (-inf) the shift is 0 and every exponential 0.
    const float sh0 = x0 == NEG_INF ? 0.0f : x0, sh1 = x1 == NEG_INF ? 0.0f : x1;
    const float a0 = __expf(m0 - sh0), a1 = __expf(m1 - sh1);
    m0 = x0, m1 = x1;
    l0 *= a0, l1 *= a1;
    UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) {
      o[dt][0] *= a0, o[dt][1] *= a0, o[dt][2] *= a1, o[dt][3] *= a1;
    }
    // Rows g and g + 8: this lane's words of dropout's mask over this tile.
    const bf16_bits *keeps = keep_words(out, gridDim.y, len, head_dim);
    const unsigned int kw0 = keep_part(keeps, bh, r0, k0 / FLASH_KEYS, t, len, p);
    const unsigned int kw1 = keep_part(keeps, bh, r1, k0 / FLASH_KEYS, t, len, p);
    UNROLL for (int kb = 0; kb < FLASH_KEYS / 16; kb++) {
      unsigned int pa[4];
      UNROLL for (int half = 0; half < 2; half++) {
        const int nt = 2 * kb + half;
        const float e0 = __expf(s[nt][0] - sh0), e1 = __expf(s[nt][1] - sh0);
        const float e2 = __expf(s[nt][2] - sh1), e3 = __expf(s[nt][3] - sh1);
        l0 += e0 + e1, l1 += e2 + e3;
        const bool c0 = (kw0 >> (2 * nt)) & 1u, c1 = (kw0 >> (2 * nt + 1)) & 1u;
        const bool c2 = (kw1 >> (2 * nt)) & 1u, c3 = (kw1 >> (2 * nt + 1)) & 1u;
        pa[2 * half] = bf16_pair(c0 ? e0 * kscale : 0.0f, c1 ? e1 * kscale : 0.0f);
        pa[2 * half + 1] = bf16_pair(c2 ? e2 * kscale : 0.0f, c3 ? e3 * kscale : 0.0f);
      }
      UNROLL for (int dp = 0; dp < FLASH_DMAX / 16; dp++) {
        if (16 * dp >= head_dim) break;
        unsigned int vb[2][2];
        columns_as_b(vs, 16 * kb, 16 * dp, vb);
        mma_bf16(o[2 * dp], pa, vb[0]);
        mma_bf16(o[2 * dp + 1], pa, vb[1]);
      }
    }
  }
  l0 = quad_sum(l0), l1 = quad_sum(l1);
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  const int hidden = heads * head_dim;
  const size_t base0 = ((size_t)b * len + r0) * hidden + h * head_dim + 2 * t;
  const size_t base1 = ((size_t)b * len + r1) * hidden + h * head_dim + 2 * t;
  UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) {
    if (8 * dt >= head_dim) break;
    if (r0 < len) store_pair(out + base0 + 8 * dt, bf16_pair(o[dt][0] * inv0, o[dt][1] * inv0));
    if (r1 < len) store_pair(out + base1 + 8 * dt, bf16_pair(o[dt][2] * inv1, o[dt][3] * inv1));
  }
  if (t == 0) {
    bf16_bits *tail = out + (size_t)gridDim.y * len * head_dim;
    const int rows[2] = {r0, r1};
    const float shifts[2] = {m0 == NEG_INF ? 0.0f : m0, m1 == NEG_INF ? 0.0f : m1};
    const float sums[2] = {l0, l1};
    UNROLL for (int i = 0; i < 2; i++) {
      if (rows[i] >= len) continue;
      // No key at all: +inf, so that the backward pass recomputes probabilities of 0.
      const float lse = sums[i] > 0.0f ? shifts[i] + logf(sums[i]) : __int_as_float(0x7f800000);
      const unsigned int u = __float_as_uint(lse);
      const size_t at = (size_t)bh * len + rows[i];
      tail[2 * at] = (bf16_bits)(u & 0xffffu);
      tail[2 * at + 1] = (bf16_bits)(u >> 16);
    }
  }
}

extern "C" __global__ void flash_attention_dq_bf16(const bf16_bits *q, const bf16_bits *k,
                                                   const bf16_bits *v, const bf16_bits *fwd,
                                                   const bf16_bits *dout, const float *key_mask,
                                                   float *delta, bf16_bits *grads, int heads,
                                                   int len, int head_dim, float scale,
                                                   float p) {
  __shared__ __align__(16) bf16_bits ks[FLASH_KEYS][FLASH_STRIDE];
  __shared__ __align__(16) bf16_bits vs[FLASH_KEYS][FLASH_STRIDE];
  __shared__ float ms[FLASH_KEYS];
  const int bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int q0 = blockIdx.x * (16 * FLASH_WARPS) + 16 * (threadIdx.x >> 5);
  const int r0 = q0 + g, r1 = q0 + g + 8;
  const int hidden = heads * head_dim;
  const size_t head = (size_t)bh * len * head_dim;
  // The context's rows of this head in (batch, len, hidden): rows of `hidden` from its first.
  const size_t context = (size_t)b * len * hidden + h * head_dim;
  unsigned int qa[FLASH_DMAX / 16][4], ga[FLASH_DMAX / 16][4];
  rows_as_a(q + head, q0, len, head_dim, head_dim, qa);
  rows_as_a(dout + context, q0, len, hidden, head_dim, ga);
  // delta = sum(dcontext x context) over each row, from the same fragment places of both.
  float d0 = 0.0f, d1 = 0.0f;
  {
    unsigned int oa[FLASH_DMAX / 16][4];
    rows_as_a(fwd + context, q0, len, hidden, head_dim, oa);
    UNROLL for (int kk = 0; kk < FLASH_DMAX / 16; kk++) {
      if (16 * kk >= head_dim) break;
      UNROLL for (int i = 0; i < 4; i++) {
        const float s = pair_lo(ga[kk][i]) * pair_lo(oa[kk][i]) + pair_hi(ga[kk][i]) * pair_hi(oa[kk][i]);
        if (i & 1) d1 += s;
        else d0 += s;
      }
    }
  }
  d0 = quad_sum(d0), d1 = quad_sum(d1);
  const bf16_bits *tail = fwd + (size_t)gridDim.y * len * head_dim;
  const float lse0 = lse_at(tail, (size_t)bh * len + r0, r0, len);
  const float lse1 = lse_at(tail, (size_t)bh * len + r1, r1, len);
  if (t == 0 && r0 < len) delta[(size_t)bh * len + r0] = d0;
  if (t == 0 && r1 < len) delta[(size_t)bh * len + r1] = d1;
  float dq[FLASH_DMAX / 8][4];
  UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.0f;
  const bf16_bits *keeps = keep_words(fwd, gridDim.y, len, head_dim);
  const float kscale = keep_scale(p);
  for (int k0 = 0; k0 < len; k0 += FLASH_KEYS) {
    __syncthreads();
    tile_in(ks, k + head, k0, FLASH_KEYS, len, head_dim, head_dim);
    tile_in(vs, v + head, k0, FLASH_KEYS, len, head_dim, head_dim);
    for (int j = threadIdx.x; j < FLASH_KEYS; j += blockDim.x)
      ms[j] = k0 + j < len ? key_mask[(size_t)b * len + k0 + j] : NEG_INF;
    // Rows g and g + 8: this lane's words of the forward pass's mask over this tile (its lanes
    // held the keys that this kernel's lanes hold).
    const unsigned int kw0 = keep_part(keeps, bh, r0, k0 / FLASH_KEYS, t, len, p);
    const unsigned int kw1 = keep_part(keeps, bh, r1, k0 / FLASH_KEYS, t, len, p);
    __syncthreads();
    UNROLL for (int kb = 0; kb < FLASH_KEYS / 16; kb++) {
      // The scores and dP for keys 16 kb .. 16 kb + 15 of the tile (two tiles of 8 keys).
      float s[2][4] = {}, dp[2][4] = {};
      UNROLL for (int kk = 0; kk < FLASH_DMAX / 16; kk++) {
        if (16 * kk >= head_dim) break;
        unsigned int kf[2][2], vf[2][2];
        rows_as_b(ks, 16 * kb, kk, kf);
        rows_as_b(vs, 16 * kb, kk, vf);
        UNROLL for (int half = 0; half < 2; half++) {
          mma_bf16(s[half], qa[kk], kf[half]);
          mma_bf16(dp[half], ga[kk], vf[half]);
        }
      }
      // dS, as an A fragment.
      unsigned int da[4];
      UNROLL for (int half = 0; half < 2; half++) {
        float ds[4];
        UNROLL for (int e = 0; e < 4; e++) {
          const int j = 16 * kb + 8 * half + 2 * t + (e & 1);
          const bool keep = ((e < 2 ? kw0 : kw1) >> (2 * (2 * kb + half) + (e & 1))) & 1u;
          const float y = __expf(s[half][e] * scale + ms[j] - (e < 2 ? lse0 : lse1));
          const float g = keep ? dp[half][e] * kscale : 0.0f;
          ds[e] = scale * y * (g - (e < 2 ? d0 : d1));
        }
        da[2 * half] = bf16_pair(ds[0], ds[1]);
        da[2 * half + 1] = bf16_pair(ds[2], ds[3]);
      }
      UNROLL for (int dp2 = 0; dp2 < FLASH_DMAX / 16; dp2++) {
        if (16 * dp2 >= head_dim) break;
        unsigned int kf[2][2];
        columns_as_b(ks, 16 * kb, 16 * dp2, kf);
        mma_bf16(dq[2 * dp2], da, kf[0]);
        mma_bf16(dq[2 * dp2 + 1], da, kf[1]);
      }
    }
  }
  const size_t base0 = head + (size_t)r0 * head_dim + 2 * t;
  const size_t base1 = head + (size_t)r1 * head_dim + 2 * t;
  UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) {
    if (8 * dt >= head_dim) break;
    if (r0 < len) store_pair(grads + base0 + 8 * dt, bf16_pair(dq[dt][0], dq[dt][1]));
    if (r1 < len) store_pair(grads + base1 + 8 * dt, bf16_pair(dq[dt][2], dq[dt][3]));
  }
}

extern "C" __global__ void flash_attention_dkv_bf16(const bf16_bits *q, const bf16_bits *k,
                                                    const bf16_bits *v, const bf16_bits *fwd,
                                                    const bf16_bits *dout, const float *key_mask,
                                                    const float *delta, bf16_bits *grads,
                                                    int heads, int len, int head_dim,
                                                    float scale, float p) {
  __shared__ __align__(16) bf16_bits vs[16 * FLASH_WARPS][FLASH_STRIDE];
  __shared__ __align__(16) bf16_bits qs[FLASH_QUERIES][FLASH_STRIDE];
  __shared__ __align__(16) bf16_bits gs[FLASH_QUERIES][FLASH_STRIDE];
  __shared__ float lses[FLASH_QUERIES], deltas[FLASH_QUERIES];
  __shared__ unsigned long long keeps_s[FLASH_QUERIES];
  const int bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int kblock = blockIdx.x * (16 * FLASH_WARPS), kw = kblock + 16 * warp;
  const int c0 = kw + g, c1 = kw + g + 8;
  const int hidden = heads * head_dim;
  const size_t head = (size_t)bh * len * head_dim;
  const size_t context = (size_t)b * len * hidden + h * head_dim;
  const size_t n = (size_t)gridDim.y * len * head_dim;
  const bf16_bits *tail = fwd + n;
  const bf16_bits *keeps = keep_words(fwd, gridDim.y, len, head_dim);
  unsigned int ka[FLASH_DMAX / 16][4];
  rows_as_a(k + head, kw, len, head_dim, head_dim, ka);
  tile_in(vs, v + head, kblock, 16 * FLASH_WARPS, len, head_dim, head_dim);
  // The keys' mask (rows g and g + 8 of the warp's 16); -inf past the last key.
  const float mk0 = c0 < len ? key_mask[(size_t)b * len + c0] : NEG_INF;
  const float mk1 = c1 < len ? key_mask[(size_t)b * len + c1] : NEG_INF;
  float dk[FLASH_DMAX / 8][4], dv[FLASH_DMAX / 8][4];
  UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) {
    dk[dt][0] = dk[dt][1] = dk[dt][2] = dk[dt][3] = 0.0f;
    dv[dt][0] = dv[dt][1] = dv[dt][2] = dv[dt][3] = 0.0f;
  }
  const float kscale = keep_scale(p);
  for (int j0 = 0; j0 < len; j0 += FLASH_QUERIES) {
    __syncthreads();
    tile_in(qs, q + head, j0, FLASH_QUERIES, len, head_dim, head_dim);
    tile_in(gs, dout + context, j0, FLASH_QUERIES, len, hidden, head_dim);
    for (int j = threadIdx.x; j < FLASH_QUERIES; j += blockDim.x) {
      const size_t at = (size_t)bh * len + j0 + j;
      lses[j] = lse_at(tail, at, j0 + j, len);
      deltas[j] = j0 + j < len ? delta[at] : 0.0f;
      // The mask over this block's keys, which are tile blockIdx.x.
      keeps_s[j] = keep_row(keeps, bh, j0 + j, blockIdx.x, len, p);
    }
    __syncthreads();
    UNROLL for (int jb = 0; jb < FLASH_QUERIES / 16; jb++) {
      // S^T and dP^T for queries 16 jb .. 16 jb + 15 of the tile (two tiles of 8 queries).
      float s[2][4] = {}, dp[2][4] = {};
      UNROLL for (int kk = 0; kk < FLASH_DMAX / 16; kk++) {
        if (16 * kk >= head_dim) break;
        unsigned int qf[2][2], gf[2][2], va[4];
        rows_as_b(qs, 16 * jb, kk, qf);
        rows_as_b(gs, 16 * jb, kk, gf);
        tile_as_a(vs, 16 * warp, kk, va);
        UNROLL for (int half = 0; half < 2; half++) {
          mma_bf16(s[half], ka[kk], qf[half]);
          mma_bf16(dp[half], va, gf[half]);
        }
      }
      // P^T (dropped out) and dS^T, as A fragments.
      unsigned int pa[4], da[4];
      UNROLL for (int half = 0; half < 2; half++) {
        float y[4], ds[4];
        UNROLL for (int e = 0; e < 4; e++) {
          const int j = 16 * jb + 8 * half + 2 * t + (e & 1);
          const int key = (e < 2 ? c0 : c1) - kblock;
          const float prob = __expf(s[half][e] * scale + (e < 2 ? mk0 : mk1) - lses[j]);
          // The forward pass's mask, on the probability and on its gradient.
          const bool keep = (keeps_s[j] >> keep_bit(key)) & 1ull;
          y[e] = keep ? prob * kscale : 0.0f;
          const float g = keep ? dp[half][e] * kscale : 0.0f;
          ds[e] = scale * prob * (g - deltas[j]);
        }
        pa[2 * half] = bf16_pair(y[0], y[1]);
        pa[2 * half + 1] = bf16_pair(y[2], y[3]);
        da[2 * half] = bf16_pair(ds[0], ds[1]);
        da[2 * half + 1] = bf16_pair(ds[2], ds[3]);
      }
      UNROLL for (int dp2 = 0; dp2 < FLASH_DMAX / 16; dp2++) {
        if (16 * dp2 >= head_dim) break;
        unsigned int gf[2][2], qf[2][2];
        columns_as_b(gs, 16 * jb, 16 * dp2, gf);
        columns_as_b(qs, 16 * jb, 16 * dp2, qf);
        UNROLL for (int half = 0; half < 2; half++) {
          mma_bf16(dv[2 * dp2 + half], pa, gf[half]);
          mma_bf16(dk[2 * dp2 + half], da, qf[half]);
        }
      }
    }
  }
  const size_t base0 = head + (size_t)c0 * head_dim + 2 * t;
  const size_t base1 = head + (size_t)c1 * head_dim + 2 * t;
  UNROLL for (int dt = 0; dt < FLASH_DMAX / 8; dt++) {
    if (8 * dt >= head_dim) break;
    if (c0 < len) {
      store_pair(grads + n + base0 + 8 * dt, bf16_pair(dk[dt][0], dk[dt][1]));
      store_pair(grads + 2 * n + base0 + 8 * dt, bf16_pair(dv[dt][0], dv[dt][1]));
    }
    if (c1 < len) {
      store_pair(grads + n + base1 + 8 * dt, bf16_pair(dk[dt][2], dk[dt][3]));
      store_pair(grads + 2 * n + base1 + 8 * dt, bf16_pair(dv[dt][2], dv[dt][3]));
    }
  }
}

// The attention's query, key and value projections taken as one product, x [Wq; Wk; Wv]^T: rows
// (batch x len) by 3 hidden columns. Launched as one block row per row (blockIdx.x) and groups
// of eight columns (blockIdx.y), so that the index arithmetic is a few 32-bit divisions per
// group rather than 64-bit ones per element. The place of element (row, col) in the heads
// layout (3, batch, heads, len, head_dim) that the score and context products read; where
// head_dim is a multiple of 8, a group's eight columns are adjacent there too.
__device__ __forceinline__ size_t heads_place(unsigned int row, unsigned int col, int len,
                                              int heads, int head_dim, int rows) {
  const unsigned int hidden = (unsigned int)(heads * head_dim);
  const unsigned int which = col / hidden, c = col % hidden;
  const unsigned int b = row / (unsigned int)len, t = row % (unsigned int)len;
  const size_t head =
      ((size_t)which * (rows / len) + b) * heads + c / (unsigned int)head_dim;
  return (head * len + t) * head_dim + c % (unsigned int)head_dim;
}

// q, k and v from their projections' product (T) plus the bias, in T and in the heads layout: one
// pass where three bias passes and three head splits were six.
template <typename T>
__device__ void qkv_heads_at(const T *product, const float *bias, T *heads_out, int len,
                             int heads, int head_dim, int rows) {
  const unsigned int row = blockIdx.x, col = group_column();
  const unsigned int width = 3u * heads * head_dim;
  if (col >= width) return;
  const size_t from = (size_t)row * width + col;
  if (head_dim % 8 != 0 || col + 8 > width) {
    for (unsigned int k = 0; k < 8 && col + k < width; k++)
      store(heads_out, heads_place(row, col + k, len, heads, head_dim, rows),
            load(product, from + k) + bias[col + k]);
    return;
  }
  float v[8];
  load8(product + from, v);
  UNROLL for (int k = 0; k < 8; k++) v[k] += bias[col + k];
  store8(heads_out + heads_place(row, col, len, heads, head_dim, rows), v);
}

extern "C" __global__ void qkv_heads_f32(const float *product, const float *bias,
                                         float *heads_out, int len, int heads, int head_dim,
                                         int rows) {
  qkv_heads_at(product, bias, heads_out, len, heads, head_dim, rows);
}

extern "C" __global__ void qkv_heads_bf16(const bf16_bits *product, const float *bias,
                                          bf16_bits *heads_out, int len, int heads, int head_dim,
                                          int rows) {
  qkv_heads_at(product, bias, heads_out, len, heads, head_dim, rows);
}

// The projections' gradient (rows, 3 hidden) from the gradients of q, k and v in the heads
// layout (each (batch, heads, len, head_dim), in T): qkv_heads' placement undone, one pass where
// three head merges and three casts were six. Launched as qkv_heads is.
template <typename T>
__device__ void qkv_merge_at(const T *dq, const T *dk, const T *dv, T *out, int len, int heads,
                             int head_dim, int rows) {
  const unsigned int row = blockIdx.x, col = group_column();
  const unsigned int hidden = heads * head_dim, width = 3u * hidden;
  if (col >= width) return;
  const size_t per = (size_t)rows * hidden, to = (size_t)row * width + col;
  if (head_dim % 8 != 0 || col + 8 > width) {
    for (unsigned int c = col; c < col + 8 && c < width; c++) {
      const unsigned int which = c / hidden;
      const T *src = which == 0 ? dq : (which == 1 ? dk : dv);
      out[to + (c - col)] = src[heads_place(row, c, len, heads, head_dim, rows) - which * per];
    }
    return;
  }
  const unsigned int which = col / hidden;
  const T *src = which == 0 ? dq : (which == 1 ? dk : dv);
  float v[8];
  load8(src + (heads_place(row, col, len, heads, head_dim, rows) - which * per), v);
  store8(out + to, v);
}

extern "C" __global__ void qkv_merge_f32(const float *dq, const float *dk, const float *dv,
                                         float *out, int len, int heads, int head_dim,
                                         int rows) {
  qkv_merge_at(dq, dk, dv, out, len, heads, head_dim, rows);
}

extern "C" __global__ void qkv_merge_bf16(const bf16_bits *dq, const bf16_bits *dk,
                                          const bf16_bits *dv, bf16_bits *out, int len,
                                          int heads, int head_dim, int rows) {
  qkv_merge_at(dq, dk, dv, out, len, heads, head_dim, rows);
}

// The attention's context out of heads, (batch, heads, len, head_dim) into (batch, len, heads x
// head_dim), and its gradient back into them: where candle's strided copy took one thread per
// element and a division per dimension. Launched as qkv_heads is, over the hidden columns.
template <typename T>
__device__ void heads_layout_at(const T *x, T *y, int len, int heads, int head_dim, int rows,
                                bool to_heads) {
  const unsigned int row = blockIdx.x, col = group_column();
  const unsigned int hidden = heads * head_dim;
  if (col >= hidden) return;
  const size_t flat = (size_t)row * hidden + col;
  if (head_dim % 8 != 0 || col + 8 > hidden) {
    for (unsigned int k = 0; k < 8 && col + k < hidden; k++) {
      const size_t h = heads_place(row, col + k, len, heads, head_dim, rows);
      if (to_heads)
        y[h] = x[flat + k];
      else
        y[flat + k] = x[h];
    }
    return;
  }
  const size_t h = heads_place(row, col, len, heads, head_dim, rows);
  float v[8];
  load8(x + (to_heads ? flat : h), v);
  store8(y + (to_heads ? h : flat), v);
}

extern "C" __global__ void heads_merge_f32(const float *x, float *y, int len, int heads,
                                           int head_dim, int rows) {
  heads_layout_at(x, y, len, heads, head_dim, rows, false);
}

extern "C" __global__ void heads_merge_bf16(const bf16_bits *x, bf16_bits *y, int len, int heads,
                                            int head_dim, int rows) {
  heads_layout_at(x, y, len, heads, head_dim, rows, false);
}

extern "C" __global__ void heads_split_f32(const float *x, float *y, int len, int heads,
                                           int head_dim, int rows) {
  heads_layout_at(x, y, len, heads, head_dim, rows, true);
}

extern "C" __global__ void heads_split_bf16(const bf16_bits *x, bf16_bits *y, int len, int heads,
                                            int head_dim, int rows) {
  heads_layout_at(x, y, len, heads, head_dim, rows, true);
}

// LAMB's update direction for one element: the bias-corrected Adam step plus decoupled weight
// decay (`Lamb::update_on_cpu`'s `direction`).
__device__ __forceinline__ float lamb_direction(float m, float v, float w, float c1, float c2,
                                                float eps, float wd) {
  return (m / c1) / (sqrtf(v / c2) + eps) + wd * w;
}

// LAMB over every parameter tensor at once: each kernel below is one launch for the whole model,
// its blocks taking one chunk of `chunk` elements of one tensor each (four adjacent elements to
// a thread at a time, moved as 16-byte accesses where aligned), the tensors found through a
// table that `lamb_cuda.rs` uploads every step (seven 64-bit words per tensor). Nothing is read
// back to the host: the gradient clipping's scale and each tensor's trust ratio are computed on
// the device, every sum in a fixed order.
struct LambTensor {
  float *w;
  const float *g;
  float *m;
  float *v;
  unsigned long long n;
  unsigned long long first_chunk;  // its first chunk's index among all tensors' chunks
  float decay;                     // weight decay (0 for biases and LayerNorm weights)
  float unused;
};
static_assert(sizeof(LambTensor) == 7 * 8, "lamb_cuda.rs writes seven 64-bit words per tensor");

// The tensor that chunk c belongs to: the last one whose first chunk is at most c.
__device__ int lamb_tensor_of(const LambTensor *t, int count, unsigned long long c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t[mid].first_chunk <= c) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// This block's chunk: its tensor, and the elements [begin, end) of that tensor it covers.
struct LambChunk {
  const LambTensor *t;
  size_t begin, end;
};

__device__ LambChunk lamb_chunk(const LambTensor *table, int count, int chunk) {
  const LambTensor *t = table + lamb_tensor_of(table, count, blockIdx.x);
  const size_t begin = (size_t)(blockIdx.x - t->first_chunk) * chunk;
  const size_t end = begin + chunk < t->n ? begin + chunk : t->n;
  return LambChunk{t, begin, end};
}

// The sum over the block of a double (blockDim.x a power of two, at most 256), in a fixed order.
__device__ double block_sum_double(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  return sh[0];
}

// The squares of the gradients, summed per chunk into partial[blockIdx.x]: the global norm that
// gradient clipping needs.
extern "C" __global__ void lamb_grad_squares(const LambTensor *table, int count, int chunk,
                                             float *partial) {
  __shared__ float sh[32];
  const LambChunk c = lamb_chunk(table, count, chunk);
  const float *g = c.t->g;
  float s = 0.0f;
  for (size_t i = c.begin + 4 * threadIdx.x; i < c.end; i += 4 * blockDim.x) {
    const int count = c.end - i < 4 ? (int)(c.end - i) : 4;
    float gv[4];
    load_up_to4(g, i, count, count == 4 && aligned16(g + i), gv);
    UNROLL for (int k = 0; k < 4; k++) s += gv[k] * gv[k];
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// The gradients' scale, into scale[0]: `base` (averaging accumulated gradients), times
// clip / norm where the norm of the scaled gradients exceeds `clip` (> 0). The norm comes from
// lamb_grad_squares' `chunks` partial sums (none when not clipping). One block.
extern "C" __global__ void lamb_clip_scale(const float *partial, int chunks, float base,
                                           float clip, float *scale) {
  __shared__ double sh[256];
  double s = 0.0;
  for (int i = threadIdx.x; i < chunks; i += blockDim.x) s += partial[i];
  const double norm = sqrt(block_sum_double(s, sh)) * base;
  if (threadIdx.x == 0) scale[0] = clip > 0.0f && norm > clip ? (float)(base * (clip / norm)) : base;
}

// One LAMB step's moments, in place, from the gradients times scale[0]; and each chunk's sums of
// w^2 and of the update direction's squares into partial[2 blockIdx.x] and
// partial[2 blockIdx.x + 1].
extern "C" __global__ void lamb_moments(const LambTensor *table, int count, int chunk,
                                        const float *scale, float b1, float b2, float c1,
                                        float c2, float eps, float *partial) {
  __shared__ float sh[32];
  const LambChunk c = lamb_chunk(table, count, chunk);
  const float k = scale[0], wd = c.t->decay;
  float *m = c.t->m, *v = c.t->v;
  const float *w = c.t->w, *g = c.t->g;
  float wn = 0.0f, un = 0.0f;
  for (size_t i = c.begin + 4 * threadIdx.x; i < c.end; i += 4 * blockDim.x) {
    const int count = c.end - i < 4 ? (int)(c.end - i) : 4;
    const bool whole = count == 4 && aligned16(g + i) && aligned16(m + i) && aligned16(v + i) &&
                       aligned16(w + i);
    float gv[4], mv[4], vv[4], wv[4];
    load_up_to4(g, i, count, whole, gv);
    load_up_to4(m, i, count, whole, mv);
    load_up_to4(v, i, count, whole, vv);
    load_up_to4(w, i, count, whole, wv);
    UNROLL for (int e = 0; e < 4; e++) {
      if (e >= count) break;
      const float gi = gv[e] * k;
      mv[e] = mv[e] * b1 + gi * (1.0f - b1);
      vv[e] = vv[e] * b2 + gi * gi * (1.0f - b2);
      const float u = lamb_direction(mv[e], vv[e], wv[e], c1, c2, eps, wd);
      wn += wv[e] * wv[e];
      un += u * u;
    }
    store_up_to4(m, i, count, whole, mv);
    store_up_to4(v, i, count, whole, vv);
  }
  wn = block_sum(wn, sh);
  un = block_sum(un, sh);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = wn;
    partial[2 * blockIdx.x + 1] = un;
  }
}

// Each tensor's step, lr times its trust ratio ||w|| / ||u|| (1 where either is zero), from its
// chunks' partial sums added in chunk order: steps[blockIdx.x], one block per tensor.
extern "C" __global__ void lamb_trust_steps(const LambTensor *table, int chunk,
                                            const float *partial, double lr, float *steps) {
  __shared__ double sh[256];
  const LambTensor *t = table + blockIdx.x;
  const unsigned long long chunks = (t->n + chunk - 1) / chunk;
  double ws = 0.0, us = 0.0;
  for (unsigned long long j = threadIdx.x; j < chunks; j += blockDim.x) {
    ws += partial[2 * (t->first_chunk + j)];
    us += partial[2 * (t->first_chunk + j) + 1];
  }
  const double wn = sqrt(block_sum_double(ws, sh));
  __syncthreads();
  const double un = sqrt(block_sum_double(us, sh));
  if (threadIdx.x == 0) steps[blockIdx.x] = (float)(lr * (wn > 0.0 && un > 0.0 ? wn / un : 1.0));
}

// The LAMB step itself: w -= steps[tensor] * direction.
extern "C" __global__ void lamb_apply(const LambTensor *table, int count, int chunk,
                                      const float *steps, float c1, float c2, float eps) {
  const LambChunk c = lamb_chunk(table, count, chunk);
  const float step = steps[c.t - table], wd = c.t->decay;
  float *w = c.t->w;
  const float *m = c.t->m, *v = c.t->v;
  for (size_t i = c.begin + 4 * threadIdx.x; i < c.end; i += 4 * blockDim.x) {
    const int count = c.end - i < 4 ? (int)(c.end - i) : 4;
    const bool whole = count == 4 && aligned16(m + i) && aligned16(v + i) && aligned16(w + i);
    float mv[4], vv[4], wv[4];
    load_up_to4(m, i, count, whole, mv);
    load_up_to4(v, i, count, whole, vv);
    load_up_to4(w, i, count, whole, wv);
    UNROLL for (int e = 0; e < 4; e++) wv[e] -= step * lamb_direction(mv[e], vv[e], wv[e], c1, c2, eps, wd);
    store_up_to4(w, i, count, whole, wv);
  }
}

// The MLM loss over a vocabulary (`mlm_loss.rs`). The logits are rows of `stride` columns in the
// decoder product's type, the first n of them the vocabulary and the rest padding (a vocabulary
// padded to a multiple of 8 gives the product aligned rows, which cuBLAS runs on its fast
// kernels); the decoder's bias (n, f32) is added as each logit is read. The forward pass reads
// each logit once, where log-softmax, the target's pick and the argmax were ten candle passes
// over an f32 copy; the backward pass writes the logits' gradient in one.

// A running scan of a row: m the largest logit seen, s the sum of exp(x - m) over the logits
// seen, a the first column holding m.
struct RowScan {
  float m, s;
  int a;
};

__device__ __forceinline__ RowScan row_scan_start() {
  RowScan r;
  r.m = NEG_INF, r.s = 0.0f, r.a = 0x7fffffff;
  return r;
}

// Takes logit x of column c into r. An -inf logit adds nothing; a NaN makes the sum NaN.
__device__ __forceinline__ void row_scan_take(RowScan &r, float x, int c) {
  if (x > r.m) {
    r.s = r.s * expf(r.m - x) + 1.0f;
    r.m = x, r.a = c;
  } else {
    r.s += x == NEG_INF ? 0.0f : expf(x - r.m);
  }
}

// s, a sum of exponentials against `from`, against `to` (>= from) instead. A scan that has seen
// only -inf (and NaN) sums to 0 (or NaN) against anything.
__device__ __forceinline__ float rescaled(float s, float from, float to) {
  return from == NEG_INF ? s : s * expf(from - to);
}

// Two scans of one row's disjoint columns as one.
__device__ __forceinline__ RowScan row_scan_merge(RowScan p, RowScan q) {
  RowScan r;
  r.m = fmaxf(p.m, q.m);
  r.s = rescaled(p.s, p.m, r.m) + rescaled(q.s, q.m, r.m);
  r.a = (q.m > p.m || (q.m == p.m && q.a < p.a)) ? q.a : p.a;
  return r;
}

__device__ RowScan warp_row_scan(RowScan r) {
  for (int o = 16; o > 0; o >>= 1) {
    RowScan q;
    q.m = __shfl_xor_sync(FULL_MASK, r.m, o);
    q.s = __shfl_xor_sync(FULL_MASK, r.s, o);
    q.a = __shfl_xor_sync(FULL_MASK, r.a, o);
    r = row_scan_merge(r, q);
  }
  return r;
}

// Eight logits of a row from column j on, bias added, -inf past the vocabulary.
template <typename T>
__device__ __forceinline__ void logits8(const T *z, const float *bias, unsigned int j, int n,
                                        int stride, float *v) {
  if (j + 8 <= (unsigned int)stride) {
    load8(z + j, v);
  } else {
    UNROLL for (int k = 0; k < 8; k++) v[k] = j + k < (unsigned int)stride ? load(z, j + k) : 0.0f;
  }
  UNROLL for (int k = 0; k < 8; k++) v[k] = j + k < (unsigned int)n ? v[k] + bias[j + k] : NEG_INF;
}

// One block per row (`launch_shapes::per_row` over the row's groups of eight), each thread
// scanning groups of eight columns: out[row] = (loss, lse, target, correct) with
// lse = log sum_j exp(z_j + b_j), loss = lse - (z_t + b_t) and correct = 1 where the first
// largest logit is the target's. A target past the vocabulary gives NaN.
template <typename T>
__device__ void mlm_xent_rows_at(const T *logits, const float *bias, const unsigned int *targets,
                                 float *out, int n, int stride) {
  __shared__ float sh_m[32], sh_s[32];
  __shared__ int sh_a[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const size_t row = blockIdx.x;
  const T *z = logits + row * stride;
  RowScan r = row_scan_start();
  for (unsigned int j = threadIdx.x * 8; j < (unsigned int)n; j += blockDim.x * 8) {
    float v[8];
    logits8(z, bias, j, n, stride, v);
    UNROLL for (int k = 0; k < 8; k++) row_scan_take(r, v[k], j + k);
  }
  r = warp_row_scan(r);
  if (lane == 0) {
    sh_m[warp] = r.m, sh_s[warp] = r.s, sh_a[warp] = r.a;
  }
  __syncthreads();
  r = row_scan_start();
  if (lane < warps) {
    r.m = sh_m[lane], r.s = sh_s[lane], r.a = sh_a[lane];
  }
  r = warp_row_scan(r);
  if (threadIdx.x != 0) return;
  const unsigned int t = targets[row];
  const float nan = __int_as_float(0x7fc00000);
  const float lse = r.m + logf(r.s);
  const float zt = t < (unsigned int)n ? load(z, t) + bias[t] : nan;
  float *o = out + 4 * row;
  o[0] = lse - zt, o[1] = lse, o[2] = (float)t, o[3] = r.a == (int)t ? 1.0f : 0.0f;
}

extern "C" __global__ void mlm_xent_rows_f32(const float *logits, const float *bias,
                                             const unsigned int *targets, float *out, int n,
                                             int stride) {
  mlm_xent_rows_at(logits, bias, targets, out, n, stride);
}

extern "C" __global__ void mlm_xent_rows_bf16(const bf16_bits *logits, const float *bias,
                                              const unsigned int *targets, float *out, int n,
                                              int stride) {
  mlm_xent_rows_at(logits, bias, targets, out, n, stride);
}

// The logits' gradient, eight columns per thread (`launch_shapes::rows_by_column_groups` over
// rows of `stride`): (exp(z_j + b_j - lse) - [j = target]) * g for the vocabulary, 0 for the
// padding, from each row's info = (g, lse, target), g the gradient of its loss.
template <typename T>
__device__ void mlm_xent_grad_at(const T *logits, const float *bias, const float *info, T *dz,
                                 int n, int stride) {
  const unsigned int j = group_column();
  if (j >= (unsigned int)stride) return;
  const size_t row = blockIdx.x;
  const float g = info[3 * row], lse = info[3 * row + 1];
  const unsigned int t = (unsigned int)info[3 * row + 2];
  const T *z = logits + row * stride;
  T *d = dz + row * stride;
  float v[8];
  logits8(z, bias, j, n, stride, v);
  UNROLL for (int k = 0; k < 8; k++) {
    const float hit = j + k == t ? 1.0f : 0.0f;
    v[k] = j + k < (unsigned int)n ? (expf(v[k] - lse) - hit) * g : 0.0f;
  }
  if (j + 8 <= (unsigned int)stride) {
    store8(d + j, v);
  } else {
    for (unsigned int k = 0; j + k < (unsigned int)stride; k++) store(d, j + k, v[k]);
  }
}

extern "C" __global__ void mlm_xent_grad_f32(const float *logits, const float *bias,
                                             const float *info, float *dz, int n, int stride) {
  mlm_xent_grad_at(logits, bias, info, dz, n, stride);
}

extern "C" __global__ void mlm_xent_grad_bf16(const bf16_bits *logits, const float *bias,
                                              const float *info, bf16_bits *dz, int n,
                                              int stride) {
  mlm_xent_grad_at(logits, bias, info, dz, n, stride);
}

// The embeddings' sum (`embeddings.rs`): x[i] = word[ids[i]] + pos_type[positions[i]] over rows
// of n, eight columns per thread (`launch_shapes::rows_by_column_groups` over (tokens, n)).
// `ids2` holds the tokens' ids, then their positions; `pos_type` is the position table with the
// token-type row added. One pass where two gathers and two adds (one broadcast) were four.
extern "C" __global__ void embed_sum(const float *word, const float *pos_type,
                                     const unsigned int *ids2, float *x, int n, int tokens) {
  const unsigned int j = group_column();
  if (j >= (unsigned int)n) return;
  const size_t i = blockIdx.x;
  const float *a = word + (size_t)ids2[i] * n + j;
  const float *b = pos_type + (size_t)ids2[tokens + i] * n + j;
  float *y = x + i * n + j;
  if (j + 8 > (unsigned int)n) {
    for (unsigned int k = 0; j + k < (unsigned int)n; k++) y[k] = a[k] + b[k];
    return;
  }
  float u[8], v[8];
  load8(a, u);
  load8(b, v);
  UNROLL for (int k = 0; k < 8; k++) u[k] += v[k];
  store8(y, u);
}
