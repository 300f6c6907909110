// The XLA FFI handlers for XLA's "cpu" platform: powergrad's host backend on host buffers.
// Registered from Python under the names below (python/powergrad/jax.py).
#include <cstring>

#include "bucket_handlers.hpp"
#include "xent_handlers.hpp"

namespace powergrad_jax {
namespace {

constexpr pg::Backend kB = pg::Backend::kHost;

struct HostEnv {
  pg::stream_t stream = nullptr;
  ffi::Error copy(void* dst, const void* src, size_t bytes) {
    std::memcpy(dst, src, bytes);
    return ffi::Error::Success();
  }
  void* workspace(size_t) { return nullptr; }  // the host backend needs none
};

ffi::Error XentFwd(ffi::AnyBuffer z, ffi::AnyBuffer y, float alpha, int64_t ignore, float eps, int64_t total,
                   ffi::Result<ffi::Buffer<ffi::F32>> loss, ffi::Result<ffi::Buffer<ffi::F32>> lse_alpha) {
  return xent_fwd<kB>(nullptr, z, y, {alpha, ignore, eps, total}, loss, lse_alpha);
}
ffi::Error XentBwd(ffi::AnyBuffer z, ffi::AnyBuffer y, ffi::Buffer<ffi::F32> lse_alpha, ffi::Buffer<ffi::F32> g,
                   float alpha, int64_t ignore, float eps, int64_t total, ffi::Result<ffi::AnyBuffer> dz) {
  return xent_bwd<kB>(nullptr, z, y, lse_alpha, g, {alpha, ignore, eps, total}, dz);
}
ffi::Error XentStats(ffi::AnyBuffer z, ffi::AnyBuffer y, float alpha, int64_t ignore, float eps, int64_t total,
                     ffi::Result<ffi::Buffer<ffi::F32>> stats) {
  return xent_stats<kB>(nullptr, z, y, {alpha, ignore, eps, total}, stats);
}
ffi::Error XentMerge(ffi::Buffer<ffi::F32> parts, float alpha, ffi::Result<ffi::Buffer<ffi::F32>> merged) {
  return xent_merge<kB>(nullptr, parts, alpha, merged);
}
ffi::Error ClipNorm(ffi::RemainingArgs args, float max_norm, int64_t scope, ffi::Result<ffi::Buffer<ffi::F32>> norms,
                    ffi::RemainingRets rets) {
  HostEnv env;
  return clip_norm<kB>(env, args, max_norm, scope, norms, rets);
}
ffi::Error Power(ffi::RemainingArgs args, float beta, int64_t preserve, int64_t scope, ffi::RemainingRets rets) {
  HostEnv env;
  return power<kB>(env, args, beta, preserve, scope, rets);
}
ffi::Error Agc(ffi::RemainingArgs args, float clip, float eps, float beta, int64_t preserve,
               ffi::Span<const int64_t> rows, ffi::RemainingRets rets) {
  HostEnv env;
  return agc<kB>(env, args, clip, eps, beta, preserve, rows, rets);
}

}  // namespace
}  // namespace powergrad_jax

namespace pj = powergrad_jax;
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_fwd_cpu, pj::XentFwd, PG_JAX_BIND_XENT_FWD(::xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_bwd_cpu, pj::XentBwd, PG_JAX_BIND_XENT_BWD(::xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_stats_cpu, pj::XentStats, PG_JAX_BIND_XENT_STATS(::xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_merge_cpu, pj::XentMerge, PG_JAX_BIND_XENT_MERGE(::xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_clip_norm_cpu, pj::ClipNorm, PG_JAX_BIND_CLIP_NORM(::xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_power_cpu, pj::Power, PG_JAX_BIND_POWER(::xla::ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_agc_cpu, pj::Agc, PG_JAX_BIND_AGC(::xla::ffi::Ffi::Bind()));
