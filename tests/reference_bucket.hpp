// Float64 reference of the gradient-bucket transforms (docs/design.md §2.4), written from the formulas
// and the cited semantics (torch.nn.utils.clip_grad_norm_, timm's adaptive_clip_grad), sharing no
// code with the library. Inputs are the (already rounded) gradient values as doubles.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace pgref {

using Tensors = std::vector<std::vector<double>>;

inline double sgn_pow(double x, double beta) { return std::copysign(std::pow(std::fabs(x), beta), x); }

// Power map over the spans of one scope (a list of (tensor, begin, end)); preserve 0 none, 1 L1, 2 L2.
struct Span {
  size_t t;
  size_t begin, end;
};
inline void power_scope(Tensors& y, const Tensors& x, const std::vector<Span>& spans, double beta, int preserve) {
  double before = 0, after = 0;
  for (const Span& s : spans)
    for (size_t i = s.begin; i < s.end; ++i) {
      const double v = x[s.t][i], p = sgn_pow(v, beta);
      y[s.t][i] = p;
      before += preserve == 1 ? std::fabs(v) : v * v;
      after += preserve == 1 ? std::fabs(p) : p * p;
    }
  if (preserve == 0 || after == 0) return;
  const double k = preserve == 1 ? before / after : std::sqrt(before / after);
  for (const Span& s : spans)
    for (size_t i = s.begin; i < s.end; ++i) y[s.t][i] *= k;
}

inline std::vector<std::vector<Span>> scopes(const Tensors& x, bool whole_bucket) {
  std::vector<std::vector<Span>> out;
  if (whole_bucket) out.emplace_back();
  for (size_t t = 0; t < x.size(); ++t) {
    if (!whole_bucket) out.emplace_back();
    out.back().push_back({t, 0, x[t].size()});
  }
  return out;
}

inline Tensors power(const Tensors& x, double beta, int preserve, bool whole_bucket) {
  Tensors y = x;
  for (const auto& sc : scopes(x, whole_bucket)) power_scope(y, x, sc, beta, preserve);
  return y;
}

// torch.nn.utils.clip_grad_norm_ (L2): coef = clamp(max_norm / (norm + 1e-6), max = 1), NaN kept.
inline Tensors clip_norm(const Tensors& x, double max_norm, bool whole_bucket, std::vector<double>& norms) {
  Tensors y = x;
  norms.clear();
  for (const auto& sc : scopes(x, whole_bucket)) {
    double ss = 0;
    for (const Span& s : sc)
      for (size_t i = s.begin; i < s.end; ++i) ss += x[s.t][i] * x[s.t][i];
    const double norm = std::sqrt(ss);
    double coef = max_norm / (norm + 1e-6);
    if (coef > 1) coef = 1;
    norms.push_back(norm);
    for (const Span& s : sc)
      for (size_t i = s.begin; i < s.end; ++i) y[s.t][i] = x[s.t][i] * coef;
  }
  return y;
}

// timm's adaptive_clip_grad per unit (rows[t] slices along dim 0; 0 or 1 = the whole tensor), then the
// power map per unit (beta, preserve) on the clipped unit.
inline Tensors agc(const Tensors& g, const Tensors& w, const std::vector<int64_t>& rows, double clip, double eps,
                   double beta, int preserve) {
  Tensors y = g;
  for (size_t t = 0; t < g.size(); ++t) {
    const size_t n = g[t].size();
    if (n == 0) continue;
    const size_t units = rows[t] > 1 ? static_cast<size_t>(rows[t]) : 1, len = n / units;
    for (size_t u = 0; u < units; ++u) {
      double gs = 0, ws = 0;
      for (size_t i = u * len; i < (u + 1) * len; ++i) {
        gs += g[t][i] * g[t][i];
        ws += w[t][i] * w[t][i];
      }
      double wn = std::sqrt(ws);
      if (wn < eps) wn = eps;  // torch.clamp(min=eps): NaN stays NaN
      const double limit = wn * clip, gn = std::sqrt(gs);
      const bool keep = gn < limit;
      const double denom = gn < 1e-6 ? 1e-6 : gn;
      Tensors clipped(1, std::vector<double>(len));
      for (size_t i = 0; i < len; ++i) clipped[0][i] = keep ? g[t][u * len + i] : g[t][u * len + i] * (limit / denom);
      Tensors out = clipped;
      power_scope(out, clipped, {{0, 0, len}}, beta, preserve);
      for (size_t i = 0; i < len; ++i) y[t][u * len + i] = out[0][i];
    }
  }
  return y;
}

}  // namespace pgref
