// A downstream program: includes the umbrella header, runs one PGT cross-entropy forward+backward
// on the host backend and compares with values worked out by hand. Exit code 0 = pass.
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "powergrad/powergrad.hpp"

int main() {
  // Two rows of three classes. Row 0: z = (0, 0, ln 3), target 2. Row 1: z = (0, 0, 0), target 0.
  const float ln3 = std::log(3.f);
  const float logits[6] = {0.f, 0.f, ln3, 0.f, 0.f, 0.f};
  const int32_t target[2] = {2, 0};
  float dlogits[6];
  float loss = -1.f;

  powergrad::XentProblem<float, powergrad::ClassTargets<int32_t>> p;
  p.logits = logits;
  p.rows = 2;
  p.cols = 3;
  p.targets.index = target;
  p.alpha = 0.5f;
  p.reduction = powergrad::Reduction::kMean;
  powergrad::XentOutputs<float> out;
  out.loss = &loss;
  out.dlogits = dlogits;

  const powergrad::Status s =
      powergrad::xent_forward_backward(powergrad::Backend::kHost, p, powergrad::Upstream{}, out);
  if (s != powergrad::Status::kSuccess) {
    std::printf("FAIL: status %s: %s\n", powergrad::status_string(s), powergrad::last_error_message());
    return 1;
  }

  // By hand. Row 0: softmax = (1/5, 1/5, 3/5), loss = -ln(3/5) = ln(5/3); with alpha = 1/2 the
  // weights are (1, 1, sqrt 3), so p' = (1, 1, sqrt 3) / (2 + sqrt 3).
  // Row 1: loss = ln 3, p' = 1/3 each. kMean over 2 rows: g = 1/2.
  const double r3 = std::sqrt(3.0), d = 2.0 + r3;
  const double want_loss = 0.5 * (std::log(5.0 / 3.0) + std::log(3.0));  // = ln(5) / 2
  const double want_grad[6] = {0.5 * (1 / d), 0.5 * (1 / d), 0.5 * (r3 / d - 1),
                               0.5 * (1.0 / 3 - 1), 0.5 * (1.0 / 3), 0.5 * (1.0 / 3)};
  int bad = 0;
  if (std::fabs(loss - want_loss) > 1e-6 * std::fabs(want_loss) + 1e-7) {
    std::printf("FAIL: loss %.9g, expected %.9g\n", loss, want_loss);
    ++bad;
  }
  for (int i = 0; i < 6; ++i) {
    if (!(std::fabs(dlogits[i] - want_grad[i]) <= 1e-6)) {
      std::printf("FAIL: dlogits[%d] = %.9g, expected %.9g\n", i, dlogits[i], want_grad[i]);
      ++bad;
    }
  }
  if (bad) return 1;
  std::printf("consumer OK: loss %.7f (expected ln(5)/2 = %.7f)\n", loss, want_loss);
  return 0;
}
