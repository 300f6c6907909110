// Independent float64 reference of the PGT cross-entropy contract (docs/design.md §2.1-2.3, and the
// options of §2.5: class weights, z-loss, softcapping, token accuracy).
//
// This file deliberately shares NO code with the library: it includes no powergrad header and
// re-derives everything (16-bit decoding, the loss, the gradient, the hook form) from the text of
// the design, in double precision, with the most direct formulas. A reference built from the
// library's own math layer would prove nothing.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace pgref {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// 16-bit storage formats, decoded from the bit pattern (IEEE binary16 and bfloat16).
// ---------------------------------------------------------------------------------------------

// binary16: 1 sign, 5 exponent (bias 15), 10 fraction bits.
inline double half_bits_to_double(uint16_t h) {
  const bool neg = (h >> 15) != 0;
  const int e = (h >> 10) & 0x1F;
  const int f = h & 0x3FF;
  double v;
  if (e == 0x1F) {
    v = f ? kNaN : kInf;
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(f), -24);  // subnormal: f * 2^-14 * 2^-10
  } else {
    v = std::ldexp(static_cast<double>(1024 + f), e - 25);  // (1 + f/2^10) * 2^(e-15)
  }
  return neg ? -v : v;
}

// bfloat16: 1 sign, 8 exponent (bias 127), 7 fraction bits.
inline double bf16_bits_to_double(uint16_t b) {
  const bool neg = (b >> 15) != 0;
  const int e = (b >> 7) & 0xFF;
  const int f = b & 0x7F;
  double v;
  if (e == 0xFF) {
    v = f ? kNaN : kInf;
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(f), -133);  // f * 2^-126 * 2^-7
  } else {
    v = std::ldexp(static_cast<double>(128 + f), e - 134);  // (1 + f/2^7) * 2^(e-127)
  }
  return neg ? -v : v;
}

// Round-to-nearest-even encoding of a double into a 16-bit IEEE-like format with `mbits` fraction
// bits and exponent bias `bias` (1 sign bit, 15 - mbits exponent bits). Used to make test inputs;
// callers decode the result again and feed the decoded value to the reference.
inline uint16_t encode_ieee16(double x, int mbits, int bias) {
  const uint32_t emax_field = (1u << (15 - mbits)) - 1u;
  const uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  if (std::isnan(x)) return static_cast<uint16_t>(0x7FFFu & ((emax_field << mbits) | (1u << (mbits - 1))));
  const double a = std::fabs(x);
  if (std::isinf(a)) return static_cast<uint16_t>(sign | (emax_field << mbits));
  if (a == 0.0) return sign;
  int k = 0;
  (void)std::frexp(a, &k);  // a = f * 2^k, f in [0.5, 1): the leading bit has weight 2^(k-1)
  const int min_q = 1 - bias - mbits;  // quantum of the subnormals
  int q = (k - 1 - mbits) > min_q ? (k - 1 - mbits) : min_q;
  // Scaling by a power of two is exact; nearbyint rounds half to even in the default mode.
  const double n = std::nearbyint(std::ldexp(a, -q));
  uint64_t ni = static_cast<uint64_t>(n);
  if (ni == 0) return sign;
  if (ni < (1ull << mbits)) return static_cast<uint16_t>(sign | ni);  // subnormal (q == min_q)
  while (ni >= (2ull << mbits)) {  // a carry out of the fraction: exact since the low bit is 0
    ni >>= 1;
    ++q;
  }
  const int64_t field = static_cast<int64_t>(q) + mbits + bias;
  if (field >= static_cast<int64_t>(emax_field)) return static_cast<uint16_t>(sign | (emax_field << mbits));
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(field) << mbits) |
                               static_cast<uint32_t>(ni - (1ull << mbits)));
}
inline uint16_t double_to_half_bits(double x) { return encode_ieee16(x, 10, 15); }
inline uint16_t double_to_bf16_bits(double x) { return encode_ieee16(x, 7, 127); }

// ---------------------------------------------------------------------------------------------
// The PGT cross-entropy, per docs/design.md §2.1 (and §2.3 for the saved statistics).
// ---------------------------------------------------------------------------------------------

enum class Red { kNone, kMean, kSum };

struct Problem {
  int64_t rows = 0, cols = 0;
  std::vector<double> z;  // rows x cols, the logits exactly as the library sees them (decoded)
  bool dense = false;
  std::vector<int64_t> y;  // hard targets (one per row)
  int64_t ignore_index = -100;
  std::vector<double> qd;  // dense targets, rows x cols (decoded)
  double alpha = 1.0;
  double eps = 0.0;  // label smoothing
  Red red = Red::kMean;
  double up_scale = 1.0;
  bool has_up_values = false;
  std::vector<double> up_values;  // [0] for kMean/kSum, [r] for kNone
  // Options (docs/design.md §2.5).
  std::vector<double> w;  // class weights, one per column; empty: no weights
  double lambda = 0.0;    // z-loss scale
  double cap = 0.0;       // softcap (0: off)
  // Rows whose class index is neither ignore_index nor in [0, C) (only the CUDA backend accepts
  // them): their loss and gradient are NaN.
};

struct Result {
  std::vector<double> m, lse, lse_a, loss_row, g, tabs;  // per row; tabs = sum_j |q_j z_j|
  std::vector<double> mass, zloss_row;                  // per row: A = sum_j q_j, lambda lse^2
  std::vector<int64_t> argmax;                          // per row: first column of the max
  std::vector<char> correct;                            // per row: argmax == target (class targets)
  std::vector<double> p, q, grad;                       // rows x cols: p' (PGT probs), target, gradient
  std::vector<double> psoft, slope;                     // rows x cols: softmax p, d(capped z)/dz
  std::vector<char> ignored, nonfinite, bad;            // per row
  // rows x cols: the element may be NaN instead of grad. A masked class (-inf) of a NaN row: the
  // contract makes both "p' = 0 for a masked class" and "the row's gradient is NaN"; either reading
  // is accepted there (grad holds the masked reading, -g q).
  std::vector<char> nan_ok;
  int64_t n_valid = 0;
  double denom = 0.0;  // the kMean divisor: n_valid, the sum of the targets' weights, or rows (dense)
  double loss_reduced = 0.0, zloss_reduced = 0.0;
};

// The logit every formula uses: z itself, or with a softcap c the capped c tanh(z / c). A masked
// logit (-inf) stays masked by the contract.
inline double capped_logit(const Problem& P, double z) {
  if (P.cap <= 0.0 || z == -kInf) return z;
  return P.cap * std::tanh(z / P.cap);
}
// d(capped)/dz by the derivative of tanh: 1 - tanh^2; 1 without a cap.
inline double cap_slope(const Problem& P, double z) {
  if (P.cap <= 0.0) return 1.0;
  const double t = std::tanh(z / P.cap);
  return 1.0 - t * t;
}

inline Result compute(const Problem& P) {
  const int64_t R = P.rows, C = P.cols;
  Result out;
  out.m.assign(R, 0.0);
  out.lse.assign(R, 0.0);
  out.lse_a.assign(R, 0.0);
  out.loss_row.assign(R, 0.0);
  out.g.assign(R, 0.0);
  out.tabs.assign(R, 0.0);
  out.mass.assign(R, 0.0);
  out.zloss_row.assign(R, 0.0);
  out.argmax.assign(R, 0);
  out.correct.assign(R, 0);
  out.p.assign(R * C, 0.0);
  out.q.assign(R * C, 0.0);
  out.grad.assign(R * C, 0.0);
  out.psoft.assign(R * C, 0.0);
  out.slope.assign(R * C, 1.0);
  out.ignored.assign(R, 0);
  out.nonfinite.assign(R, 0);
  out.bad.assign(R, 0);
  out.nan_ok.assign(R * C, 0);
  auto weight = [&](int64_t j) { return P.w.empty() ? 1.0 : P.w[j]; };

  // The mean's divisor: PyTorch divides a weighted class-target loss by the weights of the
  // targets of the counted rows, a probability-target loss by the batch size.
  for (int64_t r = 0; r < R; ++r) {
    if (!P.dense) {
      const int64_t y = P.y[r];
      out.ignored[r] = (y == P.ignore_index);
      out.bad[r] = !out.ignored[r] && (y < 0 || y >= C);
    }
    if (!out.ignored[r]) {
      ++out.n_valid;
      out.denom += (P.dense || P.w.empty()) ? 1.0 : (out.bad[r] ? 0.0 : weight(P.y[r]));
    }
  }

  for (int64_t r = 0; r < R; ++r) {
    std::vector<double> zc(C);
    for (int64_t j = 0; j < C; ++j) zc[j] = capped_logit(P, P.z[r * C + j]);
    const double* z = zc.data();
    double* q = &out.q[r * C];
    double* p = &out.p[r * C];
    double* gr = &out.grad[r * C];

    // The (weighted) target with label smoothing, as PyTorch weighs it: the one-hot part by the
    // target's weight, the uniform part (and dense targets) by each column's weight.
    double A = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      if (P.dense) {
        q[j] = weight(j) * ((1.0 - P.eps) * P.qd[r * C + j] + P.eps / static_cast<double>(C));
      } else {
        const double wy = out.bad[r] || out.ignored[r] ? 0.0 : weight(P.y[r]);
        q[j] = ((j == P.y[r]) ? (1.0 - P.eps) * wy : 0.0) + P.eps / static_cast<double>(C) * weight(j);
      }
      A += q[j];
    }
    out.mass[r] = A;

    bool nonfinite = false;
    double m = -kInf;
    int64_t n_unmasked = 0, first_max = 0;
    for (int64_t j = 0; j < C; ++j) {
      if (std::isnan(z[j]) || z[j] == kInf) nonfinite = true;
      if (z[j] != -kInf) ++n_unmasked;
      if (z[j] > m) {
        m = z[j];
        first_max = j;
      }
    }
    out.argmax[r] = first_max;
    out.correct[r] = !P.dense && !out.ignored[r] && first_max == P.y[r];
    nonfinite = nonfinite || out.bad[r];
    out.nonfinite[r] = nonfinite;
    out.m[r] = m;

    if (nonfinite) {
      out.lse[r] = out.lse_a[r] = kNaN;
      for (int64_t j = 0; j < C; ++j) p[j] = (z[j] == -kInf) ? 0.0 : kNaN;
      if (out.bad[r] && n_unmasked > 0 && !std::isnan(m) && m != kInf) {
        // A bad target does not change the statistics of the logits: only loss and gradient are NaN.
        double s = 0.0;
        for (int64_t j = 0; j < C; ++j) s += std::exp(z[j] - m);
        out.lse[r] = m + std::log(s);
      }
    } else if (n_unmasked == 0) {
      // A fully masked row is outside the contract; tests never generate one.
      out.lse[r] = out.lse_a[r] = kNaN;
      for (int64_t j = 0; j < C; ++j) p[j] = kNaN;
    } else {
      double s = 0.0, sa = 0.0;
      for (int64_t j = 0; j < C; ++j) {
        if (z[j] == -kInf) continue;
        s += std::exp(z[j] - m);
        sa += std::exp(P.alpha * (z[j] - m));  // alpha = 0: every unmasked class counts 1
      }
      out.lse[r] = m + std::log(s);
      const double log_sa = std::log(sa);
      out.lse_a[r] = (P.alpha == 0.0 ? 0.0 : P.alpha * m) + log_sa;
      for (int64_t j = 0; j < C; ++j) p[j] = (z[j] == -kInf) ? 0.0 : std::exp(P.alpha * (z[j] - m) - log_sa);
    }
    const double lse = out.lse[r];
    for (int64_t j = 0; j < C; ++j) {
      out.psoft[r * C + j] = (z[j] == -kInf) ? 0.0 : std::exp(z[j] - lse);
      out.slope[r * C + j] = cap_slope(P, P.z[r * C + j]);
    }

    // loss = -sum_j q_j log softmax(z)_j + lambda lse^2, with 0 * log p = 0 (PyTorch's form).
    double ce = 0.0, tabs = 0.0;
    for (int64_t j = 0; j < C; ++j) {
      if (q[j] == 0.0) continue;
      ce -= q[j] * (z[j] - lse);
      tabs += std::fabs(q[j] * z[j]);
    }
    out.tabs[r] = tabs;
    if (out.ignored[r]) {
      out.loss_row[r] = 0.0;
    } else {
      out.zloss_row[r] = nonfinite ? kNaN : P.lambda * lse * lse;
      out.loss_row[r] = nonfinite ? kNaN : ce + out.zloss_row[r];
    }

    // Upstream scale g_r.
    double g = 0.0;
    if (!out.ignored[r]) {
      const double v = P.has_up_values ? P.up_values[P.red == Red::kNone ? r : 0] : 1.0;
      g = P.up_scale * v;
      if (P.red == Red::kMean) g = out.denom > 0 ? g / out.denom : 0.0;
    }
    out.g[r] = g;
    // d loss / d zc_j = A p'_j - q_j + 2 lambda lse softmax_j (PGT changes p to p' in the first term
    // only), times the softcap's chain factor.
    for (int64_t j = 0; j < C; ++j) {
      const double slope = out.slope[r * C + j];
      if (out.ignored[r]) {
        gr[j] = 0.0;
      } else {
        if (nonfinite && z[j] == -kInf) {
          gr[j] = -g * q[j] * slope;
          out.nan_ok[r * C + j] = 1;
        } else {
          const double zl = P.lambda == 0.0 ? 0.0 : 2.0 * P.lambda * lse * out.psoft[r * C + j];
          gr[j] = nonfinite ? kNaN : g * (A * p[j] - q[j] + zl) * slope;
        }
      }
    }
  }

  double sum = 0.0, zsum = 0.0;
  for (int64_t r = 0; r < R; ++r) {
    sum += out.loss_row[r];
    zsum += out.zloss_row[r];
  }
  if (P.red == Red::kMean) {
    sum = out.denom > 0 ? sum / out.denom : 0.0;
    zsum = out.denom > 0 ? zsum / out.denom : 0.0;
  }
  out.loss_reduced = (P.red == Red::kNone) ? 0.0 : sum;
  out.zloss_reduced = (P.red == Red::kNone) ? 0.0 : zsum;
  return out;
}

// The ordinary softmax cross-entropy gradient g (A softmax(z) - q) with A = sum q, by the textbook
// formula: an independent check that alpha = 1 is exactly the ordinary gradient.
inline std::vector<double> softmax_grad_row(const double* z, const double* q, int64_t C, double g) {
  double A = 0.0;
  for (int64_t j = 0; j < C; ++j) A += q[j];
  double m = -kInf;
  for (int64_t j = 0; j < C; ++j) m = z[j] > m ? z[j] : m;
  double s = 0.0;
  for (int64_t j = 0; j < C; ++j) s += std::exp(z[j] - m);
  std::vector<double> d(C);
  for (int64_t j = 0; j < C; ++j) d[j] = g * (A * std::exp(z[j] - m) / s - q[j]);
  return d;
}

// alpha = 0: p' is uniform over the unmasked classes, so the gradient is g (A/n_unmasked - q).
inline std::vector<double> uniform_grad_row(const double* z, const double* q, int64_t C, double g) {
  double A = 0.0;
  for (int64_t j = 0; j < C; ++j) A += q[j];
  int64_t n = 0;
  for (int64_t j = 0; j < C; ++j) n += (z[j] != -kInf);
  std::vector<double> d(C);
  for (int64_t j = 0; j < C; ++j) d[j] = g * ((z[j] == -kInf ? 0.0 : A / static_cast<double>(n)) - q[j]);
  return d;
}

// ---------------------------------------------------------------------------------------------
// Hook form (docs/design.md §2.2): from probabilities p (p_j = 0: a class that takes no mass),
// p'_j = p_j^alpha / sum_k p_k^alpha over p_k > 0, output s (p' - q).
// ---------------------------------------------------------------------------------------------
inline std::vector<double> pgt_from_probs(const double* p, int64_t C, double alpha) {
  std::vector<double> pa(C, 0.0);
  double S = 0.0;
  for (int64_t j = 0; j < C; ++j) {
    if (std::isnan(p[j])) return std::vector<double>(C, kNaN);
    if (p[j] > 0.0) {
      pa[j] = std::pow(p[j], alpha);
      S += pa[j];
    }
  }
  for (int64_t j = 0; j < C; ++j) pa[j] /= S;
  return pa;
}

// The hook applied to an incoming gradient row G with scale s: p = clamp(G/s + q, 0, 1).
// Returns s (p' - q); an ignored row or s = 0 gives 0; s < 0 or non-finite s gives NaN.
inline std::vector<double> hook_row(const double* G, const double* q, int64_t C, double s, double alpha,
                                    bool ignored, std::vector<double>* p_out = nullptr,
                                    std::vector<double>* pp_out = nullptr) {
  std::vector<double> o(C, 0.0);
  if (ignored || s == 0.0) return o;
  if (!(s > 0.0) || std::isinf(s)) return std::vector<double>(C, kNaN);
  std::vector<double> p(C);
  for (int64_t j = 0; j < C; ++j) {
    double v = G[j] / s + q[j];
    if (!std::isnan(v)) v = v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v);
    p[j] = v;
  }
  const std::vector<double> pp = pgt_from_probs(p.data(), C, alpha);
  for (int64_t j = 0; j < C; ++j) o[j] = s * (pp[j] - q[j]);
  if (p_out) *p_out = p;
  if (pp_out) *pp_out = pp;
  return o;
}

}  // namespace pgref
