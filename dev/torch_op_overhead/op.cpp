// What calling an op registered from C++ (TORCH_LIBRARY) costs from Python, next to F.cross_entropy:
// the floor a compiled powergrad.torch extension would reach (docs/python.md, "Registering the ops
// from C++"). The kernels do no work: `noop` allocates the loss and a gradient-sized buffer as the
// fused op would; `loss` goes through a C++ autograd kernel (torch::autograd::Function) that saves
// that buffer and scales it in backward, as the fused op's backward does. Not part of the package.
//
// Build (against the torch of the Python environment; its C++ ABI flag must match
// torch._C._GLIBCXX_USE_CXX11_ABI):
//   TI=$(python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
//   g++ -O2 -shared -fPIC -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -I$TI/include \
//       -I$TI/include/torch/csrc/api/include dev/torch_op_overhead/op.cpp -o /tmp/libpgspike.so \
//       -L$TI/lib -ltorch -ltorch_cpu -lc10 -Wl,-rpath,$TI/lib
//   python dev/torch_op_overhead/measure.py /tmp/libpgspike.so
#include <torch/library.h>
#include <torch/autograd.h>
#include <ATen/ATen.h>

static std::tuple<at::Tensor, at::Tensor> noop_cpu(const at::Tensor& x, const at::Tensor& /*t*/,
                                                    double /*alpha*/) {
  auto loss = at::empty({}, x.options().dtype(at::kFloat));
  auto grad = at::empty_like(x);
  return {loss, grad};
}

class NoopFn : public torch::autograd::Function<NoopFn> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& t,
                            double alpha) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pgspike::noop", "").typed<
        std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double)>();
    auto [loss, grad] = op.call(x, t, alpha);
    ctx->save_for_backward({grad});
    return loss;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list go) {
    auto g = ctx->get_saved_variables()[0];
    return {g.mul_(go[0]), at::Tensor(), at::Tensor()};
  }
};

static at::Tensor loss_autograd(const at::Tensor& x, const at::Tensor& t, double alpha) {
  return NoopFn::apply(x, t, alpha);
}

TORCH_LIBRARY(pgspike, m) {
  m.def("noop(Tensor x, Tensor t, float alpha) -> (Tensor, Tensor)");
  m.def("loss(Tensor x, Tensor t, float alpha) -> Tensor");
}
TORCH_LIBRARY_IMPL(pgspike, CPU, m) { m.impl("noop", noop_cpu); }
TORCH_LIBRARY_IMPL(pgspike, Autograd, m) { m.impl("loss", loss_autograd); }
