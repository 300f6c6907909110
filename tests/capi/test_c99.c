/* The C ABI header compiled as C99, and a forward+backward on the host checked against values
 * computed by hand. Exits non-zero on the first failure. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "powergrad/powergrad_c.h"

static int failures = 0;

static void check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    ++failures;
  }
}

static int near(double a, double b) { return fabs(a - b) <= 1e-6 * (1.0 + fabs(b)); }

int main(void) {
  /* rows: z = (0, 0, 0) with target 0, z = (1, 2, 3) with target 2; alpha 1, mean reduction. */
  const float logits[6] = {0.f, 0.f, 0.f, 1.f, 2.f, 3.f};
  const int32_t targets[2] = {0, 2};
  float loss = -1.f, lse[2] = {0.f, 0.f}, grad[6];
  pg_xent_problem_t problem;
  pg_xent_outputs_t outputs;
  pg_status_t st;
  /* loss_0 = log 3; loss_1 = log(e + e^2 + e^3) - 3 = log(1 + e^-1 + e^-2) */
  const double lse1 = 3.0 + log(1.0 + exp(-1.0) + exp(-2.0));
  const double want_loss = 0.5 * (log(3.0) + (lse1 - 3.0));
  int i;

  check(pg_version() == 100, "pg_version() == 100 (0.1.0)");
  check(strcmp(pg_status_string(PG_STATUS_SUCCESS), "success") == 0, "pg_status_string(SUCCESS)");
  check(strcmp(pg_status_string(PG_STATUS_INTERNAL_ERROR), "internal error") == 0, "pg_status_string(INTERNAL)");
  check(strcmp(pg_status_string((pg_status_t)77), "unknown status") == 0, "pg_status_string(77)");
  check(pg_has_cuda() == 0 || pg_has_cuda() == 1, "pg_has_cuda() is 0 or 1");

  memset(&problem, 0, sizeof problem);
  problem.struct_size = sizeof problem;
  problem.device = PG_DEVICE_HOST;
  problem.dtype = PG_DTYPE_FLOAT32;
  problem.logits = logits;
  problem.rows = 2;
  problem.cols = 3;
  problem.target_kind = PG_TARGET_INDEX_INT32;
  problem.targets = targets;
  problem.ignore_index = -100;
  problem.alpha = 1.f;
  problem.reduction = PG_REDUCTION_MEAN;

  memset(&outputs, 0, sizeof outputs);
  outputs.struct_size = sizeof outputs;
  outputs.loss = &loss;
  outputs.lse = lse;
  outputs.dlogits = grad;

  st = pg_xent_forward_backward(&problem, NULL, &outputs, NULL, 0, NULL);
  if (st != PG_STATUS_SUCCESS) {
    fprintf(stderr, "FAIL: forward_backward: %s: %s\n", pg_status_string(st), pg_last_error());
    return 1;
  }
  check(near(loss, want_loss), "loss");
  check(near(lse[0], log(3.0)) && near(lse[1], lse1), "lse");
  /* mean over 2 rows: dz = (softmax - onehot) / 2 */
  for (i = 0; i < 3; ++i) {
    const double p0 = 1.0 / 3.0, p1 = exp((double)logits[3 + i] - lse1);
    check(near(grad[i], 0.5 * (p0 - (i == 0))), "gradient row 0");
    check(near(grad[3 + i], 0.5 * (p1 - (i == 2))), "gradient row 1");
  }
  printf("loss %.7f (want %.7f)\n", loss, want_loss);

  /* A bad call explains itself. */
  problem.alpha = -1.f;
  st = pg_xent_forward_backward(&problem, NULL, &outputs, NULL, 0, NULL);
  check(st == PG_STATUS_INVALID_VALUE, "alpha = -1 gives PG_STATUS_INVALID_VALUE");
  check(strstr(pg_last_error(), "alpha") != NULL, "pg_last_error() names alpha");

  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
