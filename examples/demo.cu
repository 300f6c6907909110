// The demo compiled by nvcc: the same source as demo.cpp, with the CUDA backend available
// (it falls back to the host backend when no GPU is present).
#include "demo.cpp"
