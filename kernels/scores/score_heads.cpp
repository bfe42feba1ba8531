// dustin::score_heads_into on the CPU (kernels/cpu_ext.py says when it runs): the summed softmax of a few query
// heads over the committed positions, straight from the cache.
//
// The torch reference converts reduced-precision K to fp32 by chunks and multiplies there; this kernel multiplies the
// stored K rows in place with oneDNN's batch-reduce GEMM (at::native::cpublas::brgemm: AMX for bf16 where the CPU
// has it), whose products of two bf16 / fp16 values are exact in fp32 and are summed in fp32, so the logits are the
// fp32 dot products of the stored values, as in the reference, up to summation order.
//
// Three phases over tasks (batch row, chunk of positions): (1) logits of every listed head's rows for the chunk,
// their chunk max, exp(logit - chunk max) kept in a workspace and the chunk sums; (2) per (batch row, head row) the
// global max and sum from the chunks' (serial, small); (3) out[b, j] += sum over rows of the kept exp times the
// chunk's factor exp(chunk max - max) / sum. Inputs: out [B, S] float32 contiguous, q [B, Hq, T, D], k_cache
// [B, Hkv, S, D] with unit stride in D, seq_lens [B] with values in [0, S], heads (repeats count twice), scale.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

// Positions per task: 1024 rows of K (256 KB in bf16 with D = 128) stay in L2 while they are multiplied.
constexpr int64_t kChunk = 1024;

template <typename T>
void run(at::Tensor& out, const at::Tensor& q, const at::Tensor& k, const std::vector<int64_t>& lengths,
         const std::vector<std::pair<int64_t, std::vector<int64_t>>>& groups, int64_t total_rows, double scale_d) {
  const int64_t batch = q.size(0), rows = q.size(2), dim = q.size(3);
  // Workspaces span the longest row, not the cache's capacity (a long cache with short rows stays cheap).
  const int64_t span = *std::max_element(lengths.begin(), lengths.end());
  const float scale = static_cast<float>(scale_d);
  const bool vnni = at::native::cpublas::could_pack(q.scalar_type()) && !std::is_same_v<T, float>;
  const int64_t chunks = (span + kChunk - 1) / kChunk;
  // Q^T of each (batch row, group): [D, cols] with the group's rows in the first columns, zero padding (packed for
  // VNNI where the GEMM wants it).
  std::vector<int64_t> cols(groups.size()), first_row(groups.size());
  int64_t offset = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t count = static_cast<int64_t>(groups[g].second.size()) * rows;
    cols[g] = (count + 15) / 16 * 16;
    first_row[g] = offset;
    offset += count;
  }
  const auto qc = q.contiguous();
  const T* qp = qc.data_ptr<T>();
  std::vector<std::vector<T>> q_t(batch * groups.size());
  for (int64_t b = 0; b < batch; ++b) {
    for (size_t g = 0; g < groups.size(); ++g) {
      std::vector<T> plain(dim * cols[g], static_cast<T>(0.f));
      int64_t r = 0;
      for (int64_t h : groups[g].second) {
        for (int64_t t = 0; t < rows; ++t, ++r) {
          const T* row = qp + ((b * q.size(1) + h) * rows + t) * dim;
          for (int64_t d = 0; d < dim; ++d) plain[d * cols[g] + r] = row[d];
        }
      }
      auto& dst = q_t[b * groups.size() + g];
      if (vnni) {
        dst.resize(dim * cols[g]);
        at::native::cpublas::pack(dim, cols[g], cols[g], cols[g], c10::CppTypeToScalarType<T>::value,
                                  c10::CppTypeToScalarType<T>::value, plain.data(), dst.data());
      } else {
        dst = std::move(plain);
      }
    }
  }
  // Kept exp values [B, S, R], and per (b, chunk, r) the chunk max and sum.
  // Every entry of kept that phase 3 reads is written in phase 1 (positions < lengths[b]): no zero fill.
  std::unique_ptr<float[]> kept(new float[std::max<int64_t>(batch * span * total_rows, 1)]);
  std::vector<float> chunk_max(batch * chunks * total_rows, -std::numeric_limits<float>::infinity());
  std::vector<float> chunk_sum(batch * chunks * total_rows, 0.f);
  const T* kp = k.data_ptr<T>();
  const int64_t kb = k.stride(0), kh = k.stride(1), ks = k.stride(2);

  const Vec vscale(scale);
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> logits;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, c = task % chunks;
      const int64_t start = c * kChunk, stop = std::min(start + kChunk, lengths[b]);
      if (start >= stop) continue;
      const int64_t count = stop - start;
      for (size_t g = 0; g < groups.size(); ++g) {
        logits.resize(kChunk * cols[g]);
        const T* a = kp + b * kb + groups[g].first * kh + start * ks;
        at::native::cpublas::brgemm(count, cols[g], dim, ks, cols[g], cols[g], false, a,
                                    q_t[b * groups.size() + g].data(), logits.data(), vnni);
        const int64_t n = static_cast<int64_t>(groups[g].second.size()) * rows;
        float* mx = chunk_max.data() + (b * chunks + c) * total_rows + first_row[g];
        float* sm = chunk_sum.data() + (b * chunks + c) * total_rows + first_row[g];
        float* keep = kept.get() + (b * span + start) * total_rows + first_row[g];
        // Vector loops over the rows r of the group, 16 at a time (padding lanes hold zero logits, never stored).
        for (int64_t r0 = 0; r0 < n; r0 += Vec::size()) {
          const int lanes = static_cast<int>(std::min<int64_t>(Vec::size(), n - r0));
          Vec peak(-std::numeric_limits<float>::infinity()), total(0.f);
          for (int64_t j = 0; j < count; ++j)
            peak = at::vec::maximum(peak, Vec::loadu(logits.data() + j * cols[g] + r0) * vscale);
          for (int64_t j = 0; j < count; ++j) {
            const Vec e = (Vec::loadu(logits.data() + j * cols[g] + r0) * vscale - peak).exp_u20();
            total = total + e;
            e.store(keep + j * total_rows + r0, lanes);
          }
          peak.store(mx + r0, lanes);
          total.store(sm + r0, lanes);
        }
      }
    }
    if (vnni) at::native::cpublas::brgemm_release(vnni);
  });

  // Per (b, r): the global max and sum; each chunk's factor exp(chunk max - max) / sum, in place of its max.
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t used = (lengths[b] + kChunk - 1) / kChunk;
    for (int64_t r = 0; r < total_rows; ++r) {
      float peak = -std::numeric_limits<float>::infinity(), total = 0.f;
      for (int64_t c = 0; c < used; ++c) peak = std::max(peak, chunk_max[(b * chunks + c) * total_rows + r]);
      for (int64_t c = 0; c < used; ++c) {
        const int64_t i = (b * chunks + c) * total_rows + r;
        total += chunk_sum[i] * std::exp(chunk_max[i] - peak);
      }
      for (int64_t c = 0; c < used; ++c) {
        const int64_t i = (b * chunks + c) * total_rows + r;
        chunk_max[i] = std::exp(chunk_max[i] - peak) / total;
      }
    }
  }

  float* op = out.data_ptr<float>();
  const int64_t ob = out.stride(0);
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, c = task % chunks;
      const int64_t start = c * kChunk, stop = std::min(start + kChunk, lengths[b]);
      const float* factor = chunk_max.data() + (b * chunks + c) * total_rows;
      for (int64_t j = start; j < stop; ++j) {
        const float* e = kept.get() + (b * span + j) * total_rows;
        float sum = 0.f;
        for (int64_t r = 0; r < total_rows; ++r) sum += e[r] * factor[r];
        op[b * ob + j] += sum;
      }
    }
  });
}

}  // namespace

void score_heads_into(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& seq_lens,
                      const std::vector<int64_t>& heads, double scale) {
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4 && k_cache.stride(3) == 1,
              "score_heads (CPU kernel): q [B, Hq, T, D], k_cache [B, Hkv, S, D] with unit stride in D");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "score_heads (CPU kernel): q and k_cache share one dtype");
  const int64_t batch = q.size(0), q_heads = q.size(1), kv_heads = k_cache.size(1), capacity = k_cache.size(2);
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == batch && out.size(1) == capacity &&
                  out.stride(1) == 1,
              "score_heads (CPU kernel): out [B, S] float32 with unit stride in S");
  TORCH_CHECK(k_cache.size(0) == batch && k_cache.size(3) == q.size(3) && kv_heads > 0 && q_heads % kv_heads == 0,
              "score_heads (CPU kernel): q and k_cache disagree on B, D or the GQA grouping");
  const auto lens = seq_lens.to(at::kLong).contiguous();
  TORCH_CHECK(lens.numel() == batch, "score_heads (CPU kernel): seq_lens [B]");
  std::vector<int64_t> lengths(lens.data_ptr<int64_t>(), lens.data_ptr<int64_t>() + batch);
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK(lengths[b] >= 0 && lengths[b] <= capacity, "score_heads (CPU kernel): seq_lens[", b, "] = ",
                lengths[b], " is outside [0, ", capacity, "]");
  // The listed heads by KV group, in first-seen order (repeats kept: they count twice).
  std::vector<std::pair<int64_t, std::vector<int64_t>>> groups;
  std::map<int64_t, size_t> where;
  const int64_t per_group = q_heads / kv_heads;
  for (int64_t h : heads) {
    TORCH_CHECK(h >= 0 && h < q_heads, "score_heads (CPU kernel): head ", h, " is outside [0, ", q_heads, ")");
    const int64_t g = h / per_group;
    auto it = where.find(g);
    if (it == where.end()) {
      where[g] = groups.size();
      groups.push_back({g, {h}});
    } else {
      groups[it->second].second.push_back(h);
    }
  }
  if (batch == 0 || heads.empty()) return;
  const int64_t total_rows = static_cast<int64_t>(heads.size()) * q.size(2);
  switch (q.scalar_type()) {
    case at::kFloat: run<float>(out, q, k_cache, lengths, groups, total_rows, scale); break;
    case at::kBFloat16: run<at::BFloat16>(out, q, k_cache, lengths, groups, total_rows, scale); break;
    case at::kHalf: run<at::Half>(out, q, k_cache, lengths, groups, total_rows, scale); break;
    default: TORCH_CHECK(false, "score_heads (CPU kernel): float32, bfloat16 or float16 only");
  }
}
