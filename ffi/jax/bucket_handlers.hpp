// XLA FFI handlers of the gradient-bucket transforms (docs/design.md §2.4) over a pytree's leaves,
// templates over the backend.
//
// JAX passes the leaves as separate buffers (one dtype per call: python/powergrad/jax.py groups a
// tree by dtype) and gets them back as outputs aliased to the inputs (input_output_aliases), so the
// in-place ops rewrite XLA's own buffers; where XLA did not alias an output, the input is copied
// into it first. Each call builds the plan on the host (it validates the tensors: docs/design.md
// §8), copies it into a workspace from XLA's scratch allocator (CUDA only; the host backend needs
// none) and runs the op: at most three kernels for the whole tree.
//
//   pg_jax_clip_norm   grads...            -> norms[groups], grads...   (max_norm, scope)
//   pg_jax_power       grads...            -> grads...                  (beta, preserve, scope)
//   pg_jax_agc         grads..., params... -> grads...                  (clip, eps, beta, preserve, rows[])
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"
#include "powergrad/bucket.hpp"

namespace powergrad_jax {

inline constexpr pg::detail::BucketArgNames kBucketJaxNames = {
    "backend", "grads", "the number of leaves", "units", "bucket_plan_build", "bucket_plan_bytes()",
    "bucket_workspace_bytes()"};
static_assert(sizeof(pg::detail::BucketArgNames) == 7 * sizeof(const char*),
              "BucketArgNames changed: update kBucketJaxNames");

// A 16-byte aligned host buffer holding one plan image.
class PlanBuffer {
 public:
  explicit PlanBuffer(size_t bytes) : raw_(bytes / sizeof(uint64_t) + 3), bytes_(bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(raw_.data());
    data_ = reinterpret_cast<void*>((a + 15) & ~uintptr_t{15});
  }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::vector<uint64_t> raw_;
  size_t bytes_;
  void* data_;
};

// One call's leaves: grads are args [0, n) and rets [ret_first, ret_first + n); AGC's parameters
// are args [n, 2n) and `rows` their units (sizes along the unit axis, laid out first by the caller).
struct Leaves {
  const ffi::RemainingArgs* args;
  ffi::RemainingRets* rets;
  size_t n;
  size_t ret_first;
  bool with_params;
  ffi::Span<const int64_t> rows;
};

// Env: copy(dst, src, bytes) and workspace(bytes) for the backend, and its stream.
// op(plan, plan_bytes, workspace, workspace_bytes) runs the transform on the built plan.
template <pg::Backend B, class T, class P, class Env, class Op>
ffi::Error run_on_leaves(Env& env, const Leaves& l, pg::BucketUnits units, Op&& op) {
  std::vector<pg::BucketTensor<T, P>> ts(l.n);
  std::vector<const void*> in(l.n);
  for (size_t i = 0; i < l.n; ++i) {
    auto g = l.args->get<ffi::AnyBuffer>(i);
    auto o = l.rets->get<ffi::AnyBuffer>(l.ret_first + i);
    if (g.has_error()) return g.error();
    if (o.has_error()) return o.error();
    const std::string name = "grads[" + std::to_string(i) + "]";
    if (g->element_type() != ffi_dtype_of<T>())
      return invalid(name + " has dtype " + dtype_name(g->element_type()) + "; every leaf of one call has dtype " +
                     dtype_name(ffi_dtype_of<T>()));
    if ((*o)->element_type() != g->element_type() || (*o)->element_count() != g->element_count())
      return invalid("output " + name + " does not match its input");
    in[i] = g->untyped_data();
    ts[i].grad = static_cast<T*>((*o)->untyped_data());
    ts[i].numel = as_i64(g->element_count());
    if (l.with_params) {
      auto w = l.args->get<ffi::AnyBuffer>(l.n + i);
      if (w.has_error()) return w.error();
      if (w->element_type() != ffi_dtype_of<P>() || w->element_count() != g->element_count())
        return invalid("params[" + std::to_string(i) + "] (" + dtype_name(w->element_type()) + ", " +
                       std::to_string(w->element_count()) + " elements) does not match " + name +
                       " (parameters have the gradients' dtype or float32, and the same size)");
      ts[i].param = static_cast<const P*>(w->untyped_data());
      ts[i].rows = l.rows[i];
    }
  }
  PlanBuffer plan(pg::bucket_plan_bytes(as_i64(l.n)));
  const pg::Status s = pg::detail::plan_build<T, P>(
      kBucketJaxNames, B, [&ts](int64_t i) { return ts[static_cast<size_t>(i)]; }, ts.data(),
      sizeof(pg::BucketTensor<T, P>), as_i64(l.n), units, plan.data(), plan.bytes());
  if (s != pg::Status::kSuccess) return error_of(s);
  size_t ws_bytes = 0;
  if (auto e = error_of(pg::detail::workspace_bytes(kBucketJaxNames, plan.data(), plan.bytes(), &ws_bytes)); e.failure())
    return e;
  void* ws = nullptr;
  if (ws_bytes > 0) {
    ws = env.workspace(ws_bytes);
    if (ws == nullptr) return ffi::Error::Internal("powergrad: XLA's scratch allocator gave no workspace of " +
                                                   std::to_string(ws_bytes) + " bytes");
  }
  for (size_t i = 0; i < l.n; ++i)
    if (ts[i].numel > 0 && in[i] != ts[i].grad)
      if (auto e = env.copy(ts[i].grad, in[i], static_cast<size_t>(ts[i].numel) * sizeof(T)); e.failure()) return e;
  if (auto e = error_of(pg::detail::plan_upload(kBucketJaxNames, plan.data(), plan.bytes(), ws, ws_bytes, env.stream));
      e.failure())
    return e;
  return error_of(op(plan.data(), plan.bytes(), ws, ws_bytes));
}

inline ffi::Error check_leaves(const ffi::RemainingArgs& args, size_t n) {
  if (n == 0) return invalid("grads is empty (no leaf to transform)");
  if (args.size() < n) return invalid("fewer arguments than leaves");
  return ffi::Error::Success();
}

template <pg::Backend B, class Env>
ffi::Error clip_norm(Env& env, ffi::RemainingArgs args, float max_norm, int64_t scope,
                     ffi::Result<ffi::Buffer<ffi::F32>> norms, ffi::RemainingRets rets) {
  const size_t n = args.size();
  if (auto e = check_leaves(args, n); e.failure()) return e;
  if (rets.size() != n) return invalid("clip_norm: the outputs do not match the leaves");
  const int64_t groups = scope == static_cast<int64_t>(pg::BucketScope::kBucket) ? 1 : as_i64(n);
  if (as_i64(norms->element_count()) != groups) return invalid("norms must have one element per group");
  const Leaves l{&args, &rets, n, 0, false, {}};
  auto g0 = args.get<ffi::AnyBuffer>(0);
  if (g0.has_error()) return g0.error();
  return with_float_type(g0->element_type(), "grads[0]", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return run_on_leaves<B, T, T>(env, l, pg::BucketUnits::kTensor, [&](void* plan, size_t pb, void* ws, size_t wb) {
      return pg::detail::clip_norm<T>(kBucketJaxNames, plan, pb, max_norm, static_cast<pg::BucketScope>(scope),
                                      norms->typed_data(), ws, wb, nullptr, env.stream);
    });
  });
}

template <pg::Backend B, class Env>
ffi::Error power(Env& env, ffi::RemainingArgs args, float beta, int64_t preserve, int64_t scope,
                 ffi::RemainingRets rets) {
  const size_t n = args.size();
  if (auto e = check_leaves(args, n); e.failure()) return e;
  if (rets.size() != n) return invalid("power: the outputs do not match the leaves");
  const Leaves l{&args, &rets, n, 0, false, {}};
  auto g0 = args.get<ffi::AnyBuffer>(0);
  if (g0.has_error()) return g0.error();
  return with_float_type(g0->element_type(), "grads[0]", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return run_on_leaves<B, T, T>(env, l, pg::BucketUnits::kTensor, [&](void* plan, size_t pb, void* ws, size_t wb) {
      return pg::detail::power<T>(kBucketJaxNames, plan, pb, beta, static_cast<pg::NormPreserve>(preserve),
                                  static_cast<pg::BucketScope>(scope), ws, wb, nullptr, env.stream);
    });
  });
}

template <pg::Backend B, class Env>
ffi::Error agc(Env& env, ffi::RemainingArgs args, float clip, float eps, float beta, int64_t preserve,
               ffi::Span<const int64_t> rows, ffi::RemainingRets rets) {
  const size_t n = rets.size();
  if (auto e = check_leaves(args, n); e.failure()) return e;
  if (args.size() != 2 * n || rows.size() != n)
    return invalid("agc: expected one parameter and one unit count per gradient leaf");
  const Leaves l{&args, &rets, n, 0, true, rows};
  auto g0 = args.get<ffi::AnyBuffer>(0);
  auto w0 = args.get<ffi::AnyBuffer>(n);
  if (g0.has_error()) return g0.error();
  if (w0.has_error()) return w0.error();
  const bool params_f32 = w0->element_type() == ffi::DataType::F32;
  return with_float_type(g0->element_type(), "grads[0]", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto run = [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      return run_on_leaves<B, T, P>(env, l, pg::BucketUnits::kRows, [&](void* plan, size_t pb, void* ws, size_t wb) {
        return pg::detail::agc<T, P>(kBucketJaxNames, plan, pb, clip, eps, beta,
                                     static_cast<pg::NormPreserve>(preserve), ws, wb, nullptr, env.stream);
      });
    };
    if (params_f32) return run(Tag<float>{});
    return run(Tag<T>{});
  });
}

}  // namespace powergrad_jax

#define PG_JAX_BIND_CLIP_NORM(BINDER)                                                                  \
  BINDER.RemainingArgs().Attr<float>("max_norm").Attr<int64_t>("scope")                               \
      .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>().RemainingRets()
#define PG_JAX_BIND_POWER(BINDER)                                                                      \
  BINDER.RemainingArgs().Attr<float>("beta").Attr<int64_t>("preserve").Attr<int64_t>("scope").RemainingRets()
#define PG_JAX_BIND_AGC(BINDER)                                                                        \
  BINDER.RemainingArgs().Attr<float>("clip").Attr<float>("eps").Attr<float>("beta").Attr<int64_t>("preserve") \
      .Attr<::xla::ffi::Span<const int64_t>>("rows").RemainingRets()
