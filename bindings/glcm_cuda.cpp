// torch.library registration of the CUDA GLCM score kernel (csrc/glcm_cuda.cu): torch.ops.d4k_glcm_cuda.*,
// built at first use on a GPU machine by d4k_kernels._build (backend.choose picks it in ops/glcm.py). Only torch/library.h
// and light ATen headers: no c10/cuda headers (the launcher takes the stream as an integer, the caller
// passes torch.cuda.current_stream(device).cuda_stream).
#include <torch/library.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace d4k_glcm_cuda {
// csrc/glcm_cuda.cu (keep the declarations identical)
int launch_glcm_scores(const uint8_t* g, int64_t n, int64_t h, int64_t w, int64_t s_n, int64_t s_h, int64_t s_w,
                       int P, int L, int qdiv, const int32_t* offs, int U, const int32_t* keytab,
                       int64_t key_stride, const int32_t* mult, const double* flog, int nkeys, int64_t zeros_extra,
                       double* out, int threads, bool nacc16, int device, int64_t stream, char* err, int errlen);
int64_t max_smem_optin(int device);
int64_t smem_needed(int P, int L, int nkeys, bool nacc16);

namespace {

void check_cuda(const at::Tensor& t, const char* name, at::ScalarType dt, const at::Tensor& g) {
  TORCH_CHECK(t.is_cuda(), "glcm (CUDA): ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == g.device(), "glcm (CUDA): ", name, " is on ", t.device(), ", the image on ", g.device());
  TORCH_CHECK(t.scalar_type() == dt, "glcm (CUDA): ", name, " must be ", dt, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "glcm (CUDA): ", name, " must be contiguous");
}

// g: (N, H, W) uint8 CUDA, any strides. offsets (U, 2) int32: offsets that have pairs inside a patch
// (U may be 0: then offsets is a (1, 2) placeholder); keytab (U', key_stride) int32 with U' >= U,
// key_stride > the pair count of every offset; mult (U',) int32; flog (T + 1,) float64; zeros_extra:
// zero cells of the slices whose offsets were left out. Values are the caller's (ops/glcm.py) to get
// right; shapes, dtypes, devices and contiguity are checked here.
// -> (N * P,) float64 sum_k flog[n_k] per patch.
at::Tensor glcm_scores(const at::Tensor& g, int64_t patch, const at::Tensor& offsets, int64_t U,
                       const at::Tensor& mult, const at::Tensor& keytab, const at::Tensor& flog, int64_t levels,
                       int64_t qdiv, int64_t nkeys, int64_t zeros_extra, int64_t threads, bool nacc16,
                       int64_t stream) {
  TORCH_CHECK(g.is_cuda(), "glcm (CUDA): image must be a CUDA tensor, got device ", g.device());
  TORCH_CHECK(g.scalar_type() == at::kByte, "glcm (CUDA): image must be uint8, got ", g.scalar_type());
  TORCH_CHECK(g.dim() == 3, "glcm (CUDA): image must be (N, H, W), got ", g.sizes());
  TORCH_CHECK(patch >= 1 && patch <= 4096 && g.size(1) % patch == 0 && g.size(2) % patch == 0,
              "glcm (CUDA): H, W must be multiples of patch=", patch, ", got ", g.sizes());
  TORCH_CHECK(levels >= 1 && levels <= 256, "glcm (CUDA): levels must be in [1, 256], got ", levels);
  TORCH_CHECK(qdiv >= 1 && qdiv <= 256, "glcm (CUDA): qdiv must be in [1, 256], got ", qdiv);
  TORCH_CHECK(threads == 256 || threads == 512 || threads == 1024, "glcm (CUDA): threads must be 256, 512 or 1024, got ",
              threads);
  TORCH_CHECK(nkeys >= 1 && nkeys < (int64_t(1) << 30), "glcm (CUDA): bad nkeys ", nkeys);
  TORCH_CHECK(zeros_extra >= 0 && zeros_extra < (int64_t(1) << 31), "glcm (CUDA): bad zeros_extra ", zeros_extra);
  check_cuda(offsets, "offsets", at::kInt, g);
  check_cuda(mult, "mult", at::kInt, g);
  check_cuda(keytab, "keytab", at::kInt, g);
  check_cuda(flog, "flog", at::kDouble, g);
  TORCH_CHECK(U >= 0 && offsets.dim() == 2 && offsets.size(1) == 2 && offsets.size(0) >= std::max<int64_t>(U, 1),
              "glcm (CUDA): offsets must be (U, 2) with U=", U, ", got ", offsets.sizes());
  TORCH_CHECK(keytab.dim() == 2 && keytab.size(0) >= U && keytab.size(1) >= 1,
              "glcm (CUDA): keytab must be (U, Nmax+1) with U=", U, ", got ", keytab.sizes());
  TORCH_CHECK(mult.dim() == 1 && mult.size(0) >= U, "glcm (CUDA): mult must have U=", U, " entries, got ",
              mult.sizes());
  TORCH_CHECK(flog.dim() == 1 && flog.size(0) >= 2, "glcm (CUDA): flog must be (T+1,), got ", flog.sizes());
  const int64_t n = g.size(0), h = g.size(1), w = g.size(2);
  auto out = at::empty({n * (h / patch) * (w / patch)}, g.options().dtype(at::kDouble));
  if (out.numel() == 0) return out;
  char err[512] = {0};
  const int rc = launch_glcm_scores(g.data_ptr<uint8_t>(), n, h, w, g.stride(0), g.stride(1), g.stride(2), (int)patch,
                                    (int)levels, (int)qdiv, offsets.data_ptr<int32_t>(), (int)U,
                                    keytab.data_ptr<int32_t>(), keytab.stride(0), mult.data_ptr<int32_t>(),
                                    flog.data_ptr<double>(), (int)nkeys, zeros_extra, out.data_ptr<double>(),
                                    (int)threads, nacc16, (int)g.device().index(), stream, err, (int)sizeof(err));
  TORCH_CHECK(rc == 0, std::string(err));
  return out;
}

int64_t max_smem(int64_t device) { return max_smem_optin((int)device); }

int64_t smem_bytes(int64_t patch, int64_t levels, int64_t nkeys, bool nacc16) {
  return smem_needed((int)patch, (int)levels, (int)nkeys, nacc16);
}

}  // namespace
}  // namespace d4k_glcm_cuda

TORCH_LIBRARY(d4k_glcm_cuda, m) {
  m.def(
      "glcm_scores(Tensor g, int patch, Tensor offsets, int U, Tensor mult, Tensor keytab, Tensor flog, int levels, "
      "int qdiv, int nkeys, int zeros_extra, int threads, bool nacc16, int stream) -> Tensor",
      &d4k_glcm_cuda::glcm_scores);
  m.def("max_smem(int device) -> int", &d4k_glcm_cuda::max_smem);
  m.def("smem_bytes(int patch, int levels, int nkeys, bool nacc16) -> int", &d4k_glcm_cuda::smem_bytes);
}
