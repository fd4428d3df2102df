// One level of the 2-D Haar DWT / IDWT on the CPU (the "cpu" backend of d4k_kernels.ops.haar).
//
// Block [[a, b], [c, d]] -> LL = (a+b+c+d)/2, LH = (a+b-c-d)/2, HL = (a-b+c-d)/2, HH = (a-b-c+d)/2
// (pytorch_wavelets naming; docs/ops.md, Haar DWT / IDWT). One pass over the input, OpenMP over output rows
// (at::parallel_for), accumulation in the input's floating type (float or double; the Python side
// converts bf16/fp16 to float first). Odd sizes: the missing last row/column is 0 (zero mode), a copy
// of row/column n-1 (symmetric, periodization) or of n-2 (reflect) -- chosen by `pad`.
#include "haar.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

namespace d4k {
namespace {

// index of the padded sample n (the one past the end) for pad code 1 (edge) / 2 (reflect)
inline int64_t pad_src(int64_t n, int64_t pad) { return pad == 1 ? n - 1 : n - 2; }

template <typename T>
void dwt_level_impl(const T* x, T* ll, T* yh, int64_t planes, int64_t H, int64_t W, int64_t pad) {
  const int64_t h = (H + 1) / 2, w = (W + 1) / 2, band = h * w;
  const int64_t wfull = W / 2;  // output columns whose two inputs both exist
  const T half = T(0.5);
  at::parallel_for(0, planes * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pr = begin; pr < end; ++pr) {
      const int64_t p = pr / h, i = pr % h;
      const T* base = x + p * H * W;
      const T* r0 = base + (2 * i) * W;
      const T* r1 = nullptr;  // second row; nullptr means zeros
      if (2 * i + 1 < H) {
        r1 = r0 + W;
      } else if (pad != 0) {
        r1 = base + pad_src(H, pad) * W;
      }
      T* o_ll = ll + p * band + i * w;
      T* o_lh = yh + p * 3 * band + i * w;
      T* o_hl = o_lh + band;
      T* o_hh = o_hl + band;
      if (r1 != nullptr) {
        for (int64_t j = 0; j < wfull; ++j) {
          const T a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
          const T s0 = a + c, s1 = b + d, d0 = a - c, d1 = b - d;
          o_ll[j] = (s0 + s1) * half;
          o_lh[j] = (d0 + d1) * half;
          o_hl[j] = (s0 - s1) * half;
          o_hh[j] = (d0 - d1) * half;
        }
      } else {
        for (int64_t j = 0; j < wfull; ++j) {
          const T a = r0[2 * j], b = r0[2 * j + 1];
          o_ll[j] = (a + b) * half;
          o_lh[j] = (a + b) * half;
          o_hl[j] = (a - b) * half;
          o_hh[j] = (a - b) * half;
        }
      }
      if (w > wfull) {  // odd W: the last output column pads one input column
        const int64_t j = wfull, cb = pad == 0 ? -1 : pad_src(W, pad);
        const T a = r0[2 * j], b = cb < 0 ? T(0) : r0[cb];
        const T c = r1 ? r1[2 * j] : T(0), d = (r1 && cb >= 0) ? r1[cb] : T(0);
        const T s0 = a + c, s1 = b + d, d0 = a - c, d1 = b - d;
        o_ll[j] = (s0 + s1) * half;
        o_lh[j] = (d0 + d1) * half;
        o_hl[j] = (s0 - s1) * half;
        o_hh[j] = (d0 - d1) * half;
      }
    }
  });
}

template <typename T>
void idwt_level_impl(const T* ll, const T* yh, T* out, int64_t planes, int64_t h, int64_t w) {
  const int64_t band = h * w, W = 2 * w;
  const T half = T(0.5);
  at::parallel_for(0, planes * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pr = begin; pr < end; ++pr) {
      const int64_t p = pr / h, i = pr % h;
      const T* i_ll = ll + p * band + i * w;
      const T* i_lh = yh + p * 3 * band + i * w;
      const T* i_hl = i_lh + band;
      const T* i_hh = i_hl + band;
      T* r0 = out + p * 4 * band + (2 * i) * W;
      T* r1 = r0 + W;
      for (int64_t j = 0; j < w; ++j) {
        const T pp = i_ll[j] + i_lh[j], q = i_hl[j] + i_hh[j];
        const T r = i_ll[j] - i_lh[j], t = i_hl[j] - i_hh[j];
        r0[2 * j] = (pp + q) * half;
        r0[2 * j + 1] = (pp - q) * half;
        r1[2 * j] = (r + t) * half;
        r1[2 * j + 1] = (r - t) * half;
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> haar_dwt_level(const at::Tensor& x, int64_t pad) {
  TORCH_CHECK(x.dim() >= 2, "haar_dwt_level: x must have at least 2 dims, got ", x.sizes());
  TORCH_CHECK(x.is_contiguous() && x.device().is_cpu(), "haar_dwt_level: x must be a contiguous CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "haar_dwt_level: float32 or float64 only, got ", x.scalar_type());
  TORCH_CHECK(pad >= 0 && pad <= 2, "haar_dwt_level: pad code must be 0, 1 or 2, got ", pad);
  const int64_t H = x.size(-2), W = x.size(-1);
  TORCH_CHECK(H >= 1 && W >= 1, "haar_dwt_level: empty spatial size ", x.sizes());
  TORCH_CHECK(pad != 2 || ((H % 2 == 0 || H >= 2) && (W % 2 == 0 || W >= 2)),
              "haar_dwt_level: reflect padding needs size >= 2, got ", x.sizes());
  const int64_t h = (H + 1) / 2, w = (W + 1) / 2, planes = x.numel() / (H * W);
  auto lead = x.sizes().slice(0, x.dim() - 2).vec();
  auto ll_shape = lead, yh_shape = lead;
  ll_shape.insert(ll_shape.end(), {h, w});
  yh_shape.insert(yh_shape.end(), {3, h, w});
  at::Tensor ll = at::empty(ll_shape, x.options());
  at::Tensor yh = at::empty(yh_shape, x.options());
  if (planes == 0) return {ll, yh};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "haar_dwt_level", [&] {
    dwt_level_impl<scalar_t>(x.data_ptr<scalar_t>(), ll.data_ptr<scalar_t>(), yh.data_ptr<scalar_t>(), planes, H, W,
                             pad);
  });
  return {ll, yh};
}

at::Tensor haar_idwt_level(const at::Tensor& ll, const at::Tensor& yh) {
  TORCH_CHECK(ll.dim() >= 2 && yh.dim() == ll.dim() + 1, "haar_idwt_level: ll ", ll.sizes(), " and yh ", yh.sizes(),
              " must be (..., h, w) and (..., 3, h, w)");
  TORCH_CHECK(ll.is_contiguous() && yh.is_contiguous() && ll.device().is_cpu() && yh.device().is_cpu(),
              "haar_idwt_level: contiguous CPU tensors only");
  TORCH_CHECK(ll.scalar_type() == yh.scalar_type() &&
                  (ll.scalar_type() == at::kFloat || ll.scalar_type() == at::kDouble),
              "haar_idwt_level: float32 or float64 tensors of one dtype only");
  const int64_t h = ll.size(-2), w = ll.size(-1);
  auto expect = ll.sizes().slice(0, ll.dim() - 2).vec();
  expect.insert(expect.end(), {3, h, w});
  TORCH_CHECK(yh.sizes().vec() == expect, "haar_idwt_level: yh has shape ", yh.sizes(), ", expected ", expect);
  auto out_shape = ll.sizes().slice(0, ll.dim() - 2).vec();
  out_shape.insert(out_shape.end(), {2 * h, 2 * w});
  at::Tensor out = at::empty(out_shape, ll.options());
  const int64_t planes = h * w == 0 ? 0 : ll.numel() / (h * w);
  if (planes == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(ll.scalar_type(), "haar_idwt_level", [&] {
    idwt_level_impl<scalar_t>(ll.data_ptr<scalar_t>(), yh.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), planes, h,
                              w);
  });
  return out;
}

}  // namespace d4k
