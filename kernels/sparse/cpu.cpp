// Fused gather + attention for dustin::sparse_attention on the CPU (see cpu.py for when it runs).
//
// One task per (batch row, KV head): gather the W selected K and V rows of that head into task-local buffers
// (software-prefetched: the rows are scattered 256-512 byte reads from a cache that is cold at a decode step), then
// S^T = K_sel Q^T and O = softmax(S) V_sel with oneDNN's batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm,
// the one PyTorch's CPU flash attention uses). What it saves over the torch reference (gather into a multi-MB
// workspace, then SDPA) is the round trip of the gathered rows through memory: here they stay in L1/L2.
//
// Contract (cpu.py builds the inputs; shapes and position bounds are checked here too): q [B, Hkv, M, D] contiguous
// (the packed GQA rows), k/v cache [B, Hkv, S, D] with unit stride in D and one set of strides, positions [B, W]
// int64 in [0, S), mask float32 [Bm, W, C] contiguous with Bm in {1, B} and C = M rounded up to a multiple of 16:
// the additive mask transposed (column w, row m), zero in the padding columns, every row m < M with a finite entry.
// Softmax and accumulation in fp32; the probabilities are rounded to q's dtype before the second GEMM, as in SDPA's
// CPU kernel.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

// How many rows ahead the gather prefetches (into L2): DRAM latency is ~100 ns and a core keeps a few dozen
// misses in flight, so the distance must cover several rows (each 4-8 cache lines). PREFETCH_ROWS overrides it
// at build time for tuning.
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 16
#endif
constexpr int64_t kPrefetchRows = PREFETCH_ROWS;

template <typename T>
inline void prefetch_row(const T* row, int64_t bytes) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 2);
}

// keys[w] = k[pos[w]], values[w] = v[pos[w]] (rows of dim elements, row_stride apart in the cache).
template <typename T>
inline void gather_rows(const T* k, const T* v, int64_t row_stride, const int64_t* pos, int64_t rows, int64_t dim,
                        T* keys, T* values) {
  const int64_t bytes = dim * static_cast<int64_t>(sizeof(T));
  for (int64_t w = 0; w < std::min(rows, kPrefetchRows); ++w) {
    prefetch_row(k + pos[w] * row_stride, bytes);
    prefetch_row(v + pos[w] * row_stride, bytes);
  }
  for (int64_t w = 0; w < rows; ++w) {
    if (w + kPrefetchRows < rows) {
      prefetch_row(k + pos[w + kPrefetchRows] * row_stride, bytes);
      prefetch_row(v + pos[w + kPrefetchRows] * row_stride, bytes);
    }
    std::memcpy(keys + w * dim, k + pos[w] * row_stride, bytes);
    std::memcpy(values + w * dim, v + pos[w] * row_stride, bytes);
  }
}

template <typename T>
void attend_one(const T* q, const T* k, const T* v, int64_t kv_row_stride, const int64_t* pos, const float* mask,
                T* out, int64_t rows, int64_t width, int64_t dim, float scale, bool vnni) {
  // Widths padded to even (VNNI pairs rows) with zero rows that get zero probability.
  const int64_t width_even = width + (width & 1);
  // The first GEMM's N (the M query rows) padded to a multiple of 16 for oneDNN's packing; the padding is zero.
  const int64_t cols = (rows + 15) / 16 * 16;
  // Task-local buffers, reused across calls (resize keeps the capacity; contents are overwritten before use).
  thread_local std::vector<T> keys, values, packed_values, q_t, q_packed, probs;
  thread_local std::vector<float> scores, acc, col_max, col_sum;
  keys.resize(width_even * dim);
  values.resize(width_even * dim);
  q_t.assign(dim * cols, static_cast<T>(0.f));
  scores.resize(width_even * cols);
  acc.resize(rows * dim);
  probs.resize(rows * width_even);
  col_max.assign(cols, -std::numeric_limits<float>::infinity());
  col_sum.assign(cols, 0.f);
  gather_rows(k, v, kv_row_stride, pos, width, dim, keys.data(), values.data());
  if (width_even != width) {
    std::memset(keys.data() + width * dim, 0, dim * sizeof(T));
    std::memset(values.data() + width * dim, 0, dim * sizeof(T));
  }
  // B of the first GEMM: Q^T [D, M].
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t d = 0; d < dim; ++d) q_t[d * cols + m] = q[m * dim + d];
  const T* b_scores = q_t.data();
  if (vnni) {
    q_packed.resize(dim * cols);
    at::native::cpublas::pack(dim, cols, cols, cols, c10::CppTypeToScalarType<T>::value,
                              c10::CppTypeToScalarType<T>::value, q_t.data(), q_packed.data());
    b_scores = q_packed.data();
  }
  // S^T [W, M] = K_sel [W, D] x Q^T [D, M]
  at::native::cpublas::brgemm(width_even, cols, dim, dim, cols, cols, false, keys.data(), b_scores, scores.data(),
                              vnni);

  // Softmax over the W entries of each of the M columns (all vector loops: cols is a multiple of 16 and the
  // padding columns only ever see zeros): scale, add the mask, column max, then exp and column sums.
  const Vec vscale(scale);
  for (int64_t w = 0; w < width; ++w) {
    float* s = scores.data() + w * cols;
    const float* add = mask + w * cols;
    for (int64_t m = 0; m < cols; m += Vec::size()) {
      Vec x = Vec::loadu(s + m) * vscale + Vec::loadu(add + m);
      x.store(s + m);
      at::vec::maximum(Vec::loadu(col_max.data() + m), x).store(col_max.data() + m);
    }
  }
  for (int64_t m = 0; m < cols; ++m) {
    if (col_max[m] == -std::numeric_limits<float>::infinity()) col_max[m] = 0.f;  // contract: never all hidden
  }
  for (int64_t w = 0; w < width; ++w) {
    float* s = scores.data() + w * cols;
    for (int64_t m = 0; m < cols; m += Vec::size()) {
      Vec e = (Vec::loadu(s + m) - Vec::loadu(col_max.data() + m)).exp_u20();
      e.store(s + m);
      (Vec::loadu(col_sum.data() + m) + e).store(col_sum.data() + m);
    }
  }
  // P [M, W] in T (transposed from S^T), zero on the padding column.
  for (int64_t m = 0; m < rows; ++m) {
    T* p = probs.data() + m * width_even;
    for (int64_t w = 0; w < width; ++w) p[w] = static_cast<T>(scores[w * cols + m]);
    if (width_even != width) p[width] = static_cast<T>(0.f);
  }
  // O [M, D] = P [M, W] x V_sel [W, D]. A packed B has a leading dimension of at most 64 (oneDNN's transform), so
  // with VNNI the D columns go in chunks of 64.
  const int64_t chunk = vnni ? std::min<int64_t>(dim, 64) : dim;
  if (vnni) packed_values.resize(width_even * chunk);
  for (int64_t d0 = 0; d0 < dim; d0 += chunk) {
    const int64_t n = std::min(chunk, dim - d0);
    const T* b_values = values.data() + d0;
    if (vnni) {
      at::native::cpublas::pack(width_even, n, dim, n, c10::CppTypeToScalarType<T>::value,
                                c10::CppTypeToScalarType<T>::value, values.data() + d0, packed_values.data());
      b_values = packed_values.data();
    }
    at::native::cpublas::brgemm(rows, n, width_even, width_even, vnni ? n : dim, dim, false, probs.data(), b_values,
                                acc.data() + d0, vnni);
  }
  for (int64_t m = 0; m < rows; ++m) {
    const float inv = col_sum[m] > 0.f ? 1.f / col_sum[m] : 0.f;
    for (int64_t d = 0; d < dim; ++d) out[m * dim + d] = static_cast<T>(acc[m * dim + d] * inv);
  }
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& positions,
         const at::Tensor& mask, at::Tensor& out, double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), rows = q.size(2), dim = q.size(3);
  const int64_t width = positions.size(1);
  const bool vnni = at::native::cpublas::could_pack(q.scalar_type()) && !std::is_same_v<T, float>;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  const float* mp = mask.data_ptr<float>();
  T* op = out.data_ptr<T>();
  const int64_t mask_batch = mask.size(0) == 1 ? 0 : mask.stride(0);
  const int64_t kb = k.stride(0), kh = k.stride(1), ks = k.stride(2);
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads;
      attend_one<T>(qp + task * rows * dim, kp + b * kb + h * kh, vp + b * kb + h * kh, ks, pp + b * width,
                    mp + b * mask_batch, op + task * rows * dim, rows, width, dim, static_cast<float>(scale), vnni);
    }
    if (vnni) at::native::cpublas::brgemm_release(vnni);
  });
}

}  // namespace

at::Tensor gathered_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& positions, const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4 && q.is_contiguous(), "gathered_attention: q [B, Hkv, M, D]");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.strides() == v_cache.strides() && k_cache.stride(3) == 1,
              "gathered_attention: k_cache and v_cache of one shape and strides, unit stride in D");
  TORCH_CHECK(q.size(0) == k_cache.size(0) && q.size(1) == k_cache.size(1) && q.size(3) == k_cache.size(3),
              "gathered_attention: q and the caches disagree on B, Hkv or D");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "gathered_attention: q and the caches must share one dtype");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.dim() == 2 && positions.is_contiguous() &&
                  positions.size(0) == q.size(0) && positions.size(1) >= 1,
              "gathered_attention: positions [B, W] int64, W >= 1");
  const int64_t cols = (q.size(2) + 15) / 16 * 16;
  TORCH_CHECK(mask.scalar_type() == at::kFloat && mask.dim() == 3 && mask.is_contiguous() &&
                  (mask.size(0) == 1 || mask.size(0) == q.size(0)) && mask.size(1) == positions.size(1) &&
                  mask.size(2) == cols,
              "gathered_attention: mask float32 [1 or B, W, M rounded up to 16]");
  // A position out of the cache would read out of bounds: refuse it (the torch reference's index_select would).
  TORCH_CHECK(positions.numel() == 0 ||
                  (positions.min().item<int64_t>() >= 0 && positions.max().item<int64_t>() < k_cache.size(2)),
              "gathered_attention: positions must lie in [0, S)");
  auto out = at::empty_like(q);
  switch (q.scalar_type()) {
    case at::kFloat: run<float>(q, k_cache, v_cache, positions, mask, out, scale); break;
    case at::kBFloat16: run<at::BFloat16>(q, k_cache, v_cache, positions, mask, out, scale); break;
    case at::kHalf: run<at::Half>(q, k_cache, v_cache, positions, mask, out, scale); break;
    default: TORCH_CHECK(false, "gathered_attention: float32, bfloat16 or float16 only");
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("gathered_attention", &gathered_attention); }
