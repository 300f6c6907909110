// The trainer compiled by nvcc: the same source as trainer.cpp, with the loss on the GPU when one is
// present (--device auto|cuda) and the host backend otherwise.
#include "trainer.cpp"
