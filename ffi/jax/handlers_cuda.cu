// The XLA FFI handlers for XLA's "CUDA" platform: powergrad's CUDA backend on device buffers, on
// the stream XLA passes; the bucket ops' workspace comes from XLA's scratch allocator. Nothing
// synchronises the host (the one host-to-device copy per bucket call, the plan, is from pageable
// memory: cudaMemcpyAsync returns once it is staged). Compiled by nvcc only.
#include <cuda_runtime.h>

#include "bucket_handlers.hpp"
#include "xent_handlers.hpp"

namespace powergrad_jax {
namespace {

constexpr pg::Backend kB = pg::Backend::kCuda;
using Stream = ffi::PlatformStream<cudaStream_t>;

pg::stream_t as_stream(cudaStream_t s) { return reinterpret_cast<pg::stream_t>(s); }

struct CudaEnv {
  pg::stream_t stream;
  ffi::ScratchAllocator* scratch;
  ffi::Error copy(void* dst, const void* src, size_t bytes) {
    const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, reinterpret_cast<cudaStream_t>(stream));
    if (e != cudaSuccess) return ffi::Error::Internal(std::string("powergrad: cudaMemcpyAsync: ") + cudaGetErrorString(e));
    return ffi::Error::Success();
  }
  void* workspace(size_t bytes) {
    auto p = scratch->Allocate(bytes, pg::detail::kBucketAlign);
    return p.has_value() ? *p : nullptr;
  }
};

ffi::Error XentFwd(cudaStream_t s, ffi::AnyBuffer z, ffi::AnyBuffer y, float alpha, int64_t ignore, float eps,
                   int64_t total, ffi::Result<ffi::Buffer<ffi::F32>> loss, ffi::Result<ffi::Buffer<ffi::F32>> lse_alpha) {
  return xent_fwd<kB>(as_stream(s), z, y, {alpha, ignore, eps, total}, loss, lse_alpha);
}
ffi::Error XentBwd(cudaStream_t s, ffi::AnyBuffer z, ffi::AnyBuffer y, ffi::Buffer<ffi::F32> lse_alpha,
                   ffi::Buffer<ffi::F32> g, float alpha, int64_t ignore, float eps, int64_t total,
                   ffi::Result<ffi::AnyBuffer> dz) {
  return xent_bwd<kB>(as_stream(s), z, y, lse_alpha, g, {alpha, ignore, eps, total}, dz);
}
ffi::Error XentStats(cudaStream_t s, ffi::AnyBuffer z, ffi::AnyBuffer y, float alpha, int64_t ignore, float eps,
                     int64_t total, ffi::Result<ffi::Buffer<ffi::F32>> stats) {
  return xent_stats<kB>(as_stream(s), z, y, {alpha, ignore, eps, total}, stats);
}
ffi::Error XentMerge(cudaStream_t s, ffi::Buffer<ffi::F32> parts, float alpha, ffi::Result<ffi::Buffer<ffi::F32>> merged) {
  return xent_merge<kB>(as_stream(s), parts, alpha, merged);
}
ffi::Error ClipNorm(cudaStream_t s, ffi::ScratchAllocator scratch, ffi::RemainingArgs args, float max_norm,
                    int64_t scope, ffi::Result<ffi::Buffer<ffi::F32>> norms, ffi::RemainingRets rets) {
  CudaEnv env{as_stream(s), &scratch};
  return clip_norm<kB>(env, args, max_norm, scope, norms, rets);
}
ffi::Error Power(cudaStream_t s, ffi::ScratchAllocator scratch, ffi::RemainingArgs args, float beta, int64_t preserve,
                 int64_t scope, ffi::RemainingRets rets) {
  CudaEnv env{as_stream(s), &scratch};
  return power<kB>(env, args, beta, preserve, scope, rets);
}
ffi::Error Agc(cudaStream_t s, ffi::ScratchAllocator scratch, ffi::RemainingArgs args, float clip, float eps,
               float beta, int64_t preserve, ffi::Span<const int64_t> rows, ffi::RemainingRets rets) {
  CudaEnv env{as_stream(s), &scratch};
  return agc<kB>(env, args, clip, eps, beta, preserve, rows, rets);
}

}  // namespace
}  // namespace powergrad_jax

namespace pj = powergrad_jax;
#define PG_JAX_CUDA_BIND ::xla::ffi::Ffi::Bind().Ctx<pj::Stream>()
#define PG_JAX_CUDA_BIND_SCRATCH ::xla::ffi::Ffi::Bind().Ctx<pj::Stream>().Ctx<::xla::ffi::ScratchAllocator>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_fwd_cuda, pj::XentFwd, PG_JAX_BIND_XENT_FWD(PG_JAX_CUDA_BIND));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_bwd_cuda, pj::XentBwd, PG_JAX_BIND_XENT_BWD(PG_JAX_CUDA_BIND));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_stats_cuda, pj::XentStats, PG_JAX_BIND_XENT_STATS(PG_JAX_CUDA_BIND));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_xent_merge_cuda, pj::XentMerge, PG_JAX_BIND_XENT_MERGE(PG_JAX_CUDA_BIND));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_clip_norm_cuda, pj::ClipNorm, PG_JAX_BIND_CLIP_NORM(PG_JAX_CUDA_BIND_SCRATCH));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_power_cuda, pj::Power, PG_JAX_BIND_POWER(PG_JAX_CUDA_BIND_SCRATCH));
XLA_FFI_DEFINE_HANDLER_SYMBOL(pg_jax_agc_cuda, pj::Agc, PG_JAX_BIND_AGC(PG_JAX_CUDA_BIND_SCRATCH));
