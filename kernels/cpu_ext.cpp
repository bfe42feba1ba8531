// The one extension module of dustin's CPU kernels (kernels/cpu_ext.py builds it): the functions of
// kernels/sparse/sparse_attention.cpp, kernels/scores/score_heads.cpp and kernels/linear/int8_linear.cpp, bound for
// Python; the fused sparse attention registered with the dispatcher as dustin::sparse_attention's CPU kernel; and
// dustin::int8_linear, an op defined here (CPU and Meta kernels), which only exists once this module is loaded
// (kernels/linear/int8.py).
//
// Why register it: the op is a torch.library.custom_op, whose CPU path is Python (an autograd layer, a device switch,
// an aliasing check, then kernels/sparse/cpu.py). On a warm machine that costs ~20 us a call; at a decode step, where
// a layer's weights (or the dense arm of benchmarks/attention.py) have just streamed through the CPU caches, it cost
// 0.03-0.37 ms a call at the 7B geometry (about 0.2 typically; benchmarks/attention_dispatch.py), up to a sixth of
// the kernel. Once this module is loaded (on the first CPU call,
// kernels/cpu_ext.py), torch.ops.dustin.sparse_attention on CPU tensors reaches the kernel in C++: the AutogradCPU
// and CPU entries below take precedence over the custom_op's Python entries (registered for the Autograd and
// CompositeExplicitAutograd alias keys) for CPU tensors only.

#include <torch/extension.h>

#include <cstdlib>
#include <optional>
#include <cstring>
#include <vector>

at::Tensor sparse_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& indices, const at::Tensor& seq_lens, double scale, int64_t window);

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias);

void score_heads_into(at::Tensor& out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& seq_lens,
                      const std::vector<int64_t>& heads, double scale);

namespace {

using SparseAttentionFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const at::Tensor&, double, int64_t);

// The fused kernel runs straight from C++ only where kernels/sparse/cpu.py would run it without a question:
// DUSTIN_CPU_KERNELS unset, "auto" or "fused", and inputs that cpu.supports() accepts (the same test). Everything
// else (the references, a bad value of the variable, "fused" with inputs the kernel does not take) goes to
// dustin::_sparse_attention_cpu, the op's Python CPU path, which reads the variable in full and raises its errors.
bool kernel_switched_on() {
  const char* value = std::getenv("DUSTIN_CPU_KERNELS");
  return value == nullptr || value[0] == '\0' || std::strcmp(value, "auto") == 0 || std::strcmp(value, "fused") == 0;
}

bool kernel_takes(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  const auto dtype = q.scalar_type();
  return (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf) && q.dim() == 4 &&
         k_cache.dim() == 4 && q.size(3) % 16 == 0 && k_cache.stride(3) == 1 && k_cache.strides() == v_cache.strides();
}

at::Tensor sparse_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& indices, const at::Tensor& seq_lens, double scale, int64_t window) {
  if (kernel_switched_on() && kernel_takes(q, k_cache, v_cache)) {
    return sparse_attention(q, k_cache, v_cache, indices, seq_lens, scale, window);
  }
  static const auto python_path = c10::Dispatcher::singleton()
                                      .findSchemaOrThrow("dustin::_sparse_attention_cpu", "")
                                      .typed<SparseAttentionFn>();
  return python_path.call(q, k_cache, v_cache, indices, seq_lens, scale, window);
}

// The op has no backward (inference only): as for a custom_op without one, the forward runs, and a backward through
// its output raises.
struct SparseAttentionNoBackward : public torch::autograd::Function<SparseAttentionNoBackward> {
  static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& indices, const at::Tensor& seq_lens,
                            double scale, int64_t window) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("dustin::sparse_attention", "")
                               .typed<SparseAttentionFn>();
    return op.call(q, k_cache, v_cache, indices, seq_lens, scale, window);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, "dustin::sparse_attention has no backward: dustin's ops are for inference (run under "
                       "torch.no_grad())");
  }
};

// Shapes only, for tracing (dynamo's fake tensors run the Meta kernel).
at::Tensor int8_linear_meta(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                            const std::optional<at::Tensor>& bias) {
  return at::empty_symint({x.sym_size(0), qweight.sym_size(0)}, x.options());
}

at::Tensor sparse_attention_autograd(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                     const at::Tensor& indices, const at::Tensor& seq_lens, double scale,
                                     int64_t window) {
  return SparseAttentionNoBackward::apply(q, k_cache, v_cache, indices, seq_lens, scale, window);
}

}  // namespace

// dustin::int8_linear has no Python definition: without this module (no compiler) the draft runs torch's int8 kernel.
TORCH_LIBRARY_FRAGMENT(dustin, m) {
  m.def("int8_linear(Tensor x, Tensor qweight, Tensor scale, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(dustin, CPU, m) {
  m.impl("sparse_attention", &sparse_attention_cpu);
  m.impl("int8_linear", &int8_linear);
}

TORCH_LIBRARY_IMPL(dustin, Meta, m) { m.impl("int8_linear", &int8_linear_meta); }

TORCH_LIBRARY_IMPL(dustin, AutogradCPU, m) { m.impl("sparse_attention", &sparse_attention_autograd); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_attention", &sparse_attention, "dustin::sparse_attention, fused gather + attention");
  m.def("score_heads_into", &score_heads_into, "dustin::score_heads_into, straight from the cache");
}
