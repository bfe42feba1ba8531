// The one extension module of dustin's CPU kernels (kernels/cpu_ext.py builds it): the functions of
// kernels/sparse/sparse_attention.cpp and kernels/scores/score_heads.cpp, bound for Python.

#include <torch/extension.h>

#include <vector>

at::Tensor sparse_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& indices, const at::Tensor& seq_lens, double scale, int64_t window);

void score_heads_into(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& seq_lens,
                      const std::vector<int64_t>& heads, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_attention", &sparse_attention, "dustin::sparse_attention, fused gather + attention");
  m.def("score_heads_into", &score_heads_into, "dustin::score_heads_into, straight from the cache");
}
