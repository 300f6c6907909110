// XLA FFI handlers of the PGT cross-entropy (docs/design.md §2.1, §2.3), templates over the backend.
//
// The JAX side (python/powergrad/jax.py) folds any leading dimensions into rows and keeps the
// class dimension last, so every handler sees logits [rows x cols] (dense, ld = cols) and targets
// [rows] (int32 / int64 class indices) or [rows x cols] (probabilities of the logits' dtype). All
// handlers use Reduction::kNone: the reduction is a sum over `rows` floats composed in JAX, and the
// cotangent reaches the backward as one float per row, applied exactly (Upstream::values). So no
// handler needs a workspace (docs/design.md §6: only reduced losses do), and nothing is allocated.
//
//   pg_jax_xent_fwd     logits, targets           -> loss[rows], lse_alpha[rows]
//   pg_jax_xent_bwd     logits, targets, lse_alpha[rows], g[rows] -> dlogits [rows x cols]
//   pg_jax_xent_stats   logits shard, targets     -> stats[rows x 8]            (RowStats)
//   pg_jax_xent_merge   parts[shards x rows x 8]  -> merged[rows x 8]
//
// Attributes: alpha, ignore_index, label_smoothing, total_cols (0: cols; the vocabulary-parallel
// form passes the full vocabulary and targets already placed in the shard's coordinates). Its loss
// and lse_alpha come from the merged statistics in JAX (lse = m + log s, docs/design.md §2.3).
#pragma once

#include <cstdint>
#include <string>

#include "common.hpp"
#include "powergrad/xent.hpp"

namespace powergrad_jax {

// The argument names of docs/design.md §8, as the caller of powergrad.jax spells them.
inline constexpr pg::detail::XentArgNames kXentJaxNames = {
    "backend",          "rows (logits.shape[:-1])", "logits.shape[-1]", "ld",
    "col_offset",       "total_cols",               "alpha",            "label_smoothing",
    "reduction",        "logits",                   "targets",          "targets",
    "targets row stride", "bad_target_count",       "cotangent scale",  "cotangent",
    "loss",             "lse",                      "lse_alpha",        "dlogits",
    "dlogits row stride", "dlogits",                "dlogits row stride", "saved lse_alpha",
    "out",              "out row stride",           "scale",            "row_scale",
    "stats",            "merged stats",             "xent_workspace_bytes()",
    // The options of docs/design.md §2.5 (powergrad.jax does not pass them yet).
    "weight",           "z_loss_scale",             "softcap",          "z_loss",
    "argmax",           "correct"};
// One name per field: a field added to XentArgNames must be named here too (a missing initialiser
// would print "(null)" in a message).
static_assert(sizeof(pg::detail::XentArgNames) == 37 * sizeof(const char*),
              "XentArgNames changed: update kXentJaxNames");

struct XentAttrs {
  float alpha;
  int64_t ignore_index;
  float label_smoothing;
  int64_t total_cols;
};

inline ffi::Error check_count(const char* name, size_t have, int64_t want) {
  if (as_i64(have) == want) return ffi::Error::Success();
  return invalid(std::string(name) + " has " + std::to_string(have) + " elements, " + std::to_string(want) +
                 " expected");
}

// Builds the problem for logits of storage type T and calls f(problem) with the targets' type:
// ClassTargets<int32_t | int64_t> for integer targets, DenseTargets<T> for targets of T.
template <class T, class F>
ffi::Error with_problem(const ffi::AnyBuffer& logits, const ffi::AnyBuffer& targets, const XentAttrs& a, F&& f) {
  const int64_t cols = last_dim(logits);
  const int64_t rows = cols > 0 ? as_i64(logits.element_count()) / cols : 0;
  auto fill = [&](auto& p) {
    p.logits = static_cast<const T*>(logits.untyped_data());
    p.rows = rows;
    p.cols = cols;
    p.alpha = a.alpha;
    p.label_smoothing = a.label_smoothing;
    p.reduction = pg::Reduction::kNone;
    p.total_cols = a.total_cols;
  };
  const ffi::DataType tt = targets.element_type();
  if (tt == ffi::DataType::S32 || tt == ffi::DataType::S64) {
    if (auto e = check_count("targets", targets.element_count(), rows); e.failure()) return e;
    if (tt == ffi::DataType::S32) {
      pg::XentProblem<T, pg::ClassTargets<int32_t>> p;
      fill(p);
      p.targets = {static_cast<const int32_t*>(targets.untyped_data()), a.ignore_index};
      return f(p);
    }
    pg::XentProblem<T, pg::ClassTargets<int64_t>> p;
    fill(p);
    p.targets = {static_cast<const int64_t*>(targets.untyped_data()), a.ignore_index};
    return f(p);
  }
  if (tt == ffi_dtype_of<T>()) {
    if (auto e = check_count("targets", targets.element_count(), rows * cols); e.failure()) return e;
    pg::XentProblem<T, pg::DenseTargets<T>> p;
    fill(p);
    p.targets = {static_cast<const T*>(targets.untyped_data()), cols};
    return f(p);
  }
  return invalid(std::string("targets has dtype ") + dtype_name(tt) + "; int32 or int64 class indices, or " +
                 "probabilities of the logits' dtype (" + dtype_name(logits.element_type()) + "), expected");
}

template <pg::Backend B>
ffi::Error xent_fwd(pg::stream_t stream, ffi::AnyBuffer logits, ffi::AnyBuffer targets, XentAttrs a,
                    ffi::Result<ffi::Buffer<ffi::F32>> loss, ffi::Result<ffi::Buffer<ffi::F32>> lse_alpha) {
  return with_float_type(logits.element_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_problem<T>(logits, targets, a, [&](auto p) {
      if (auto e = check_count("loss", loss->element_count(), p.rows); e.failure()) return e;
      if (auto e = check_count("lse_alpha", lse_alpha->element_count(), p.rows); e.failure()) return e;
      pg::XentOutputs<T> out;
      out.loss = loss->typed_data();
      out.lse_alpha = lse_alpha->typed_data();
      return error_of(pg::detail::forward_backward(kXentJaxNames, B, p, pg::Upstream{}, out, nullptr, 0, stream));
    });
  });
}

template <pg::Backend B>
ffi::Error xent_bwd(pg::stream_t stream, ffi::AnyBuffer logits, ffi::AnyBuffer targets,
                    ffi::Buffer<ffi::F32> saved_lse_alpha, ffi::Buffer<ffi::F32> g, XentAttrs a,
                    ffi::Result<ffi::AnyBuffer> dlogits) {
  return with_float_type(logits.element_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (dlogits->element_type() != logits.element_type())
      return invalid(std::string("dlogits has dtype ") + dtype_name(dlogits->element_type()) + ", not the logits' " +
                     dtype_name(logits.element_type()));
    return with_problem<T>(logits, targets, a, [&](auto p) {
      if (auto e = check_count("saved lse_alpha", saved_lse_alpha.element_count(), p.rows); e.failure()) return e;
      if (auto e = check_count("cotangent", g.element_count(), p.rows); e.failure()) return e;
      if (auto e = check_count("dlogits", dlogits->element_count(), p.rows * p.cols); e.failure()) return e;
      const pg::Upstream up{1.f, g.typed_data()};
      return error_of(pg::detail::backward(kXentJaxNames, B, p, up, saved_lse_alpha.typed_data(),
                                           static_cast<T*>(dlogits->untyped_data()), 0, nullptr, 0, stream));
    });
  });
}

// Floats per row of the exchanged statistics (RowStats: docs/design.md §2.3).
inline constexpr int64_t kStatsFloats = static_cast<int64_t>(sizeof(pg::RowStats) / sizeof(float));
static_assert(sizeof(pg::RowStats) % sizeof(float) == 0, "RowStats is a whole number of floats");

template <pg::Backend B>
ffi::Error xent_stats(pg::stream_t stream, ffi::AnyBuffer logits, ffi::AnyBuffer targets, XentAttrs a,
                      ffi::Result<ffi::Buffer<ffi::F32>> stats) {
  return with_float_type(logits.element_type(), "logits", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return with_problem<T>(logits, targets, a, [&](auto p) {
      if (auto e = check_count("stats", stats->element_count(), kStatsFloats * p.rows); e.failure()) return e;
      return error_of(pg::detail::shard_stats(kXentJaxNames, B, p, reinterpret_cast<pg::RowStats*>(stats->typed_data()),
                                              stream));
    });
  });
}

template <pg::Backend B>
ffi::Error xent_merge(pg::stream_t stream, ffi::Buffer<ffi::F32> parts, float alpha,
                      ffi::Result<ffi::Buffer<ffi::F32>> merged) {
  auto d = parts.dimensions();
  if (d.size() != 3 || d[2] != kStatsFloats) return invalid("parts must have shape [shards, rows, 8]");
  if (auto e = check_count("merged stats", merged->element_count(), kStatsFloats * d[1]); e.failure()) return e;
  return error_of(pg::xent_merge_stats(B, reinterpret_cast<const pg::RowStats*>(parts.typed_data()), d[0], d[1], alpha,
                                       reinterpret_cast<pg::RowStats*>(merged->typed_data()), stream));
}

}  // namespace powergrad_jax

// The bindings, shared by the host and CUDA translation units: BINDER is the opening of the
// binding (ffi::Ffi::Bind() on the host, plus the stream context for CUDA).
#define PG_JAX_XENT_ATTRS                                                                             \
  Attr<float>("alpha").Attr<int64_t>("ignore_index").Attr<float>("label_smoothing").Attr<int64_t>("total_cols")
#define PG_JAX_BIND_XENT_FWD(BINDER)                                                                  \
  BINDER.Arg<::xla::ffi::AnyBuffer>().Arg<::xla::ffi::AnyBuffer>().PG_JAX_XENT_ATTRS                  \
      .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>().Ret<::xla::ffi::Buffer<::xla::ffi::F32>>()
#define PG_JAX_BIND_XENT_BWD(BINDER)                                                                  \
  BINDER.Arg<::xla::ffi::AnyBuffer>().Arg<::xla::ffi::AnyBuffer>().Arg<::xla::ffi::Buffer<::xla::ffi::F32>>() \
      .Arg<::xla::ffi::Buffer<::xla::ffi::F32>>().PG_JAX_XENT_ATTRS.Ret<::xla::ffi::AnyBuffer>()
#define PG_JAX_BIND_XENT_STATS(BINDER)                                                                \
  BINDER.Arg<::xla::ffi::AnyBuffer>().Arg<::xla::ffi::AnyBuffer>().PG_JAX_XENT_ATTRS                  \
      .Ret<::xla::ffi::Buffer<::xla::ffi::F32>>()
#define PG_JAX_BIND_XENT_MERGE(BINDER)                                                                \
  BINDER.Arg<::xla::ffi::Buffer<::xla::ffi::F32>>().Attr<float>("alpha").Ret<::xla::ffi::Buffer<::xla::ffi::F32>>()
