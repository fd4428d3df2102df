// Per-patch GLCM counts and the paper's exact distinct-value GLCM entropy on the CPU: torch entry
// points. The algorithm lives in glcm_core.h; patches are spread over threads with at::parallel_for
// (torch's OpenMP pool, so torch.set_num_threads applies), each thread with its own tables.
#include "glcm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "glcm_core.h"

namespace d4k {
namespace {
using namespace core;

struct Geometry {
  int64_t n, h, w, sn, sh, sw;  // image (N, H, W) and element strides
  int64_t pw, ppi;              // patches per row, patches per image
};

Geometry geometry(const at::Tensor& g, int64_t patch, int64_t levels, int64_t qdiv) {
  TORCH_CHECK(g.device().is_cpu(), "glcm (C++): image must be a CPU tensor");
  TORCH_CHECK(g.scalar_type() == at::kByte, "glcm (C++): image must be uint8, got ", g.scalar_type());
  TORCH_CHECK(g.dim() == 3, "glcm (C++): image must be (N, H, W), got ", g.sizes());
  TORCH_CHECK(patch >= 1 && g.size(1) % patch == 0 && g.size(2) % patch == 0,
              "glcm (C++): H, W must be multiples of patch=", patch, ", got ", g.sizes());
  TORCH_CHECK(levels >= 1 && levels <= 256, "glcm (C++): levels must be in [1, 256], got ", levels);
  TORCH_CHECK(qdiv >= 1 && qdiv <= 256, "glcm (C++): qdiv must be in [1, 256], got ", qdiv);
  Geometry G;
  G.n = g.size(0);
  G.h = g.size(1);
  G.w = g.size(2);
  G.sn = g.stride(0);
  G.sh = g.stride(1);
  G.sw = g.stride(2);
  G.pw = G.w / patch;
  G.ppi = (G.h / patch) * G.pw;
  return G;
}

std::vector<int> offsets_vec(const at::Tensor& offsets) {
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(1) == 2, "glcm (C++): offsets must be (U, 2)");
  auto o = offsets.to(at::kInt).contiguous();
  const int32_t* p = o.data_ptr<int32_t>();
  return std::vector<int>(p, p + o.numel());
}

inline int levels_of(const Layout& Y) { return Y.L; }

inline const uint8_t* patch_ptr(const uint8_t* g, const Geometry& G, int64_t patch, int64_t pidx) {
  const int64_t img = pidx / G.ppi, rem = pidx % G.ppi;
  const int64_t pr = rem / G.pw, pc = rem % G.pw;
  return g + img * G.sn + pr * patch * G.sh + pc * patch * G.sw;
}

void make_lut(int64_t qdiv, uint8_t* lut) {
  for (int v = 0; v < 256; ++v) lut[v] = (uint8_t)(v / qdiv);
}

template <typename T>
void counts_impl(const uint8_t* g, const Geometry& G, int64_t patch, const Layout& Y, int64_t Uall,
                 int32_t* out) {
  const int64_t total = G.n * G.ppi;
  const int L = Y.L;
  const int64_t cells = (int64_t)L * L;
  const bool paper = is_paper(Y);
  uint8_t lut[256];
  make_lut(1, lut);
  at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> pb((size_t)Y.W * Y.H);
    std::vector<T> tab((size_t)(Y.U * Y.TS), 0);
    for (int64_t p = begin; p < end; ++p) {
      fill_padded(patch_ptr(g, G, patch, p), G.sh, G.sw, lut, Y, pb.data());
      count_tables<T>(pb.data(), Y, paper, tab.data());
      int32_t* o = out + p * Uall * cells;
      std::memset(o, 0, sizeof(int32_t) * Uall * cells);
      for (int u = 0; u < Y.U; ++u) {
        int32_t* ou = o + Y.src[u] * cells;
        const T* t = tab.data() + u * Y.TS;
        for (int q1 = 0; q1 < L; ++q1)
          for (int q2 = 0; q2 < L; ++q2) ou[q1 * L + q2] = (int32_t)t[q1 * Y.RS + q2];
      }
      std::memset(tab.data(), 0, sizeof(T) * tab.size());
    }
  });
}

// Per-thread buffers of the score kernel, kept from call to call (an image's 1024 patches take ~20 ms;
// allocating and zeroing ~0.4 MB of fresh pages per call and thread cost a measurable part of that). Every
// patch leaves the tables, the key multiplicities and the histogram zeroed, except the paper path's
// garbage column (never read); a call with another table layout starts from fresh zeroed buffers.
template <typename T>
struct ScoreScratch {
  int L = -1, U = -1, W = -1, Hh = -1;
  int64_t TS = -1, patch = -1, nkeys = -1;
  std::vector<uint8_t> pb;
  std::vector<T> tabv;
  T* tab = nullptr;
  KeyAcc acc{0};
  CountHist H{0, 0};
};

template <typename T>
ScoreScratch<T>& score_scratch(const Layout& Y, int64_t patch, int64_t nkeys) {
  static thread_local ScoreScratch<T> S;
  if (S.L != Y.L || S.U != Y.U || S.TS != Y.TS || S.W != Y.W || S.Hh != Y.H || S.patch != patch ||
      S.nkeys != nkeys) {
    S.pb.assign((size_t)Y.W * Y.H, 0);
    S.tabv.assign((size_t)(std::max(1, Y.U) * Y.TS) + 64 / sizeof(T), 0);
    S.tab = (T*)(((uintptr_t)S.tabv.data() + 63) & ~(uintptr_t)63);  // 64-byte aligned (vector scans)
    S.acc = KeyAcc(nkeys);
    S.H = CountHist(patch * patch, (int64_t)levels_of(Y) * levels_of(Y));
    S.L = Y.L, S.U = Y.U, S.TS = Y.TS, S.W = Y.W, S.Hh = Y.H, S.patch = patch, S.nkeys = nkeys;
  }
  return S;
}

template <typename T>
void scores_impl(const uint8_t* g, const Geometry& G, int64_t patch, int64_t qdiv, const Layout& Y,
                 int64_t Uall, const int64_t* mult, const int32_t* keytab, int64_t keystride, const double* flog,
                 int64_t nkeys, double* out) {
  const int64_t total = G.n * G.ppi;
  const int64_t cells = (int64_t)Y.L * Y.L;
  int64_t slices = 0, zeros_extra = 0;
  for (int64_t u = 0; u < Uall; ++u) slices += mult[u];
  {
    std::vector<bool> kept(Uall, false);
    for (int s : Y.src) kept[s] = true;
    for (int64_t u = 0; u < Uall; ++u)
      if (!kept[u]) zeros_extra += mult[u] * cells;
  }
  const double T_ = (double)(cells * slices);
  const double log2T = std::log2(T_);
  const bool paper = is_paper(Y);
  uint8_t lut[256];
  make_lut(qdiv, lut);
  at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
    ScoreScratch<T>& S = score_scratch<T>(Y, patch, nkeys);
    for (int64_t p = begin; p < end; ++p) {
      fill_padded(patch_ptr(g, G, patch, p), G.sh, G.sw, lut, Y, S.pb.data());
      out[p] = patch_entropy<T>(S.pb.data(), Y, paper, mult, keytab, keystride, zeros_extra, flog, log2T, T_,
                                S.tab, S.acc, S.H);
    }
  });
}

}  // namespace

at::Tensor glcm_counts(const at::Tensor& g, int64_t patch, const at::Tensor& offsets, int64_t levels,
                       int64_t qdiv) {
  Geometry G = geometry(g, patch, levels, qdiv);
  auto off = offsets_vec(offsets);
  const int64_t U = (int64_t)off.size() / 2;
  auto out = at::empty({G.n * G.ppi, U, levels, levels}, g.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  const uint8_t* gp = g.data_ptr<uint8_t>();
  Layout Y = make_layout((int)patch, (int)levels, off.data(), (int)U);
  if ((int64_t)patch * patch < 65536)
    counts_impl<uint16_t>(gp, G, patch, Y, U, out.data_ptr<int32_t>());
  else
    counts_impl<uint32_t>(gp, G, patch, Y, U, out.data_ptr<int32_t>());
  return out;
}

at::Tensor glcm_scores(const at::Tensor& g, int64_t patch, const at::Tensor& offsets, const at::Tensor& mult,
                       const at::Tensor& keytab, const at::Tensor& flog, int64_t levels, int64_t qdiv,
                       int64_t nkeys) {
  Geometry G = geometry(g, patch, levels, qdiv);
  auto off = offsets_vec(offsets);
  const int64_t U = (int64_t)off.size() / 2;
  auto m = mult.to(at::kLong).contiguous();
  auto kt = keytab.to(at::kInt).contiguous();
  auto fl = flog.to(at::kDouble).contiguous();
  TORCH_CHECK(m.numel() == U, "glcm (C++): mult must have one entry per offset");
  TORCH_CHECK(kt.dim() == 2 && kt.size(0) == U, "glcm (C++): keytab must be (U, Nmax+1)");
  const int64_t nmax = (int64_t)patch * patch;
  int64_t slices = 0;
  for (int64_t u = 0; u < U; ++u) slices += m.data_ptr<int64_t>()[u];
  TORCH_CHECK(fl.numel() > slices * levels * levels, "glcm (C++): flog must have T+1 entries");
  for (int u = 0; u < U; ++u) {
    const int64_t dr = std::abs(off[2 * u]), dc = std::abs(off[2 * u + 1]);
    const int64_t npairs = std::max<int64_t>(0, patch - dr) * std::max<int64_t>(0, patch - dc);
    TORCH_CHECK(kt.size(1) > npairs, "glcm (C++): keytab has ", kt.size(1), " columns, needs ", npairs + 1);
  }
  auto out = at::empty({G.n * G.ppi}, g.options().dtype(at::kDouble));
  if (out.numel() == 0) return out;
  // keytab is read at indices 0..3 unconditionally: pad it when N_max < 3
  if (kt.size(1) < 4) kt = at::constant_pad_nd(kt, {0, 4 - kt.size(1)}, 0).contiguous();
  const uint8_t* gp = g.data_ptr<uint8_t>();
  Layout Y = make_layout((int)patch, (int)levels, off.data(), (int)U);
  if (nmax < 65536)
    scores_impl<uint16_t>(gp, G, patch, qdiv, Y, U, m.data_ptr<int64_t>(), kt.data_ptr<int32_t>(), kt.size(1),
                          fl.data_ptr<double>(), nkeys, out.data_ptr<double>());
  else
    scores_impl<uint32_t>(gp, G, patch, qdiv, Y, U, m.data_ptr<int64_t>(), kt.data_ptr<int32_t>(), kt.size(1),
                          fl.data_ptr<double>(), nkeys, out.data_ptr<double>());
  return out;
}

}  // namespace d4k
