// Torch-free core of the CPU GLCM kernels (see glcm.cpp): counting and the exact entropy.
//
// Counting, pixel-outer: the patch is copied (quantised) into a buffer padded with a sentinel level L
// on the sides the offsets reach past; for every pixel and every distinct offset one table cell
// tab_u[q1 * RS + q2] is incremented, RS = L + 1, so a partner outside the patch (q2 = L) lands in a
// garbage column that is never read. Consecutive increments go to different tables, so runs of equal
// pairs in flat regions do not serialise on store-to-load forwarding, and the loop has no branches.
// The paper's configuration (patch 64, 64 levels, distances 1-4 x 4 angles = 14 distinct offsets)
// has a specialised loop with compile-time offsets (one load + one read-modify-write per pair).
//
// Entropy: per table, cells equal to 0, 1, 2, 3 are counted with vector compares; larger counts are
// visited one by one into a histogram with a touched list. Count c of an offset with N pairs maps to
// the id of the reduced fraction c/N (keytab, built by the Python side), multiplicities of the merged
// values accumulate in a dense per-thread array with a touched list; entropy = log2(T) - sum flog[n]/T.
// Paper patches (AVX-512): the scan covers only the square [lo, hi]^2 of the patch's level range, and a
// patch with at most 16 levels (flat regions) is counted without tables, by bitmap popcounts.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace d4k {
namespace core {

struct Layout {
  int P, L, U;                 // patch, levels, distinct offsets that can have pairs
  int top, left, W, H;         // padding: buffer is H x W, the patch starts at (top, left)
  int RS;                      // table row stride (L + 1)
  int64_t TS;                  // table size (L * RS)
  std::vector<int> dr, dc;     // offsets (only those with |dr| < P and |dc| < P)
  std::vector<int> delta;      // dr * W + dc
  std::vector<int> src;        // index of each kept offset in the caller's list
  std::vector<uint32_t> vmask; // per 32 cells of a table (flat, from its start): bit set = a valid cell
};

inline Layout make_layout(int P, int L, const int* off, int Uall) {
  Layout Y;
  Y.P = P;
  Y.L = L;
  int up = 0, down = 0, lft = 0, rgt = 0;
  for (int u = 0; u < Uall; ++u) {
    const int r = off[2 * u], c = off[2 * u + 1];
    if (std::abs(r) >= P || std::abs(c) >= P) continue;  // no pair inside a patch
    Y.dr.push_back(r);
    Y.dc.push_back(c);
    Y.src.push_back(u);
    up = std::max(up, -r);
    down = std::max(down, r);
    lft = std::max(lft, -c);
    rgt = std::max(rgt, c);
  }
  Y.U = (int)Y.dr.size();
  Y.top = up;
  Y.left = lft;
  Y.W = lft + P + rgt;
  Y.H = up + P + down;
  Y.RS = L + 1;
  Y.TS = (int64_t)L * Y.RS;
  for (int u = 0; u < Y.U; ++u) Y.delta.push_back(Y.dr[u] * Y.W + Y.dc[u]);
  Y.vmask.assign((size_t)((Y.TS + 31) / 32), 0u);
  for (int64_t i = 0; i < Y.TS; ++i)
    if (i % Y.RS < L) Y.vmask[(size_t)(i / 32)] |= 1u << (i % 32);
  return Y;
}

// Quantised patch (lut: level of each 8-bit value) into the padded buffer (sentinel L around it;
// with L = 256 the padding reads as 0 and count_ranges never reads it).
inline void fill_padded(const uint8_t* src, int64_t sh, int64_t sw, const uint8_t* lut, const Layout& Y,
                        uint8_t* pb) {
  std::memset(pb, Y.L, (size_t)Y.W * Y.H);
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
  if (sw == 1) {  // 256-entry byte LUT by two 128-entry permutes and a blend on the index's top bit
    const __m512i t0 = _mm512_loadu_si512((const void*)lut), t1 = _mm512_loadu_si512((const void*)(lut + 64)),
                  t2 = _mm512_loadu_si512((const void*)(lut + 128)), t3 = _mm512_loadu_si512((const void*)(lut + 192));
    for (int r = 0; r < Y.P; ++r) {
      const uint8_t* row = src + r * sh;
      uint8_t* out = pb + (int64_t)(r + Y.top) * Y.W + Y.left;
      for (int c = 0; c < Y.P; c += 64) {
        const int n = std::min(64, Y.P - c);
        const __mmask64 m = n == 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
        const __m512i idx = _mm512_maskz_loadu_epi8(m, (const void*)(row + c));
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1), hi = _mm512_permutex2var_epi8(t2, idx, t3);
        _mm512_mask_storeu_epi8((void*)(out + c), m, _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi));
      }
    }
    return;
  }
#endif
  for (int r = 0; r < Y.P; ++r) {
    const uint8_t* row = src + r * sh;
    uint8_t* out = pb + (int64_t)(r + Y.top) * Y.W + Y.left;
    if (sw == 1) {
      for (int c = 0; c < Y.P; ++c) out[c] = lut[row[c]];
    } else {
      for (int c = 0; c < Y.P; ++c) out[c] = lut[row[c * sw]];
    }
  }
}

template <typename T>
inline void count_generic(const uint8_t* pb, const Layout& Y, T* tab) {
  const int U = Y.U, P = Y.P, W = Y.W, RS = Y.RS;
  const int* delta = Y.delta.data();
  const int64_t TS = Y.TS;
  for (int r = 0; r < P; ++r) {
    const uint8_t* row = pb + (int64_t)(r + Y.top) * W + Y.left;
    for (int c = 0; c < P; ++c) {
      const uint8_t* pp = row + c;
      T* base = tab + (int64_t)pp[0] * RS;
      for (int u = 0; u < U; ++u) ++base[u * TS + pp[delta[u]]];
    }
  }
}

// The paper's configuration: P = L = 64, offsets of distances 1..4 at 0, 45, 90, 135 degrees.
constexpr int kPaperU = 14;
constexpr int kPaperOff[2 * kPaperU] = {0, 1, 1, 1, 1, 0, 1, -1, 0, 2, 2, 0, 0, 3,
                                        2, 2, 3, 0, 2, -2, 0, 4, 3, 3, 4, 0, 3, -3};
constexpr int kPaperW = 3 + 64 + 4;  // left 3 (dc = -3), right 4
constexpr int kPaperRS = 65;
constexpr int64_t kPaperTS = 64 * kPaperRS;

inline bool is_paper(const Layout& Y) {
  if (Y.P != 64 || Y.L != 64 || Y.U != kPaperU || Y.W != kPaperW || Y.top != 0 || Y.left != 3) return false;
  for (int u = 0; u < kPaperU; ++u)
    if (Y.dr[u] != kPaperOff[2 * u] || Y.dc[u] != kPaperOff[2 * u + 1]) return false;
  return true;
}

template <int u, int slot = u>
inline void paper_step(const uint8_t* pp, uint16_t* base) {
  constexpr int d = kPaperOff[2 * u] * kPaperW + kPaperOff[2 * u + 1];
  ++base[slot * kPaperTS + pp[d]];
}

// Offsets U0..U1-1 (those with dr <= MAXDR) into tables tab[0..U1-U0), rows r0..r1-1 (the caller passes
// tab + U0 * kPaperTS to keep all 14 apart).
template <int U0, int U1, int MAXDR>
inline void count_paper_rows(const uint8_t* pb, uint16_t* tab, int r0, int r1) {
  for (int r = r0; r < r1; ++r) {
    const uint8_t* row = pb + (int64_t)r * kPaperW + 3;
    for (int c = 0; c < 64; ++c) {
      const uint8_t* pp = row + c;
      uint16_t* base = tab + (int64_t)pp[0] * kPaperRS;
#define D4K_STEP(u) \
  if constexpr (U0 <= u && u < U1 && kPaperOff[2 * u] <= MAXDR) paper_step<u, u - U0>(pp, base);
      D4K_STEP(0) D4K_STEP(1) D4K_STEP(2) D4K_STEP(3) D4K_STEP(4) D4K_STEP(5) D4K_STEP(6)
      D4K_STEP(7) D4K_STEP(8) D4K_STEP(9) D4K_STEP(10) D4K_STEP(11) D4K_STEP(12) D4K_STEP(13)
#undef D4K_STEP
    }
  }
}

// All 64 rows; in the last rows the offsets whose partner row is below the patch are skipped (their
// pairs would only land in the garbage column).
template <int U0, int U1>
inline void count_paper_range(const uint8_t* pb, uint16_t* tab) {
  count_paper_rows<U0, U1, 4>(pb, tab, 0, 60);
  count_paper_rows<U0, U1, 3>(pb, tab, 60, 61);
  count_paper_rows<U0, U1, 2>(pb, tab, 61, 62);
  count_paper_rows<U0, U1, 1>(pb, tab, 62, 63);
  count_paper_rows<U0, U1, 0>(pb, tab, 63, 64);
}

// Three passes of 4-5 offsets each: the tables of one pass (<= 41 KB) stay in a 48 KB L1.
inline void count_paper(const uint8_t* pb, uint16_t* tab) {
#ifndef D4K_GLCM_PASSES
#define D4K_GLCM_PASSES 3
#endif
#if D4K_GLCM_PASSES == 1
  count_paper_range<0, 14>(pb, tab);
#elif D4K_GLCM_PASSES == 2
  count_paper_range<0, 7>(pb, tab);
  count_paper_range<7, 14>(pb, tab + 7 * kPaperTS);
#elif D4K_GLCM_PASSES == 3
  count_paper_range<0, 5>(pb, tab);
  count_paper_range<5, 10>(pb, tab + 5 * kPaperTS);
  count_paper_range<10, 14>(pb, tab + 10 * kPaperTS);
#else
  count_paper_range<0, 4>(pb, tab);
  count_paper_range<4, 7>(pb, tab + 4 * kPaperTS);
  count_paper_range<7, 11>(pb, tab + 7 * kPaperTS);
  count_paper_range<11, 14>(pb, tab + 11 * kPaperTS);
#endif
}

// levels == 256: no uint8 sentinel exists; loop over each offset's valid rectangle instead.
template <typename T>
inline void count_ranges(const uint8_t* pb, const Layout& Y, T* tab) {
  const int P = Y.P, W = Y.W, RS = Y.RS;
  for (int u = 0; u < Y.U; ++u) {
    const int dr = Y.dr[u], dc = Y.dc[u];
    const int r0 = std::max(0, -dr), r1 = std::min(P, P - dr);
    const int c0 = std::max(0, -dc), c1 = std::min(P, P - dc);
    T* t = tab + u * Y.TS;
    for (int r = r0; r < r1; ++r) {
      const uint8_t* a = pb + (int64_t)(r + Y.top) * W + Y.left;
      const uint8_t* b = a + Y.delta[u];
      for (int c = c0; c < c1; ++c) ++t[(int64_t)a[c] * RS + b[c]];
    }
  }
}

template <typename T>
inline void count_tables(const uint8_t* pb, const Layout& Y, bool paper, T* tab) {
  if constexpr (sizeof(T) == 2) {
    if (paper) {
      count_paper(pb, tab);
      return;
    }
  }
  if (Y.L > 255) {
    count_ranges<T>(pb, Y, tab);
    return;
  }
  count_generic<T>(pb, Y, tab);
}

struct KeyAcc {  // multiplicity per key; every add also appends its key to a list (no branch on "new key")
  std::vector<int64_t> n;     // per key multiplicity
  std::vector<int32_t> list;  // keys added since the last flush (repeats allowed)
  int64_t len = 0;
  explicit KeyAcc(int64_t k) : n(k, 0), list(8192) {}
  inline void reserve(int64_t more) {
    if (len + more > (int64_t)list.size()) list.resize((size_t)(2 * (len + more)));
  }
  inline void add_unchecked(int32_t key, int64_t w) {  // after reserve()
    n[key] += w;
    list[len++] = key;
  }
  inline void add(int32_t key, int64_t w) {
    if (w == 0) return;
    reserve(1);
    add_unchecked(key, w);
  }
  // A repeated key reads n == 0 the second time: flog[0] = 0 adds nothing. Four partial sums: one
  // chain of float64 adds (4 cycles each) over ~1-2 K keys per patch was the slowest part.
  double flush(const double* flog) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int64_t i = 0;
    for (; i + 4 <= len; i += 4) {
      const int32_t a = list[i], b = list[i + 1], c = list[i + 2], d = list[i + 3];
      s0 += flog[n[a]];
      n[a] = 0;
      s1 += flog[n[b]];
      n[b] = 0;
      s2 += flog[n[c]];
      n[c] = 0;
      s3 += flog[n[d]];
      n[d] = 0;
    }
    for (; i < len; ++i) {
      const int32_t k = list[i];
      s0 += flog[n[k]];
      n[k] = 0;
    }
    len = 0;
    return (s0 + s1) + (s2 + s3);
  }
};

struct CountHist {  // histogram of counts >= 4 of one table, with the list of distinct counts seen
  std::vector<uint32_t> h;
  std::vector<int32_t> seen;
  std::vector<uint16_t> big;  // staging of counts >= 4 (vector compress-store)
  int len = 0;
  explicit CountHist(int64_t nmax, int64_t cells = 0) : h(nmax + 1, 0), seen(nmax + 1, 0), big(cells + 64, 0) {}
  inline void put(uint32_t v) {
    const uint32_t c = h[v];
    h[v] = c + 1;
    seen[len] = (int32_t)v;
    len += (c == 0);
  }
};

// Visit the L x L valid cells of one table (row stride RS), add its value multiplicities (times mult)
// to acc, and zero the whole table (garbage column included).
template <typename T>
inline void accumulate_table(T* t, const Layout& Y, const int32_t* keys, int64_t mult, KeyAcc& acc,
                             CountHist& H) {
  const int L = Y.L, RS = Y.RS;
  uint64_t z = 0, c1 = 0, c2 = 0, c3 = 0;
  int64_t nbig = 0;  // counts >= 4 staged in H.big (vector paths)
  for (int q1 = 0; q1 < L; ++q1) {
    T* row = t + (int64_t)q1 * RS;
    int c = 0;
#if defined(__AVX512BW__)
    if constexpr (sizeof(T) == 2) {
      const __m512i k0 = _mm512_setzero_si512(), k1 = _mm512_set1_epi16(1), k2 = _mm512_set1_epi16(2),
                    k3 = _mm512_set1_epi16(3);
      if (L == 64) {  // empty row (level q1 absent from the patch): common in natural patches
        const __m512i a = _mm512_loadu_si512((const void*)row);
        const __m512i b = _mm512_loadu_si512((const void*)(row + 32));
        if (_mm512_test_epi16_mask(_mm512_or_si512(a, b), _mm512_or_si512(a, b)) == 0) {
          z += 64;
          row[L] = 0;
          continue;
        }
      }
      for (; c + 32 <= L; c += 32) {
        const __m512i v = _mm512_loadu_si512((const void*)(row + c));
        _mm512_storeu_si512((void*)(row + c), k0);  // zero while the line is hot
        z += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k0));
        c1 += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k1));
        c2 += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k2));
        c3 += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k3));
        const __mmask32 m = _mm512_cmpgt_epu16_mask(v, k3);  // (no early exit: unpredictable)
#if defined(__AVX512VBMI2__)
        _mm512_mask_compressstoreu_epi16((void*)(H.big.data() + nbig), m, v);
        nbig += __builtin_popcount((uint32_t)m);
#else
        alignas(64) uint16_t vals[32];
        _mm512_store_si512((void*)vals, v);  // the row is already zeroed: read the values from v
        uint32_t mm = m;
        while (mm) {
          const int j = __builtin_ctz(mm);
          mm &= mm - 1;
          H.big[nbig++] = vals[j];
        }
#endif
      }
    }
#elif defined(__AVX2__)
    if constexpr (sizeof(T) == 2) {
      const __m256i k0 = _mm256_setzero_si256(), k1 = _mm256_set1_epi16(1), k2 = _mm256_set1_epi16(2),
                    k3 = _mm256_set1_epi16(3), k4 = _mm256_set1_epi16(4);
      for (; c + 16 <= L; c += 16) {
        const __m256i v = _mm256_loadu_si256((const __m256i*)(row + c));
        _mm256_storeu_si256((__m256i*)(row + c), k0);
        // movemask gives 2 bits per 16-bit lane
        z += __builtin_popcount((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, k0))) >> 1;
        c1 += __builtin_popcount((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, k1))) >> 1;
        c2 += __builtin_popcount((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, k2))) >> 1;
        c3 += __builtin_popcount((uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(v, k3))) >> 1;
        // v >= 4 (unsigned): max(v, 4) == v
        uint32_t mm = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi16(_mm256_max_epu16(v, k4), v)) & 0x55555555u;
        if (mm) {
          alignas(32) uint16_t vals[16];
          _mm256_store_si256((__m256i*)vals, v);
          while (mm) {
            const int j = __builtin_ctz(mm) >> 1;
            mm &= mm - 1;
            H.put(vals[j]);
          }
        }
      }
    }
#endif
    if constexpr (sizeof(T) == 2) {  // portable: skip 4 zero cells at a time
      for (; c + 4 <= L; c += 4) {
        uint64_t w;
        std::memcpy(&w, row + c, 8);
        if (w == 0) {
          z += 4;
          continue;
        }
        std::memset(row + c, 0, 8);
        for (int k = 0; k < 4; ++k) {
          const uint32_t v = (uint32_t)((w >> (16 * k)) & 0xFFFFu);
          z += (v == 0);
          c1 += (v == 1);
          c2 += (v == 2);
          c3 += (v == 3);
          if (v > 3) H.put(v);
        }
      }
    }
    for (; c < L; ++c) {
      const uint32_t v = row[c];
      row[c] = 0;
      z += (v == 0);
      c1 += (v == 1);
      c2 += (v == 2);
      c3 += (v == 3);
      if (v > 3) H.put(v);
    }
    row[L] = 0;  // garbage column (partners outside the patch)
  }
  for (int64_t k = 0; k < nbig; ++k) H.put(H.big[k]);
  acc.add(keys[0], mult * (int64_t)z);
  acc.add(keys[1], mult * (int64_t)c1);
  acc.add(keys[2], mult * (int64_t)c2);
  acc.add(keys[3], mult * (int64_t)c3);
  for (int k = 0; k < H.len; ++k) {
    const int32_t v = H.seen[k];
    acc.add(keys[v], mult * (int64_t)H.h[v]);
    H.h[v] = 0;
  }
  H.len = 0;
}

#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
// The nonzero counts of one table, compress-stored in st[0, n) (st has room for 32 more), into acc: counts
// 1, 2, 3 by vector compares, 4 .. 4 + kScanBins - 1 (~90 % of the counts >= 4 in natural patches) by
// vector compares too (adding each count to its key one by one cost ~4 us per paper patch), larger ones
// one by one; the other cells - n cells are zero. keys[0 .. kmax] are the table's valid keys.
inline void accumulate_list(uint16_t* st, int64_t n, int64_t cells, const int32_t* keys, int64_t kmax, int64_t mult,
                            KeyAcc& acc) {
  const __m512i zero = _mm512_setzero_si512();
  _mm512_storeu_si512((void*)(st + n), zero);  // pad the list to a multiple of 32 with zeros
  const __m512i k1 = _mm512_set1_epi16(1), k2 = _mm512_set1_epi16(2), k3 = _mm512_set1_epi16(3);
  uint64_t c1 = 0, c2 = 0, c3 = 0;
  int64_t nb = 0;
  for (int64_t k = 0; k < n; k += 32) {  // in place: the compressed store never passes the read point
    const __m512i v = _mm512_loadu_si512((const void*)(st + k));
    c1 += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k1));
    c2 += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k2));
    c3 += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, k3));
    const __mmask32 m = _mm512_cmpgt_epu16_mask(v, k3);
    _mm512_storeu_si512((void*)(st + nb), _mm512_maskz_compress_epi16(m, v));
    nb += __builtin_popcount((uint32_t)m);
  }
  constexpr int kScanBins = 16;
  const int bins = (int)std::max<int64_t>(0, std::min<int64_t>(kScanBins, kmax - 3));  // keys[4 .. kmax]
  const int64_t nbp = (nb + 31) & ~(int64_t)31;
  _mm512_storeu_si512((void*)(st + nb), zero);  // pad the list with zeros (no bin)
  acc.reserve(nb + kScanBins + 4);
  if (nb) {
    int64_t cb[kScanBins] = {};
    for (int64_t k = 0; k < nbp; k += 32) {
      const __m512i v = _mm512_loadu_si512((const void*)(st + k));
      for (int b = 0; b < kScanBins; ++b)  // bins past kmax stay 0 (no count exceeds kmax)
        cb[b] += __builtin_popcount((uint32_t)_mm512_cmpeq_epi16_mask(v, _mm512_set1_epi16((short)(b + 4))));
    }
    // every bin, also the empty ones (n += 0; flush reads flog[0] = 0): no unpredictable branch
    for (int b = 0; b < bins; ++b) acc.add_unchecked(keys[b + 4], mult * cb[b]);
    const __m512i top = _mm512_set1_epi16((short)(4 + kScanBins));
    int64_t nr = 0;
    for (int64_t k = 0; k < nbp; k += 32) {  // in place, as above
      const __m512i v = _mm512_loadu_si512((const void*)(st + k));
      const __mmask32 m = _mm512_cmpge_epu16_mask(v, top);
      _mm512_storeu_si512((void*)(st + nr), _mm512_maskz_compress_epi16(m, v));
      nr += __builtin_popcount((uint32_t)m);
    }
    for (int64_t k = 0; k < nr; ++k) acc.add_unchecked(keys[st[k]], mult);
  }
  acc.add_unchecked(keys[0], mult * (cells - n));
  acc.add_unchecked(keys[1], mult * (int64_t)c1);
  acc.add_unchecked(keys[2], mult * (int64_t)c2);
  acc.add_unchecked(keys[3], mult * (int64_t)c3);
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
// The same for uint16 tables, in two steps: the nonzero counts of the table are compress-stored into
// H.big (a natural patch has a few hundred of 4096 per table) while the table is zeroed; then that short
// list goes through accumulate_list.
inline void accumulate_table_nz(uint16_t* t, const Layout& Y, const int32_t* keys, int64_t kmax, int64_t mult,
                                KeyAcc& acc, CountHist& H) {
  // the table as flat runs of 32 cells (aligned when t is: the paper's tables are 130 x 64 bytes), the
  // garbage column masked out by Y.vmask; the last run stops at the table's end (reads past it are
  // masked, and the caller's buffer has room for them)
  const int L = Y.L;
  const int64_t TS = Y.TS, nv = (TS + 31) / 32;
  const uint32_t* vm = Y.vmask.data();
  uint16_t* st = H.big.data();
  int64_t n = 0;
  const __m512i zero = _mm512_setzero_si512();
  const int64_t full = TS / 32;
  for (int64_t i = 0; i < full; ++i) {
    const __m512i v = _mm512_loadu_si512((const void*)(t + 32 * i));
    _mm512_storeu_si512((void*)(t + 32 * i), zero);
    const __mmask32 m = _mm512_mask_test_epi16_mask((__mmask32)vm[i], v, v);
    _mm512_storeu_si512((void*)(st + n), _mm512_maskz_compress_epi16(m, v));
    n += __builtin_popcount((uint32_t)m);
  }
  if (full < nv) {
    const __mmask32 in = (__mmask32)((1u << (TS % 32)) - 1);
    const __m512i v = _mm512_maskz_loadu_epi16(in, (const void*)(t + 32 * full));
    _mm512_mask_storeu_epi16((void*)(t + 32 * full), in, zero);
    const __mmask32 m = _mm512_mask_test_epi16_mask((__mmask32)vm[full], v, v);
    _mm512_storeu_si512((void*)(st + n), _mm512_maskz_compress_epi16(m, v));
    n += __builtin_popcount((uint32_t)m);
  }
  accumulate_list(st, n, (int64_t)L * L, keys, kmax, mult, acc);
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
// Smallest and largest level of a padded paper patch (the sentinel columns are not read).
inline void paper_level_range(const uint8_t* pb, int& lo, int& hi) {
  __m512i vmin = _mm512_set1_epi8((char)0xFF), vmax = _mm512_setzero_si512();
  for (int r = 0; r < 64; ++r) {
    const __m512i v = _mm512_loadu_si512((const void*)(pb + (int64_t)r * kPaperW + 3));
    vmin = _mm512_min_epu8(vmin, v);
    vmax = _mm512_max_epu8(vmax, v);
  }
  // fold the 64 lanes to one: halves, then byte shifts within 128 bits (maskz extracts: see below)
  const __m256i a =
      _mm256_min_epu8(_mm512_maskz_extracti64x4_epi64(0xF, vmin, 0), _mm512_maskz_extracti64x4_epi64(0xF, vmin, 1));
  const __m256i b =
      _mm256_max_epu8(_mm512_maskz_extracti64x4_epi64(0xF, vmax, 0), _mm512_maskz_extracti64x4_epi64(0xF, vmax, 1));
  __m128i x = _mm_min_epu8(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  __m128i y = _mm_max_epu8(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
  x = _mm_min_epu8(x, _mm_srli_si128(x, 8));
  y = _mm_max_epu8(y, _mm_srli_si128(y, 8));
  x = _mm_min_epu8(x, _mm_srli_si128(x, 4));
  y = _mm_max_epu8(y, _mm_srli_si128(y, 4));
  x = _mm_min_epu8(x, _mm_srli_si128(x, 2));
  y = _mm_max_epu8(y, _mm_srli_si128(y, 2));
  x = _mm_min_epu8(x, _mm_srli_si128(x, 1));
  y = _mm_max_epu8(y, _mm_srli_si128(y, 1));
  lo = _mm_cvtsi128_si32(x) & 0xFF;
  hi = _mm_cvtsi128_si32(y) & 0xFF;
}

// A paper table scanned only over the square [lo, hi]^2 of the patch's level range (every other cell is
// zero): nonzero counts compress-stored to st, then accumulate_list. Only that square
// is zeroed; the garbage column is never read, so it is never zeroed either (it may wrap: harmless).
inline void accumulate_paper_range(uint16_t* t, int lo, int hi, const int32_t* keys, int64_t kmax, int64_t mult,
                                   KeyAcc& acc, uint16_t* st) {
  const int R = hi - lo + 1;
  const __mmask32 m1 = R >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << R) - 1);
  const __mmask32 m2 = R > 32 ? (__mmask32)(R == 64 ? 0xFFFFFFFFu : ((1u << (R - 32)) - 1)) : 0;
  const __m512i zero = _mm512_setzero_si512();
  int64_t n = 0;
  uint16_t* row = t + lo * kPaperRS + lo;
  if (m2) {
    for (int a = 0; a < R; ++a, row += kPaperRS) {
      const __m512i v = _mm512_maskz_loadu_epi16(m1, (const void*)row);
      const __m512i w = _mm512_maskz_loadu_epi16(m2, (const void*)(row + 32));
      _mm512_mask_storeu_epi16((void*)row, m1, zero);
      _mm512_mask_storeu_epi16((void*)(row + 32), m2, zero);
      const __mmask32 mv = _mm512_test_epi16_mask(v, v), mw = _mm512_test_epi16_mask(w, w);
      _mm512_storeu_si512((void*)(st + n), _mm512_maskz_compress_epi16(mv, v));
      n += __builtin_popcount((uint32_t)mv);
      _mm512_storeu_si512((void*)(st + n), _mm512_maskz_compress_epi16(mw, w));
      n += __builtin_popcount((uint32_t)mw);
    }
  } else {
    for (int a = 0; a < R; ++a, row += kPaperRS) {
      const __m512i v = _mm512_maskz_loadu_epi16(m1, (const void*)row);
      _mm512_mask_storeu_epi16((void*)row, m1, zero);
      const __mmask32 mv = _mm512_test_epi16_mask(v, v);
      _mm512_storeu_si512((void*)(st + n), _mm512_maskz_compress_epi16(mv, v));
      n += __builtin_popcount((uint32_t)mv);
    }
  }
  accumulate_list(st, n, (int64_t)64 * 64, keys, kmax, mult, acc);
}
#endif

#if defined(__AVX512BW__) && defined(__AVX512VBMI2__) && defined(__AVX512VPOPCNTDQ__)
// Paper patches with few levels (flat regions, sky, backgrounds): no tables. Each present level a is a
// 64 x 64 bitmap B_a (one 64-bit word per row, bit c = column c, zero words below the patch), and the
// count of cell (a, b) for offset (dr, dc) is
//     sum_r popcount(B_a[r] & (B_b[r + dr] shifted so that bit c + dc lands on bit c)),
// the shift dropping partners left or right of the patch and the zero rows those below it. Work is
// P^2 cells x 14 offsets x 8 vector AND + popcount, against ~56 K table increments plus a table scan
// for the table path; measured faster up to P = 16 (P = 4: ~1 us per patch against ~17 us).
constexpr int kBitmapMaxP = 16;  // most levels a patch may have for this path
constexpr int kBitmapMaxR = 24;  // widest level range for which the bitmaps are tried

// The bitmaps of the levels present in [lo, hi] (false: more than kBitmapMaxP of them), then every
// cell's count: cnt[u][i * P + j] for the i-th and j-th present levels.
inline bool paper_counts_bitmap(const uint8_t* pb, int lo, int hi, int& P, uint64_t (*B)[72],
                                uint16_t (*cnt)[kBitmapMaxP * kBitmapMaxP]) {
  P = 0;
  for (int a = lo; a <= hi; ++a) {
    const __m512i va = _mm512_set1_epi8((char)a);
    uint64_t any = 0;
    uint64_t* w = B[P];  // B has a spare row for the (kBitmapMaxP + 1)-th level
    for (int r = 0; r < 64; ++r) {
      const uint64_t m = _mm512_cmpeq_epi8_mask(_mm512_loadu_si512((const void*)(pb + (int64_t)r * kPaperW + 3)), va);
      w[r] = m;
      any |= m;
    }
    if (!any) continue;
    if (P == kBitmapMaxP) return false;
    for (int r = 64; r < 72; ++r) w[r] = 0;
    ++P;
  }
  for (int u = 0; u < kPaperU; ++u) {
    const int dr = kPaperOff[2 * u], dc = kPaperOff[2 * u + 1];  // dr >= 0 for every paper offset
    const __m512i sh = _mm512_set1_epi64(dc > 0 ? dc : -dc);
    for (int j = 0; j < P; ++j) {
      // partner level j, moved onto its base pixels (maskz forms here and below: gcc 12's unmasked
      // shifts and extracts warn -Wmaybe-uninitialized about their undefined pass-through operand)
      __m512i T[8];
      for (int k = 0; k < 8; ++k) {
        const __m512i x = _mm512_loadu_si512((const void*)(B[j] + dr + 8 * k));
        T[k] = dc > 0 ? _mm512_maskz_srlv_epi64(0xFF, x, sh) : _mm512_maskz_sllv_epi64(0xFF, x, sh);
      }
      for (int i = 0; i < P; ++i) {
        const uint64_t* a = B[i];
        __m512i s = _mm512_popcnt_epi64(_mm512_and_si512(_mm512_load_si512((const void*)a), T[0]));
        for (int k = 1; k < 8; ++k)
          s = _mm512_add_epi64(
              s, _mm512_popcnt_epi64(_mm512_and_si512(_mm512_load_si512((const void*)(a + 8 * k)), T[k])));
        const __m256i h =
            _mm256_add_epi64(_mm512_maskz_extracti64x4_epi64(0xF, s, 0), _mm512_maskz_extracti64x4_epi64(0xF, s, 1));
        const __m128i q = _mm_add_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        cnt[u][i * P + j] = (uint16_t)(_mm_cvtsi128_si64(q) + _mm_extract_epi64(q, 1));
      }
    }
  }
  return true;
}

// The patch's entropy by bitmaps, or false (nothing done, acc untouched) when it has too many levels.
// Kept out of line: inlined, it changed the register allocation of the table path's counting loop.
__attribute__((noinline)) inline bool paper_entropy_bitmap(const uint8_t* pb, int lo, int hi, const Layout& Y,
                                                          const int64_t* mult, const int32_t* keytab,
                                                          int64_t keystride, int64_t zeros_extra,
                                                          const double* flog, double log2T, double T_,
                                                          KeyAcc& acc, double& out) {
  alignas(64) static thread_local uint64_t B[kBitmapMaxP + 1][72];
  alignas(64) static thread_local uint16_t cnt[kPaperU][kBitmapMaxP * kBitmapMaxP];
  int P = 0;
  if (!paper_counts_bitmap(pb, lo, hi, P, B, cnt)) return false;
  for (int u = 0; u < kPaperU; ++u) {
    const int32_t* keys = keytab + Y.src[u] * keystride;
    const int64_t m = mult[Y.src[u]];
    int64_t nz = 0;
    acc.reserve(P * P + 1);
    for (int k = 0; k < P * P; ++k) {
      const int c = cnt[u][k];
      if (c) {
        ++nz;
        acc.add_unchecked(keys[c], m);
      }
    }
    acc.add_unchecked(keys[0], m * (64 * 64 - nz));
  }
  acc.add(keytab[0], zeros_extra);
  out = log2T - acc.flush(flog) / T_;
  return true;
}
#endif

// Distinct-value entropy of one padded patch. tab: U tables (zeroed, left zeroed); acc, H: empty.
// mult/keytab are indexed by the caller's offset list (Y.src); zeros_extra: cells of the slices whose
// offsets have no pair inside a patch (all zero), already times their multiplicity.
template <typename T>
inline double patch_entropy(const uint8_t* pb, const Layout& Y, bool paper, const int64_t* mult,
                            const int32_t* keytab, int64_t keystride, int64_t zeros_extra, const double* flog,
                            double log2T, double T_, T* tab, KeyAcc& acc, CountHist& H) {
#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
  if constexpr (sizeof(T) == 2) {
    if (paper) {  // each pass's tables are scanned (and zeroed) while hot; every pass reuses tab[0..7)
      int lo, hi;
      paper_level_range(pb, lo, hi);
#if defined(__AVX512VPOPCNTDQ__)
      if (hi - lo < kBitmapMaxR) {
        double e;
        if (paper_entropy_bitmap(pb, lo, hi, Y, mult, keytab, keystride, zeros_extra, flog, log2T, T_, acc, e))
          return e;
      }
#endif
      uint16_t* t = (uint16_t*)tab;
      auto scan = [&](int u0, int u1) {
        for (int u = u0; u < u1; ++u)
          accumulate_paper_range(t + (u - u0) * Y.TS, lo, hi, keytab + Y.src[u] * keystride, keystride - 1,
                                 mult[Y.src[u]], acc, H.big.data());
      };
      if (hi - lo == 63) {  // all 64 levels in range (noise-like, dense tables): 3 passes of <= 5
        count_paper_range<0, 5>(pb, t);  // offsets, <= 42 KB of tables (a 48 KB L1): 13% faster on
        scan(0, 5);                       // noise than 2 passes, ~4% slower on natural patches
        count_paper_range<5, 10>(pb, t);
        scan(5, 10);
        count_paper_range<10, 14>(pb, t);
        scan(10, 14);
      } else {  // 2 passes of 7 (58 KB of tables, of which natural patches touch few lines)
        count_paper_range<0, 7>(pb, t);
        scan(0, 7);
        count_paper_range<7, 14>(pb, t);
        scan(7, 14);
      }
      acc.add(keytab[0], zeros_extra);
      return log2T - acc.flush(flog) / T_;
    }
  }
#endif
  count_tables<T>(pb, Y, paper, tab);
  for (int u = 0; u < Y.U; ++u) {
    const int s = Y.src[u];
#if defined(__AVX512BW__) && defined(__AVX512VBMI2__)
    if constexpr (sizeof(T) == 2) {
      accumulate_table_nz((uint16_t*)tab + u * Y.TS, Y, keytab + s * keystride, keystride - 1, mult[s], acc, H);
      continue;
    }
#endif
    accumulate_table<T>(tab + u * Y.TS, Y, keytab + s * keystride, mult[s], acc, H);
  }
  acc.add(keytab[0], zeros_extra);  // key of the value 0 (c = 0) is the same for every offset
  return log2T - acc.flush(flog) / T_;
}

}  // namespace core
}  // namespace d4k
