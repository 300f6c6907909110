/* powergrad from C: forward + backward of the PGT cross-entropy on a small host problem through
 * the C ABI (libpowergrad). Prints the loss and the gradient of the first row. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "powergrad/powergrad_c.h"

#define ROWS 4
#define COLS 6

int main(void) {
  float logits[ROWS * COLS], dlogits[ROWS * COLS], loss = 0.f;
  const int64_t targets[ROWS] = {0, 3, -100, 5}; /* row 2 is ignored (PyTorch's ignore_index) */
  pg_xent_problem_t problem;
  pg_xent_outputs_t outputs;
  pg_status_t st;
  int i;

  for (i = 0; i < ROWS * COLS; ++i) logits[i] = (float)sin(0.7 * i);

  memset(&problem, 0, sizeof problem);
  problem.struct_size = sizeof problem;
  problem.device = PG_DEVICE_HOST;
  problem.dtype = PG_DTYPE_FLOAT32;
  problem.logits = logits;
  problem.rows = ROWS;
  problem.cols = COLS;
  problem.target_kind = PG_TARGET_INDEX_INT64;
  problem.targets = targets;
  problem.ignore_index = -100;
  problem.alpha = 0.5f; /* PGT exponent: alpha < 1 flattens the gradient's softmax */
  problem.reduction = PG_REDUCTION_MEAN;

  memset(&outputs, 0, sizeof outputs);
  outputs.struct_size = sizeof outputs;
  outputs.loss = &loss;
  outputs.dlogits = dlogits;

  st = pg_xent_forward_backward(&problem, NULL, &outputs, NULL, 0, NULL);
  if (st != PG_STATUS_SUCCESS) {
    fprintf(stderr, "pg_xent_forward_backward: %s: %s\n", pg_status_string(st), pg_last_error());
    return 1;
  }
  printf("powergrad %d, CUDA %s\n", pg_version(), pg_has_cuda() ? "yes" : "no");
  printf("loss (mean over 3 rows) = %.6f\n", loss);
  printf("dlogits[0] =");
  for (i = 0; i < COLS; ++i) printf(" %+.6f", dlogits[i]);
  printf("\n");
  return 0;
}
