// Per-patch GLCM counts and the exact distinct-value GLCM entropy (CPU). See glcm.cpp.
#pragma once
#include <ATen/core/Tensor.h>  // light: keeps the first-use build short

namespace d4k {

// g: (N, H, W) uint8 (any strides); offsets: (U, 2) (row, col) -> (N*P, U, levels, levels) int32
at::Tensor glcm_counts(const at::Tensor& g, int64_t patch, const at::Tensor& offsets, int64_t levels,
                       int64_t qdiv);

// -> (N*P,) float64 entropy of the distinct values of the normed GLCM of each patch.
// mult: (U,) slices per offset; keytab: (U, Nmax+1) id of the reduced fraction c/N_u;
// flog: (T+1,) n*log2(n) with T = levels^2 * sum(mult); nkeys: number of ids.
at::Tensor glcm_scores(const at::Tensor& g, int64_t patch, const at::Tensor& offsets, const at::Tensor& mult,
                       const at::Tensor& keytab, const at::Tensor& flog, int64_t levels, int64_t qdiv,
                       int64_t nkeys);

}  // namespace d4k
