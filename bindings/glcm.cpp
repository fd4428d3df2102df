// torch.library registration of the CPU GLCM kernels (csrc/glcm.cpp): torch.ops.d4k_glcm.*,
// loaded by d4k_kernels._build (TORCH_LIBRARY rather than pybind11: torch/library.h compiles in a
// fraction of the time torch/extension.h takes, which keeps the first-use build short).
#include <torch/library.h>

#include "glcm.h"

#ifndef D4K_GLCM_NS  // a build with other flags (tests of the portable paths) registers elsewhere
#define D4K_GLCM_NS d4k_glcm
#endif

TORCH_LIBRARY(D4K_GLCM_NS, m) {
  m.def("glcm_counts(Tensor g, int patch, Tensor offsets, int levels, int qdiv) -> Tensor", &d4k::glcm_counts);
  m.def(
      "glcm_scores(Tensor g, int patch, Tensor offsets, Tensor mult, Tensor keytab, Tensor flog, int levels, "
      "int qdiv, int nkeys) -> Tensor",
      &d4k::glcm_scores);
}
