// The paper's per-patch GLCM score (docs/ops.md, GLCM Score) as one CUDA kernel: one thread block per patch,
// everything of a patch in shared memory, one launch for the whole batch. Torch-free: the host
// launcher takes raw pointers, sizes, strides and the stream; bindings/glcm_cuda.cpp checks the
// tensors and calls it (torch.ops.d4k_glcm_cuda.*).
//
// Per patch (block):
//   1. load the patch (uint8 image (N, H, W), any int64 element strides), quantise q = g / qdiv into
//      shared memory; zero the L*L int32 counts and the multiplicity array nacc (one entry per
//      fraction id, K = plan.nkeys).
//   2. for each distinct offset u that can pair inside the patch:
//        count: shared-memory atomicAdd of cell q1*L + q2 over the pairs (r, c) -> (r+dr, c+dc) inside
//               the patch; a warp whose 32 pairs all hit one cell (flat regions) adds 32 once.
//        scan:  every cell's count c (and the cell is zeroed for the next offset): c == 0 is counted
//               in a register (all offsets, times mult[u]; added to nacc[0] once at the end), c in
//               {1, 2, 3} in registers per offset and added once per warp (those ids are the same in
//               every lane: atomics on one address would serialise), c >= 4: one shared atomicAdd of
//               mult[u] to nacc[keytab[u][c]].
//   3. out[patch] = sum_k flog[nacc[k]] (float64 table flog[n] = n log2 n; n == 0 skipped), summed in a
//      fixed order (per thread over k = tid, tid + T, ...; then a fixed shuffle tree and a fixed
//      order over warps): deterministic run to run. The caller finishes log2(T) - out / T.
// The multiplicities are exact integers, so the result differs from the Triton / C++ paths only by
// the float64 summation order (<= ~1e-15 on the score).
//
// NACC16: nacc as packed 16-bit counters (two per 32-bit word; a 32-bit atomicAdd of v << 16 adds to
// the high half). Exact when no multiplicity can exceed 65535, which the caller checks from the plan
// (the paper's configuration: zeros <= T - 16 = 65520, other ids <= sum of the slices' pair counts
// <= 64512). It halves the largest shared array (paper: 107 KB -> 53 KB; 127 KB -> 74 KB per block),
// so 3 blocks instead of 1 fit on an SM of sm_90.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

namespace d4k_glcm_cuda {

struct Params {
  const uint8_t* g;
  int64_t s_n, s_h, s_w;   // image element strides
  int64_t ppi, pw;         // patches per image, patches per row
  int64_t npatch;
  const int32_t* offs;     // (U, 2) offsets (row, col) that can pair inside a patch
  const int32_t* keytab;   // (U, key_stride) fraction id of count c of offset u
  int64_t key_stride;
  const int32_t* mult;     // (U,) slices per offset
  const double* flog;      // (T + 1,) n log2 n
  double* out;             // (npatch,) sum_k flog[nacc[k]]
  int P, L, U, qdiv, nkeys;
  int64_t zeros_extra;     // cells of slices whose offset has no pair inside a patch
};

// shared-memory layout (bytes), shared with the host's size check (and ops/glcm.py's copy of it)
__host__ __device__ inline int64_t counts_bytes(int L) { return 4 * (int64_t)L * L; }
__host__ __device__ inline int64_t nacc_bytes(int nkeys, bool nacc16) {
  return nacc16 ? 4 * (((int64_t)nkeys + 1) / 2) : 4 * (int64_t)nkeys;
}
__host__ __device__ inline int64_t q_bytes(int P) { return ((int64_t)P * P + 15) / 16 * 16; }
inline int64_t smem_bytes(int P, int L, int nkeys, bool nacc16) {
  return counts_bytes(L) + nacc_bytes(nkeys, nacc16) + q_bytes(P);
}
constexpr int64_t kStaticSmem = 256;  // the kernel's static shared memory (warp sums) is at most this

template <bool NACC16>
__device__ __forceinline__ void nacc_add(uint32_t* nacc, int key, uint32_t v) {
  if (NACC16)
    atomicAdd(nacc + (key >> 1), v << ((key & 1) * 16));
  else
    atomicAdd(nacc + key, v);
}

__device__ __forceinline__ uint32_t warp_sum(uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_add_sync(0xffffffffu, v);
#else
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
#endif
}

template <int THREADS, bool NACC16>
__global__ void __launch_bounds__(THREADS, THREADS <= 256 ? 4 : (THREADS <= 512 ? 2 : 1))
    glcm_score_kernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ double wsum[THREADS / 32];
  const int P = p.P, L = p.L, LL = L * L;
  int32_t* counts = reinterpret_cast<int32_t*>(smem);
  uint32_t* nacc = reinterpret_cast<uint32_t*>(smem + counts_bytes(L));
  uint8_t* q = smem + counts_bytes(L) + nacc_bytes(p.nkeys, NACC16);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int64_t patch = blockIdx.x;
  const int64_t img = patch / p.ppi, rem = patch % p.ppi;
  const int64_t pr = rem / p.pw, pc = rem % p.pw;
  const uint8_t* src = p.g + img * p.s_n + pr * P * p.s_h + pc * P * p.s_w;

  // 1. quantised patch, zeroed counts and multiplicities
  const int PP = P * P;
  for (int i = tid; i < PP; i += THREADS) {
    const int r = i / P, c = i - r * P;
    q[i] = (uint8_t)(__ldg(src + r * p.s_h + c * p.s_w) / p.qdiv);
  }
  for (int i = tid; i < LL; i += THREADS) counts[i] = 0;
  const int nwords = (int)(nacc_bytes(p.nkeys, NACC16) / 4);
  for (int i = tid; i < nwords; i += THREADS) nacc[i] = 0;
  __syncthreads();

  // 2. per offset: count, then scan the counts into the multiplicities
  uint32_t zeros = 0;  // zero cells seen by this thread, times mult
  for (int u = 0; u < p.U; ++u) {
    const int dr = __ldg(p.offs + 2 * u), dc = __ldg(p.offs + 2 * u + 1);
    const int r0 = max(0, -dr), c0 = max(0, -dc);
    const int nr = min(P, P - dr) - r0, nc = min(P, P - dc) - c0;
    const int npairs = nr * nc;  // > 0: the caller keeps only offsets that pair inside a patch
    for (int b = 0; b < npairs; b += THREADS) {  // b is uniform: every lane of a warp takes part
      const int i = b + tid;
      int code = -1;
      if (i < npairs) {
        const int rr = i / nc, cc = i - rr * nc;
        const int a = (r0 + rr) * P + (c0 + cc);
        code = (int)q[a] * L + (int)q[a + dr * P + dc];
      }
      const int lead = __shfl_sync(0xffffffffu, code, 0);
      if (__all_sync(0xffffffffu, code == lead)) {
        if (lane == 0 && lead >= 0) atomicAdd(counts + lead, 32);
      } else if (code >= 0) {
        atomicAdd(counts + code, 1);
      }
    }
    __syncthreads();
    const uint32_t m = (uint32_t)__ldg(p.mult + u);
    const int32_t* keys = p.keytab + (int64_t)u * p.key_stride;
    uint32_t z = 0, c1 = 0, c2 = 0, c3 = 0;
    for (int i = tid; i < LL; i += THREADS) {
      const int v = counts[i];
      counts[i] = 0;
      z += (v == 0);
      c1 += (v == 1);
      c2 += (v == 2);
      c3 += (v == 3);
      if (v > 3) nacc_add<NACC16>(nacc, __ldg(keys + v), m);
    }
    zeros += z * m;
    c1 = warp_sum(c1);
    c2 = warp_sum(c2);
    c3 = warp_sum(c3);
    if (lane == 0) {  // count c exists only if c <= N_u, so keys[c] is inside the row
      if (c1) nacc_add<NACC16>(nacc, __ldg(keys + 1), c1 * m);
      if (c2) nacc_add<NACC16>(nacc, __ldg(keys + 2), c2 * m);
      if (c3) nacc_add<NACC16>(nacc, __ldg(keys + 3), c3 * m);
    }
    __syncthreads();  // counts are zero again before the next offset counts into them
  }
  zeros = warp_sum(zeros);
  if (lane == 0) {  // key 0 is the value 0 (count 0) for every offset
    const uint32_t extra = warp == 0 ? (uint32_t)p.zeros_extra : 0u;
    if (zeros + extra) nacc_add<NACC16>(nacc, 0, zeros + extra);
  }
  __syncthreads();

  // 3. sum_k flog[nacc[k]] in a fixed order
  double s = 0.0;
  if (NACC16) {
    for (int w = tid; w < nwords; w += THREADS) {
      const uint32_t x = nacc[w];
      const uint32_t lo = x & 0xffffu, hi = x >> 16;  // hi of the last word is 0 when K is odd
      if (lo) s += __ldg(p.flog + lo);
      if (hi) s += __ldg(p.flog + hi);
    }
  } else {
    for (int k = tid; k < p.nkeys; k += THREADS) {
      const uint32_t n = nacc[k];
      if (n) s += __ldg(p.flog + n);
    }
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  if (lane == 0) wsum[warp] = s;
  __syncthreads();
  if (tid == 0) {
    double t = 0.0;
    for (int w = 0; w < THREADS / 32; ++w) t += wsum[w];
    p.out[patch] = t;
  }
}

template <int THREADS, bool NACC16>
cudaError_t launch_t(const Params& p, int64_t smem, int device, cudaStream_t stream) {
  auto kern = glcm_score_kernel<THREADS, NACC16>;
  // opt in above 48 KB once per device and instantiation (not during a CUDA graph capture's replays)
  static int64_t opted[64] = {0};
  if (smem > 48 * 1024 && (device < 0 || device >= 64 || opted[device] < smem)) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return e;
    if (device >= 0 && device < 64) opted[device] = smem;
  }
  kern<<<(unsigned)p.npatch, THREADS, (size_t)smem, stream>>>(p);
  return cudaGetLastError();
}

// Host launcher. Returns 0 on success; otherwise writes a message into err (errlen bytes) and
// returns non-zero. threads: 256, 512 or 1024.
int launch_glcm_scores(const uint8_t* g, int64_t n, int64_t h, int64_t w, int64_t s_n, int64_t s_h, int64_t s_w,
                       int P, int L, int qdiv, const int32_t* offs, int U, const int32_t* keytab,
                       int64_t key_stride, const int32_t* mult, const double* flog, int nkeys, int64_t zeros_extra,
                       double* out, int threads, bool nacc16, int device, int64_t stream, char* err, int errlen) {
  Params p;
  p.g = g;
  p.s_n = s_n;
  p.s_h = s_h;
  p.s_w = s_w;
  p.pw = w / P;
  p.ppi = (h / P) * p.pw;
  p.npatch = n * p.ppi;
  p.offs = offs;
  p.keytab = keytab;
  p.key_stride = key_stride;
  p.mult = mult;
  p.flog = flog;
  p.out = out;
  p.P = P;
  p.L = L;
  p.U = U;
  p.qdiv = qdiv;
  p.nkeys = nkeys;
  p.zeros_extra = zeros_extra;
  if (p.npatch == 0) return 0;
  if (p.npatch > 0x7fffffffLL) {
    snprintf(err, errlen, "glcm (CUDA): %lld patches exceed the grid limit", (long long)p.npatch);
    return 1;
  }
  int prev = -1;
  cudaGetDevice(&prev);
  if (device >= 0 && device != prev) cudaSetDevice(device);
  int limit = 0;
  cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device >= 0 ? device : prev);
  const int64_t smem = smem_bytes(P, L, nkeys, nacc16);
  cudaError_t e = cudaSuccess;
  int rc = 0;
  if (smem + kStaticSmem > limit) {
    snprintf(err, errlen, "glcm (CUDA): needs %lld bytes of shared memory per block, the device allows %d",
             (long long)(smem + kStaticSmem), limit);
    rc = 1;
  } else {
    cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    const int dev = device >= 0 ? device : prev;
    if (threads == 256)
      e = nacc16 ? launch_t<256, true>(p, smem, dev, s) : launch_t<256, false>(p, smem, dev, s);
    else if (threads == 1024)
      e = nacc16 ? launch_t<1024, true>(p, smem, dev, s) : launch_t<1024, false>(p, smem, dev, s);
    else
      e = nacc16 ? launch_t<512, true>(p, smem, dev, s) : launch_t<512, false>(p, smem, dev, s);
    if (e != cudaSuccess) {
      snprintf(err, errlen, "glcm (CUDA): kernel launch failed (%d threads, %lld bytes of shared memory, %lld patches): %s",
               threads, (long long)smem, (long long)p.npatch, cudaGetErrorString(e));
      rc = 2;
    }
  }
  if (device >= 0 && device != prev && prev >= 0) cudaSetDevice(prev);
  return rc;
}

// Largest dynamic shared memory per block the device allows with the opt-in (bytes), or -1.
int64_t max_smem_optin(int device) {
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return v;
}

// Shared memory per block (dynamic + static bytes) the kernel needs for this configuration.
int64_t smem_needed(int P, int L, int nkeys, bool nacc16) { return smem_bytes(P, L, nkeys, nacc16) + kStaticSmem; }

}  // namespace d4k_glcm_cuda
