// Fused gather + attention for dustin::sparse_attention on the CPU (kernels/cpu_ext.py says when it runs).
//
// One task per (batch row, KV head): gather the selected K and V rows of that head into task-local buffers
// (software-prefetched: the rows are scattered 256-512 byte reads from a cache that is cold at a decode step), then
// S^T = K_sel Q^T and O = softmax(S) V_sel with oneDNN's batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm,
// the one PyTorch's CPU flash attention uses). What it saves over the torch reference (gather into a multi-MB
// workspace, then SDPA) is the round trip of the gathered rows through memory, and the small torch ops that build
// positions and masks: here the columns and their visibility come straight from indices and seq_lens.
//
// Inputs are the op's (reference.py has the contract): q [B, Hq, T, D], k/v cache [B, Hkv, S, D] with unit stride in
// D and one set of strides, indices [B, K] int32/int64 (-1 = padding, anywhere), seq_lens [B], scale, window. Every
// index is checked against [0, seq_lens[b]) and seq_lens[b] + T against S before anything is read. Softmax and
// accumulation in fp32; the probabilities are rounded to q's dtype before the second GEMM, as in SDPA's CPU kernel.

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
// misses in flight, so the distance must cover several rows (each 4-8 cache lines); 6, 16 and 32 timed alike.
constexpr int64_t kPrefetchRows = 16;

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

// Column w of a task reads cache position pos[w] and is visible to the query rows t in [first[w], last[w]] (the
// packed row g * T + t of every query head g of the KV head alike).
struct Columns {
  std::vector<int64_t> pos, first, last;
};

// The columns of batch row b: its selected positions (padding and positions that the window hides from every row
// dropped), then the T new rows, causal. With window W, row t sees positions > L + t - W.
inline void build_columns(const int64_t* indices, int64_t selected, int64_t length, int64_t rows, int64_t window,
                          Columns& c) {
  c.pos.clear();
  c.first.clear();
  c.last.clear();
  for (int64_t j = 0; j < selected; ++j) {
    const int64_t p = indices[j];
    if (p < 0) continue;
    const int64_t last = window ? std::min(rows - 1, p - length + window - 1) : rows - 1;
    if (last < 0) continue;
    c.pos.push_back(p);
    c.first.push_back(0);
    c.last.push_back(last);
  }
  for (int64_t j = 0; j < rows; ++j) {
    c.pos.push_back(length + j);
    c.first.push_back(j);
    c.last.push_back(window ? std::min(rows - 1, j + window - 1) : rows - 1);
  }
}

// One (batch row, KV head): q holds the M = G * T packed query rows, row r = g * T + t.
template <typename T>
void attend_one(const T* q, const T* k, const T* v, int64_t kv_row_stride, const Columns& c, T* out, int64_t rows,
                int64_t packed, int64_t dim, float scale, bool vnni) {
  const int64_t width = static_cast<int64_t>(c.pos.size());
  // Widths padded to even (VNNI pairs rows) with zero rows that get zero probability.
  const int64_t width_even = width + (width & 1);
  // The first GEMM's N (the packed query rows) padded to a multiple of 16 for oneDNN's packing; the padding is zero.
  const int64_t cols = (packed + 15) / 16 * 16;
  // Task-local buffers, reused across calls (resize keeps the capacity; contents are overwritten before use).
  thread_local std::vector<T> keys, values, packed_values, q_t, q_packed, probs;
  thread_local std::vector<float> scores, acc, col_max, col_sum, row_t;
  keys.resize(width_even * dim);
  values.resize(width_even * dim);
  q_t.assign(dim * cols, static_cast<T>(0.f));
  scores.resize(width_even * cols);
  acc.resize(packed * dim);
  probs.resize(packed * width_even);
  col_max.assign(cols, -std::numeric_limits<float>::infinity());
  col_sum.assign(cols, 0.f);
  row_t.assign(cols, 0.f);  // t of each packed row (padding rows: 0, they read zeros and are never written out)
  for (int64_t r = 0; r < packed; ++r) row_t[r] = static_cast<float>(r % rows);
  gather_rows(k, v, kv_row_stride, c.pos.data(), width, dim, keys.data(), values.data());
  if (width_even != width) {
    std::memset(keys.data() + width * dim, 0, dim * sizeof(T));
    std::memset(values.data() + width * dim, 0, dim * sizeof(T));
  }
  // B of the first GEMM: Q^T [D, M].
  for (int64_t m = 0; m < packed; ++m)
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

  // Softmax over the W entries of each of the M columns (vector loops over all cols: the padding rows only ever
  // see zeros): scale, hide what a row may not see, column max, then exp and column sums.
  const Vec vscale(scale), hidden(-std::numeric_limits<float>::infinity());
  for (int64_t w = 0; w < width; ++w) {
    float* s = scores.data() + w * cols;
    const bool everyone = c.first[w] == 0 && c.last[w] == rows - 1;
    const Vec first(static_cast<float>(c.first[w])), last(static_cast<float>(c.last[w]));
    for (int64_t m = 0; m < cols; m += Vec::size()) {
      Vec x = Vec::loadu(s + m) * vscale;
      if (!everyone) {
        const Vec t = Vec::loadu(row_t.data() + m);
        x = Vec::blendv(hidden, x, (t >= first) & (t <= last));
      }
      x.store(s + m);
      at::vec::maximum(Vec::loadu(col_max.data() + m), x).store(col_max.data() + m);
    }
  }
  for (int64_t m = 0; m < cols; ++m) {
    if (col_max[m] == -std::numeric_limits<float>::infinity()) col_max[m] = 0.f;  // only padding rows: see above
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
  for (int64_t m = 0; m < packed; ++m) {
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
    at::native::cpublas::brgemm(packed, n, width_even, width_even, vnni ? n : dim, dim, false, probs.data(),
                                b_values, acc.data() + d0, vnni);
  }
  for (int64_t m = 0; m < packed; ++m) {
    const float inv = 1.f / col_sum[m];  // > 0: row t always sees its own new column
    for (int64_t d = 0; d < dim; ++d) out[m * dim + d] = static_cast<T>(acc[m * dim + d] * inv);
  }
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::vector<Columns>& columns,
         int64_t rows, at::Tensor& out, double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), packed = q.size(2), dim = q.size(3);
  const bool vnni = at::native::cpublas::could_pack(q.scalar_type()) && !std::is_same_v<T, float>;
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t kb = k.stride(0), kh = k.stride(1), ks = k.stride(2);
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads;
      attend_one<T>(qp + task * packed * dim, kp + b * kb + h * kh, vp + b * kb + h * kh, ks, columns[b],
                    op + task * packed * dim, rows, packed, dim, static_cast<float>(scale), vnni);
    }
    if (vnni) at::native::cpublas::brgemm_release(vnni);
  });
}

}  // namespace

at::Tensor sparse_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& indices, const at::Tensor& seq_lens, double scale, int64_t window) {
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4, "sparse_attention (CPU kernel): q [B, Hq, T, D], caches 4-D");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes() && k_cache.strides() == v_cache.strides() && k_cache.stride(3) == 1,
              "sparse_attention (CPU kernel): k_cache and v_cache of one shape and strides, unit stride in D");
  const int64_t batch = q.size(0), q_heads = q.size(1), rows = q.size(2), dim = q.size(3);
  const int64_t kv_heads = k_cache.size(1), capacity = k_cache.size(2);
  TORCH_CHECK(k_cache.size(0) == batch && k_cache.size(3) == dim && kv_heads > 0 && q_heads % kv_heads == 0,
              "sparse_attention (CPU kernel): q and the caches disagree on B, D or the GQA grouping");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "sparse_attention (CPU kernel): q and the caches must share one dtype");
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == batch && seq_lens.numel() == batch && rows >= 1 &&
                  window >= 0,
              "sparse_attention (CPU kernel): indices [B, K], seq_lens [B], T >= 1, window >= 0");
  const auto idx = indices.to(at::kLong).contiguous();
  const auto lens = seq_lens.to(at::kLong).contiguous();
  const int64_t selected = idx.size(1);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  std::vector<Columns> columns(batch);
  for (int64_t b = 0; b < batch; ++b) {
    // Checked here, not only by the eager wrapper: compiled graphs skip it, and a bad position would read out of
    // bounds.
    TORCH_CHECK(lp[b] >= 0 && lp[b] + rows <= capacity, "sparse_attention (CPU kernel): seq_lens[", b, "] = ", lp[b],
                " leaves no room for T = ", rows, " new rows in a cache of ", capacity, " positions");
    for (int64_t j = 0; j < selected; ++j) {
      const int64_t p = ip[b * selected + j];
      TORCH_CHECK(p >= -1 && p < lp[b], "sparse_attention (CPU kernel): indices[", b, ", ", j, "] = ", p,
                  " is not -1 (padding) nor a committed position in [0, ", lp[b], ")");
    }
    build_columns(ip + b * selected, selected, lp[b], rows, window, columns[b]);
  }
  const int64_t groups = q_heads / kv_heads;
  const auto packed_q = q.reshape({batch, kv_heads, groups * rows, dim}).contiguous();
  auto out = at::empty_like(packed_q);
  switch (q.scalar_type()) {
    case at::kFloat: run<float>(packed_q, k_cache, v_cache, columns, rows, out, scale); break;
    case at::kBFloat16: run<at::BFloat16>(packed_q, k_cache, v_cache, columns, rows, out, scale); break;
    case at::kHalf: run<at::Half>(packed_q, k_cache, v_cache, columns, rows, out, scale); break;
    default: TORCH_CHECK(false, "sparse_attention (CPU kernel): float32, bfloat16 or float16 only");
  }
  return out.view({batch, q_heads, rows, dim});
}
