// libpowergrad_torch: the PGT cross-entropy's hot path registered with PyTorch from C++ (TORCH_LIBRARY),
// an optional companion of the Python custom ops of python/powergrad/torch/_ops.py (docs/python.md,
// "Registering the ops from C++"). It calls libpowergrad's C ABI (include/powergrad/powergrad_c.h).
//
// Scope: the fused form (docs/design.md §6) on the CPU, class-index targets (int32 / int64), no loss
// options (§2.5), no grad_scale; everything else stays on the Python ops (powergrad/torch/_cpp.py
// decides). Ops (namespace powergrad_cpp):
//
//   xent_fused(logits, target, alpha, ignore_index, label_smoothing, reduction, compute_grad)
//       -> (loss, grad)      CPU kernel: one pg_xent_forward_backward call; grad [N, C] or [0, C]
//   xent(logits, target, alpha, ignore_index, label_smoothing, reduction) -> loss
//       Autograd kernel: a torch::autograd::Function over xent_fused whose backward scales the stored
//       gradient by the incoming one in fp32 and rounds once (as powergrad.torch's eager backward)
//
// `reduction` is pg_reduction_t (0 none, 1 mean, 2 sum). Errors of the library raise c10::Error with
// the message "powergrad_cpp: <function> status <n>: <pg_last_error()>" (Python turns it into
// PowerGradError).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "powergrad/powergrad_c.h"

namespace {

pg_dtype_t dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return PG_DTYPE_FLOAT32;
    case at::kHalf: return PG_DTYPE_FLOAT16;
    case at::kBFloat16: return PG_DTYPE_BFLOAT16;
    default: TORCH_CHECK(false, "powergrad_cpp::xent: logits must be float32, float16 or bfloat16, not ", x.scalar_type());
  }
}

bool aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % static_cast<uintptr_t>(t.element_size()) == 0;
}

// The library rejects null required pointers even for empty buffers (and reads nothing of them):
// distinct, aligned, never-dereferenced stand-ins for the data pointer of empty tensors.
alignas(16) unsigned char g_standins[4][16];

const void* ptr_of(const at::Tensor& t, int slot) {
  if (t.numel() == 0) return g_standins[slot];
  return t.data_ptr();
}

// Host ops use as many threads as PyTorch's pool (docs/design.md §6.1), as powergrad._threads.follow_torch.
void follow_torch_threads() {
  const int n = std::max(1, std::min(256, at::get_num_threads()));
  if (pg_host_threads() != n) pg_set_host_threads(n);
}

void check(pg_status_t st, const char* function) {
  if (st == PG_STATUS_SUCCESS) return;
  const char* msg = pg_last_error();
  TORCH_CHECK(false, "powergrad_cpp: ", function, " status ", static_cast<int>(st), ": ", msg ? msg : "");
}

std::tuple<at::Tensor, at::Tensor> xent_fused_cpu(const at::Tensor& logits, const at::Tensor& target, double alpha,
                                                  int64_t ignore_index, double label_smoothing, int64_t reduction,
                                                  bool compute_grad) {
  TORCH_CHECK(logits.dim() == 2, "powergrad_cpp::xent: logits must be 2-D [N, C]");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0),
              "powergrad_cpp::xent: target must be [N] class indices");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "powergrad_cpp::xent: reduction must be 0, 1 or 2");
  const pg_dtype_t dtype = dtype_of(logits);
  // The ABI's layout: unit column stride, row stride >= cols, aligned (else a contiguous copy).
  at::Tensor x = logits;
  const int64_t rows = x.size(0), cols = x.size(1);
  const bool layout_ok = (x.stride(1) == 1 || cols <= 1) && (rows <= 1 || x.stride(0) >= cols);
  if (!layout_ok || !aligned(x)) x = x.clone(at::MemoryFormat::Contiguous);
  at::Tensor t = target;
  if (t.scalar_type() != at::kInt && t.scalar_type() != at::kLong) t = t.to(at::kLong);
  if (!t.is_contiguous() || !aligned(t)) t = t.clone(at::MemoryFormat::Contiguous);

  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor loss = reduction == PG_REDUCTION_NONE ? at::empty({rows}, f32) : at::empty({}, f32);
  at::Tensor grad = at::empty({compute_grad ? rows : 0, cols}, x.options());

  pg_xent_problem_t p{};
  p.struct_size = sizeof(p);
  p.device = PG_DEVICE_HOST;
  p.dtype = dtype;
  p.logits = ptr_of(x, 0);
  p.rows = rows;
  p.cols = cols;
  p.ld = rows <= 1 ? cols : x.stride(0);
  p.target_kind = t.scalar_type() == at::kInt ? PG_TARGET_INDEX_INT32 : PG_TARGET_INDEX_INT64;
  p.targets = ptr_of(t, 1);
  p.ignore_index = ignore_index;
  p.alpha = static_cast<float>(alpha);
  p.label_smoothing = static_cast<float>(label_smoothing);
  p.reduction = static_cast<pg_reduction_t>(reduction);
  pg_upstream_t up{sizeof(pg_upstream_t), 1.0f, nullptr};
  pg_xent_outputs_t out{};
  out.struct_size = sizeof(out);
  out.loss = static_cast<float*>(const_cast<void*>(ptr_of(loss, 2)));
  if (compute_grad) {
    out.dlogits = const_cast<void*>(ptr_of(grad, 3));
    out.ld_dlogits = cols;
  }
  follow_torch_threads();
  check(pg_xent_forward_backward(&p, &up, &out, nullptr, 0, nullptr), "pg_xent_forward_backward");
  return {loss, grad};
}

const c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                  int64_t, double, int64_t, bool)>&
fused_op() {
  static const auto op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("powergrad_cpp::xent_fused", "")
                              .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                        int64_t, double, int64_t, bool)>();
  return op;
}

class XentFunction : public torch::autograd::Function<XentFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            double alpha, int64_t ignore_index, double label_smoothing, int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto result = fused_op().call(logits, target, alpha, ignore_index, label_smoothing, reduction, true);
    // The stored gradient is this op's own buffer: backward scales it in place and hands it out, so
    // backward may run once (as the Python fused form; fused=False may run again).
    ctx->saved_data["grad"] = std::get<1>(result);
    ctx->saved_data["reduction"] = reduction;
    return std::get<0>(result);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "powergrad cross_entropy: create_graph=True (double backward) is not supported: the PGT gradient is "
                "computed by the library and has no graph of its own");
    auto it = ctx->saved_data.find("grad");
    TORCH_CHECK(it != ctx->saved_data.end(),
                "powergrad cross_entropy: backward ran twice through the same graph; the gradient buffer was scaled "
                "in place the first time (call the loss again instead of retain_graph=True, or use fused=False)");
    at::Tensor grad = it->second.toTensor();
    ctx->saved_data.erase(it);
    const bool none = ctx->saved_data["reduction"].toInt() == PG_REDUCTION_NONE;
    at::Tensor g = grad_outputs[0].to(at::kFloat);
    g = none ? g.reshape({-1, 1}) : g.reshape({});
    if (grad.scalar_type() == at::kFloat) {
      grad.mul_(g);
    } else {
      grad.copy_(grad.to(at::kFloat).mul_(g));  // the product in fp32, rounded once
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor xent_autograd(const at::Tensor& logits, const at::Tensor& target, double alpha, int64_t ignore_index,
                         double label_smoothing, int64_t reduction) {
  if (at::GradMode::is_enabled() && logits.requires_grad())
    return XentFunction::apply(logits, target, alpha, ignore_index, label_smoothing, reduction);
  at::AutoDispatchBelowADInplaceOrView guard;
  return std::get<0>(fused_op().call(logits, target, alpha, ignore_index, label_smoothing, reduction, false));
}

}  // namespace

TORCH_LIBRARY(powergrad_cpp, m) {
  m.def("xent_fused(Tensor logits, Tensor target, float alpha, int ignore_index, float label_smoothing, "
        "int reduction, bool compute_grad) -> (Tensor, Tensor)");
  m.def("xent(Tensor logits, Tensor target, float alpha, int ignore_index, float label_smoothing, "
        "int reduction) -> Tensor");
}

TORCH_LIBRARY_IMPL(powergrad_cpp, CPU, m) { m.impl("xent_fused", xent_fused_cpu); }

TORCH_LIBRARY_IMPL(powergrad_cpp, Autograd, m) {
  m.impl("xent", xent_autograd);
  // xent_fused is xent's kernel below autograd (its gradient output is data, not a graph): not differentiable.
  m.impl("xent_fused", torch::CppFunction::makeFallthrough());
}
