// CPU Haar DWT/IDWT levels (csrc/haar.cpp), registered as torch.ops.d4k_haar.* by bindings/haar.cpp.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace d4k {
// x (..., H, W) contiguous float/double -> (LL (..., h, w), details (..., 3, h, w) as LH, HL, HH),
// h = ceil(H/2), w = ceil(W/2); pad: 0 zero, 1 repeat the last sample (symmetric, periodization),
// 2 reflect (sample n-2).
std::tuple<at::Tensor, at::Tensor> haar_dwt_level(const at::Tensor& x, int64_t pad);
// LL (..., h, w), details (..., 3, h, w) -> (..., 2h, 2w): the exact inverse of an even-size level.
at::Tensor haar_idwt_level(const at::Tensor& ll, const at::Tensor& yh);
}  // namespace d4k
