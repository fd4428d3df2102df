// torch.library registration of the CPU Haar levels (csrc/haar.cpp): torch.ops.d4k_haar.*,
// loaded at first use by d4k_kernels._build.
#include <torch/library.h>

#include "haar.h"

TORCH_LIBRARY(d4k_haar, m) {
  m.def("dwt_level(Tensor x, int pad) -> (Tensor, Tensor)", &d4k::haar_dwt_level);
  m.def("idwt_level(Tensor ll, Tensor yh) -> Tensor", &d4k::haar_idwt_level);
}
