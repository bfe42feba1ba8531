// Weight-only int8 linear for the draft's decode steps (dustin::int8_linear; kernels/linear/int8.py says when it
// runs, dustin_compile/draftquant.py why the draft is int8 at all).
//
//   y[m, n] = scale[n] * sum_k x[m, k] * q[n, k]  (+ bias[n])      x, scale, bias, y float32; q int8 [N, K]
//
// A decode step has 1-8 rows, so the product is a stream of the weight: each int8 weight row is read once, widened
// to float32 in registers and multiplied into every row of x (accumulation in float32; x is not rounded). What it
// gains over torch's _weight_int8pack_mm (which rounds x to bfloat16 and returns bfloat16): the weight is read with
// two to four output rows in flight and software-prefetched ahead, which on the AMX host of the README streams the real
// draft's LM head (151,936 x 896) at ~20 GB/s against ~14, and 5-row products at 0.6x its time.
//
// Vector paths for AVX-512 and AVX2 (the CPU_CAPABILITY_* macro of the build, kernels/cpu_ext.py: Inductor's flags
// for this CPU), a scalar one for anything else; every path handles any K (a scalar tail) and any N (a tail block).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace {

constexpr int kRowBlock = 8;          // rows of x per pass over the weight (a decode step has 1-8: one pass)
constexpr int64_t kPrefetch = 512;    // bytes ahead of each weight row's read; 0 and 512 timed: 512 ~1.3x faster
constexpr int64_t kGrain = 256;       // output rows per parallel task

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kLanes = 16;
using Acc = __m512;
inline Acc zero() { return _mm512_setzero_ps(); }
inline Acc widen(const int8_t* w) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)w))); }
inline Acc load(const float* x) { return _mm512_loadu_ps(x); }
inline Acc fma(Acc a, Acc b, Acc c) { return _mm512_fmadd_ps(a, b, c); }
inline float total(Acc a) { return _mm512_reduce_add_ps(a); }
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kLanes = 8;
using Acc = __m256;
inline Acc zero() { return _mm256_setzero_ps(); }
inline Acc widen(const int8_t* w) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)w))); }
inline Acc load(const float* x) { return _mm256_loadu_ps(x); }
inline Acc fma(Acc a, Acc b, Acc c) { return _mm256_fmadd_ps(a, b, c); }
inline float total(Acc a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
constexpr int kLanes = 1;
using Acc = float;
inline Acc zero() { return 0.0f; }
inline Acc widen(const int8_t* w) { return static_cast<float>(*w); }
inline Acc load(const float* x) { return *x; }
inline Acc fma(Acc a, Acc b, Acc c) { return a * b + c; }
inline float total(Acc a) { return a; }
#endif

// Rows [n0, n1) of y for the R rows of x at x (row stride K), written at y (row stride ldy), without scale or bias.
template <int R, int NB>
void dot_block(const float* x, const int8_t* q, int64_t K, int64_t n, float* y, int64_t ldy) {
  Acc acc[NB][R];
  for (int j = 0; j < NB; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = zero();
  const int64_t vec_end = K - K % kLanes;
  for (int64_t k = 0; k < vec_end; k += kLanes) {
    Acc w[NB];
    for (int j = 0; j < NB; ++j) {
      const int8_t* row = q + (n + j) * K;
      if (kPrefetch && k % 64 == 0) __builtin_prefetch(row + k + kPrefetch, 0, 3);
      w[j] = widen(row + k);
    }
    for (int r = 0; r < R; ++r) {
      const Acc xv = load(x + r * K + k);
      for (int j = 0; j < NB; ++j) acc[j][r] = fma(xv, w[j], acc[j][r]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int8_t* row = q + (n + j) * K;
    for (int r = 0; r < R; ++r) {
      float sum = total(acc[j][r]);
      for (int64_t k = vec_end; k < K; ++k) sum += x[r * K + k] * static_cast<float>(row[k]);
      y[r * ldy + n + j] = sum;
    }
  }
}

// NB weight rows in flight: 4 for up to 4 rows of x, 2 for 5-8 (NB * R accumulators stay within the 32 vector
// registers of AVX-512, so one pass over the weight serves all of a step's rows).
template <int R>
void rows(const float* x, const int8_t* q, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int NB = R <= 4 ? 4 : 2;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) dot_block<R, NB>(x, q, K, n, y, ldy);
  for (; n < n1; ++n) dot_block<R, 1>(x, q, K, n, y, ldy);
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "int8_linear: x must be a contiguous 2-D float32 CPU tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(qweight.dim() == 2 && qweight.scalar_type() == at::kChar && qweight.is_contiguous() &&
                  qweight.device().is_cpu(),
              "int8_linear: qweight must be a contiguous 2-D int8 CPU tensor, got ", qweight.sizes(), " ",
              qweight.scalar_type(), " on ", qweight.device());
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  TORCH_CHECK(qweight.size(1) == K, "int8_linear: x has ", K, " features, qweight ", qweight.size(1));
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == N && scale.scalar_type() == at::kFloat && scale.is_contiguous() &&
                  scale.device().is_cpu(),
              "int8_linear: scale must be a contiguous float32 CPU vector of ", N, " (one per output row)");
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->device().is_cpu(),
                "int8_linear: bias must be a contiguous float32 CPU vector of ", N);
    b = bias->data_ptr<float>();
  }
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = qweight.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
      const float* xm = xp + m0 * K;
      float* ym = yp + m0 * N;
      switch (std::min<int64_t>(kRowBlock, M - m0)) {
        case 1: rows<1>(xm, qp, K, n0, n1, ym, N); break;
        case 2: rows<2>(xm, qp, K, n0, n1, ym, N); break;
        case 3: rows<3>(xm, qp, K, n0, n1, ym, N); break;
        case 4: rows<4>(xm, qp, K, n0, n1, ym, N); break;
        case 5: rows<5>(xm, qp, K, n0, n1, ym, N); break;
        case 6: rows<6>(xm, qp, K, n0, n1, ym, N); break;
        case 7: rows<7>(xm, qp, K, n0, n1, ym, N); break;
        default: rows<8>(xm, qp, K, n0, n1, ym, N); break;
      }
      for (int64_t r = 0; r < std::min<int64_t>(kRowBlock, M - m0); ++r)
        for (int64_t n = n0; n < n1; ++n) ym[r * N + n] = ym[r * N + n] * sp[n] + (b ? b[n] : 0.0f);
    }
  });
  return y;
}
