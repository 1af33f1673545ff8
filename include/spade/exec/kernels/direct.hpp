// Direct convolution for small square-ish kernels (KH x KW taps, stride S, one
// conv group), with no im2col matrix.
//
// The input is copied once, zero-padded, into S x S phase planes per channel:
// plane (a, b) holds the padded rows a, a+S, a+2S, ... and of each the columns
// b, b+S, b+2S, ..., so every tap reads a contiguous run of its plane. All
// planes of a call share one row width `wq`, and the output is computed over
// the "flat" index f = oh * wq + ow: tap (i, j) of output f reads element
// f + (i / S) * wq + j / S of plane (i % S, j % S). A step multiplies one or
// two vectors (direct_nr) of consecutive flat outputs by MR broadcast weights, whatever the
// row width: rows narrower than a vector (7x7 and 14x14 maps) cost only the
// wq - out_w columns of padding that are computed and dropped, not empty lanes.
//
// With AVX or AVX-512, a 3x3 stride-1 conv with padding 1 skips the planes: it
// is computed flat over the unpadded input itself (conv3x3_flat), the taps that
// fall outside the plane or wrap onto the next row masked off in the load. With
// AVX-512, at stride 2 (padding 1) it runs over unpadded phase planes with a
// zero margin above each (fill_flat_planes, flat3x3_tile), flat over the output
// too; AVX keeps the padded planes at stride 2 (not compared there).
//
// The weights are packed once (pack_direct_weights, at compile time of an
// inference plan) into panels of MR output channels, tap-major inside a channel.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/graph/ops/common.hpp"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace spade::kernels {

namespace detail {
// The widest vector the target has: 64 bytes with AVX-512, 32 with AVX, else 16.
// Vectors never cross a function boundary by value (that would tie the ABI to the ISA).
// The register tile of the direct kernel is MR weights (broadcast) times NV vectors
// of outputs: 8 x 2 in AVX-512's 32 registers; 6 x 2 in AVX's 16 (12 accumulators, two
// input vectors, one broadcast weight), enough independent FMAs to cover their latency
// (5 cycles, 2 per cycle on Zen 2: a 4 x 2 tile's 8 chains cap it at 77 % of the peak).
// On Zen 2 6 x 2 ran 3x3 convs 1.1-1.3x, and with the input vectors kept in registers
// (direct_tile) 1.5-2x, as fast as 4 x 2. Without AVX, 4 x 2 (not measured since).
#if defined(__AVX512F__)
inline constexpr int vector_bytes = 64;
inline constexpr int direct_tile_rows = 8;
#elif defined(__AVX__)
inline constexpr int vector_bytes = 32;
inline constexpr int direct_tile_rows = 6;
#else
inline constexpr int vector_bytes = 16;
inline constexpr int direct_tile_rows = 4;
#endif
inline constexpr int direct_vectors = 2;
template <class T>
struct Lanes {
    typedef T type __attribute__((vector_size(vector_bytes)));
    static constexpr int count = vector_bytes / static_cast<int>(sizeof(T));
    // the same vector at any address of a T, aliasing T (one unaligned load or store)
    typedef T unaligned __attribute__((vector_size(vector_bytes), aligned(alignof(T)), may_alias));
};
// A vector from p[0, L).
template <class T>
typename Lanes<T>::type load(const T* p) {
    return *reinterpret_cast<const typename Lanes<T>::unaligned*>(p);
}
// p[0, L) = v.
template <class T, class V>
void store(T* p, const V& v) {
    *reinterpret_cast<typename Lanes<T>::unaligned*>(p) = v;
}
// Lane masks for a plane computed flat, in whole vectors of outputs from flat index f on (rows
// w wide, n elements, n a multiple of w): left(f) clears the lanes of outputs at column 0 and
// right(f) those at column w - 1, whose left (right) neighbour in flat order lies on the row
// above (below).
// Kernels read them through view(), a copy of two pointers that stays in registers (the
// masks' own members would be reloaded after every store of a vector, which may alias).
// The table of each (n, w) is built once and kept for the process, read only after (up to
// shared_elements in all; past that, an object builds a table of its own). Built anew on
// every call, the calling core wrote lines that the other core had read on the call before,
// getting each back from it before the kernel could start, and the other core then read them
// back again: on the Intel AMX machine, two threads, a block of MobileNet-v2 pruned by three
// quarters at 56 x 56 waited 1.2 us more to start and ran 6-30 % slower alone.
template <class T>
class WrapMasks {
public:
    using Bits = std::conditional_t<sizeof(T) == 8, std::int64_t, std::int32_t>;
    typedef Bits vector __attribute__((vector_size(vector_bytes), aligned(alignof(Bits)), may_alias));
    struct View {
        const Bits* keep_left;
        const Bits* keep_right;
        vector left(Index f) const { return *reinterpret_cast<const vector*>(keep_left + f); }
        vector right(Index f) const { return *reinterpret_cast<const vector*>(keep_right + f); }
    };
    WrapMasks(Index n, Index w) : n_(n) {
        struct Table {
            Index n, w;
            std::unique_ptr<Bits[]> keep;
        };
        if (n == 0) return;  // nothing to read (the stride-2 kernels)
        // never destroyed (a kernel may run from a static destructor), never shrinks (the
        // tables stay where they are)
        static std::mutex& lock = *new std::mutex;
        static std::vector<Table>& tables = *new std::vector<Table>;
        static Index elements = 0;
        const std::lock_guard<std::mutex> hold(lock);
        for (const auto& t : tables)
            if (t.n == n && t.w == w) {
                keep_ = t.keep.get();
                return;
            }
        auto keep = build(n, w);
        keep_ = keep.get();
        if (elements + 2 * n > shared_elements) {
            own_ = std::move(keep);
            return;
        }
        elements += 2 * n;
        tables.push_back({n, w, std::move(keep)});
    }
    View view() const { return {keep_, keep_ + n_}; }

private:
    static constexpr Index shared_elements = Index(1) << 22;  // 16 MiB of float masks, 32 of double
    static std::unique_ptr<Bits[]> build(Index n, Index w) {
        auto keep = std::make_unique_for_overwrite<Bits[]>(static_cast<std::size_t>(2 * n));
        std::fill(keep.get(), keep.get() + 2 * n, ~Bits(0));
        for (Index f = 0; f < n; f += w) {
            keep[static_cast<std::size_t>(f)] = Bits(0);
            keep[static_cast<std::size_t>(n + f + w - 1)] = Bits(0);
        }
        return keep;
    }
    Index n_;
    const Bits* keep_ = nullptr;
    std::unique_ptr<Bits[]> own_;  // past shared_elements
};
// Calls f(q) for q = 0, w, 2w, ... covering [0, n) in whole pieces of w: the last
// piece is shifted back to end at n, so a few elements are done twice instead of
// leaving a partial vector. With n < w, one piece at 0, which f must cut to n.
template <class F>
[[gnu::always_inline]] inline void cover(Index n, Index w, F&& f) {
    for (Index q = 0;; q += w) {
        q = std::max<Index>(0, std::min(q, n - w));
        f(q);
        if (q + w >= n) break;
    }
}
}  // namespace detail

/// Output channels per weight panel of the direct kernel.
inline constexpr int direct_mr = detail::direct_tile_rows;
/// Flat output pixels one step computes.
template <class T>
constexpr Index direct_nr() {
    return detail::direct_vectors * detail::Lanes<T>::count;
}

/// Geometry of a direct convolution of one image.
struct DirectGeometry {
    Index cin = 0, h = 0, w = 0, pad_h = 0, pad_w = 0, cout = 0;
    Index out_h = 0, out_w = 0;
    Index wq = 0;      ///< row width of every phase plane
    Index hq = 0;      ///< rows of a phase plane that hold (padded) input
    Index flat = 0;    ///< flat outputs computed: (out_h - 1) * wq + out_w
    Index plane = 0;   ///< elements per phase plane, slack for the last step's reads included
    /// conv_direct: 3x3, padding 1, stride 1 with AVX or AVX-512 and stride 2 with AVX-512,
    /// computed flat over the output (conv3x3_flat): at stride 1 in place without planes, at
    /// stride 2 over unpadded phase planes `flat_plane` apart
    bool same = false;
    Index flat_plane = 0;  ///< elements per unpadded phase plane (stride 2 with `same`)
    Index flat_slack = 0;  ///< what the last step reads past the last unpadded plane

    /// Elements of scratch the input planes take.
    Index workspace(int s) const {
        if (same) return s == 1 ? 0 : cin * s * s * flat_plane + flat_slack;
        return cin * s * s * plane;
    }
};

namespace detail {
// Whether a 3x3 conv of stride S and padding 1 may run flat (conv3x3_flat) on this target: at
// stride 1 with AVX or AVX-512, at stride 2 with AVX-512 (AVX keeps the padded planes there,
// not compared)
template <int S>
constexpr bool flat3x3_stride() {
#if defined(__AVX__)
    return S == 1 || (S == 2 && vector_bytes >= 64);
#else
    return false;
#endif
}
// Whether such a conv of h x w channels and cout outputs runs flat. With AVX (Zen 2, against
// the padded planes) flat won where the planes' copy weighs: 1.1-5x with up to 16 outputs,
// 1.1-2x with up to 64 on planes up to 32 wide, and lost 1.05-1.25x with more outputs (64 at
// 56 x 56, 128 at 7 x 7 and 28 x 28, 256 at 14 x 14). Channels a multiple of 4 KiB apart
// (256 x 256, 128 x 128 floats) fall into the same cache sets read in place: 1.1-2x slower
// there. AVX-512 takes every plane, as it did before (not measured on these shapes).
template <class T, int S>
bool flat3x3_fits(Index h, Index w, Index cout) {
    if constexpr (!flat3x3_stride<S>()) return false;
    if constexpr (vector_bytes >= 64) return true;
    return (cout <= 16 || (w <= 32 && cout <= 64)) && (h * w * static_cast<Index>(sizeof(T))) % 4096 != 0;
}
}  // namespace detail

/// Lays out a KH x KW, stride S direct convolution of `cin` channels of h x w (padding pad_h, pad_w).
/// Output extents default to the windows that fit the padded input; pooling in ceil mode passes
/// larger ones, whose windows read padding past the bottom and right edges.
template <class T, int KH, int KW, int S>
DirectGeometry direct_geometry(Index cin, Index h, Index w, Index pad_h, Index pad_w, Index cout, Index out_h = 0,
                               Index out_w = 0) {
    DirectGeometry g;
    g.cin = cin, g.h = h, g.w = w, g.pad_h = pad_h, g.pad_w = pad_w, g.cout = cout;
    const Index hp = h + 2 * pad_h, wp = w + 2 * pad_w;
    g.out_h = out_h > 0 ? out_h : (hp - KH) / S + 1;
    g.out_w = out_w > 0 ? out_w : (wp - KW) / S + 1;
    g.wq = std::max((wp + S - 1) / S, g.out_w + (KW - 1) / S);
    g.hq = std::max((hp + S - 1) / S, g.out_h + (KH - 1) / S);
    g.flat = (g.out_h - 1) * g.wq + g.out_w;
    constexpr Index NR = direct_nr<T>();
    const Index steps = (g.flat + NR - 1) / NR;
    g.plane = std::max(g.hq * g.wq, steps * NR + (KH - 1) / S * g.wq + (KW - 1) / S);
    g.same = KH == 3 && KW == 3 && pad_h == 1 && pad_w == 1 && g.out_h == (h - 1) / S + 1 &&
             g.out_w == (w - 1) / S + 1 && detail::flat3x3_fits<T, S>(h, w, cout);
    // stride 2: per phase a margin of a row and one element, then the outputs' extent; a plane's
    // last step reads up to a step past its last output, into the next plane or, after the last
    // plane, into the slack (lanes whose outputs are not stored)
    if (g.same && S == 2) g.flat_plane = g.out_w + 1 + g.out_h * g.out_w, g.flat_slack = NR;
    return g;
}

/// Elements of packed weights for `cout` x `cin` x KH x KW.
inline Index direct_packed_size(Index cout, Index cin, int taps) {
    return (cout + direct_mr - 1) / direct_mr * cin * taps * direct_mr;
}

/// Packs w [cout, cin, taps] into panels of direct_mr outputs: packed[p][c][t][r] = w[p * MR + r][c][t]
/// (zero past cout). `packed` holds direct_packed_size elements.
template <class T>
void pack_direct_weights(const T* w, Index cout, Index cin, int taps, T* packed) {
    constexpr int MR = direct_mr;
    const Index panels = (cout + MR - 1) / MR;
    std::fill(packed, packed + panels * cin * taps * MR, T(0));
    for (Index o = 0; o < cout; ++o)
        for (Index c = 0; c < cin; ++c)
            for (int t = 0; t < taps; ++t) packed[(((o / MR) * cin + c) * taps + t) * MR + o % MR] = w[(o * cin + c) * taps + t];
}

namespace detail {
#if defined(__AVX__)
// Lane masks on the vector types above: loads and stores of the lanes a mask sets (the others
// read as zero, and are never touched in memory: a masked-off lane past an array's end does
// not fault). AVX-512 keeps them in mask registers, AVX in vectors of all-ones lanes (what
// vmaskmov reads); lane_bits makes either from bit l for lane l.
using VF = Lanes<float>::type;
using VD = Lanes<double>::type;
#if defined(__AVX512F__)
template <class T>
using LaneMask = std::conditional_t<sizeof(T) == 8, __mmask8, __mmask16>;
template <class T>
[[gnu::always_inline]] inline LaneMask<T> lane_bits(unsigned bits) {
    return LaneMask<T>(bits);
}
inline VF load_masked(const float* p, __mmask16 m) { return reinterpret_cast<VF>(_mm512_maskz_loadu_ps(m, p)); }
inline VD load_masked(const double* p, __mmask8 m) { return reinterpret_cast<VD>(_mm512_maskz_loadu_pd(m, p)); }
inline void store_masked(float* p, __mmask16 m, const VF& v) { _mm512_mask_storeu_ps(p, m, reinterpret_cast<__m512>(v)); }
inline void store_masked(double* p, __mmask8 m, const VD& v) { _mm512_mask_storeu_pd(p, m, reinterpret_cast<__m512d>(v)); }
// p[0, L) with the lanes m clears zero, where all of p[0, L) may be read
template <class T>
typename Lanes<T>::type load_kept(const T* p, LaneMask<T> m) {
    return load_masked(p, m);
}
#else
template <class T>
using LaneMask = typename WrapMasks<T>::vector;
template <class T>
[[gnu::always_inline]] inline LaneMask<T> lane_bits(unsigned bits) {
    using B = typename WrapMasks<T>::Bits;
    LaneMask<T> bit;  // lane l: 1 << l
    for (int l = 0; l < Lanes<T>::count; ++l) bit[l] = B(1) << l;
    return ((LaneMask<T>{} + static_cast<B>(bits)) & bit) != 0;
}
inline VF load_masked(const float* p, LaneMask<float> m) {
    return reinterpret_cast<VF>(_mm256_maskload_ps(p, reinterpret_cast<__m256i>(m)));
}
inline VD load_masked(const double* p, LaneMask<double> m) {
    return reinterpret_cast<VD>(_mm256_maskload_pd(p, reinterpret_cast<__m256i>(m)));
}
inline void store_masked(float* p, LaneMask<float> m, const VF& v) {
    _mm256_maskstore_ps(p, reinterpret_cast<__m256i>(m), reinterpret_cast<__m256>(v));
}
inline void store_masked(double* p, LaneMask<double> m, const VD& v) {
    _mm256_maskstore_pd(p, reinterpret_cast<__m256i>(m), reinterpret_cast<__m256d>(v));
}
// p[0, L) with the lanes m clears zero, where all of p[0, L) may be read: a load and an AND
// (vmaskmov loads take longer on Zen)
template <class T>
typename Lanes<T>::type load_kept(const T* p, LaneMask<T> m) {
    using V = typename Lanes<T>::type;
    return reinterpret_cast<V>(reinterpret_cast<LaneMask<T>>(load(p)) & m);
}
#endif
// bits [lo, hi) set, both clamped to [0, L) (inlined: GCC had left it a call, a quarter of a
// stride-2 depthwise conv's time on 14 x 14 planes, whose rows split under these masks)
template <class T>
[[gnu::always_inline]] inline unsigned lane_range_bits(Index lo, Index hi) {
    constexpr Index L = Lanes<T>::count;
    lo = std::clamp<Index>(lo, 0, L), hi = std::clamp<Index>(hi, lo, L);
    return ((1u << hi) - 1) & ~((1u << lo) - 1);
}
// lanes [lo, hi) of a vector of T, both clamped to [0, L)
template <class T>
[[gnu::always_inline]] inline LaneMask<T> lane_range(Index lo, Index hi) {
    return lane_bits<T>(lane_range_bits<T>(lo, hi));
}
#endif
// The even lanes of a, then those of b; pick_lanes<1> the odd ones (GCC 12 and Clang both have
// __builtin_shufflevector)
template <int Odd, class V, std::size_t... I>
[[gnu::always_inline]] inline V pick_lanes(const V& a, const V& b, std::index_sequence<I...>) {
    return __builtin_shufflevector(a, b, (2 * I + Odd)...);
}

// p's last lane, then v's lanes but its last: v moved up a lane with p's last shifted in
template <class V, std::size_t... I>
[[gnu::always_inline]] inline V shift_in(const V& p, const V& v, std::index_sequence<I...>) {
    return __builtin_shufflevector(p, v, (sizeof...(I) - 1 + I)...);
}

// even[k] = src[2 k] for k < ceil(n / 2) and, if odd is not null, odd[k] = src[2 k + 1] for k < floor(n / 2).
// With AVX-512, whole vectors are gathered by one two-source permute; narrower targets go 16 bytes
// at a time through one in-lane shuffle per output: Zen's AVX2 splits a lane-crossing 32-byte
// permute into several slow micro-ops, and filling a stride-2 channel's planes this way measured
// 2.3x faster there. Inlined: called once per input row, it had spent more on its call (a stack
// aligned for vectors) than on the 14 or 28 elements of a small plane's row.
template <class T>
[[gnu::always_inline]] inline void split_even_odd(const T* src, Index n, T* even, T* odd) {
    Index k = 0;
    if constexpr (vector_bytes >= 64) {
        using V = typename Lanes<T>::type;
        constexpr int L = Lanes<T>::count;
        constexpr auto lanes = std::make_index_sequence<L>{};
        for (; 2 * k + 2 * L <= n; k += L) {
            const V a = load(src + 2 * k), b = load(src + 2 * k + L);
            store(even + k, pick_lanes<0>(a, b, lanes));
            if (odd) store(odd + k, pick_lanes<1>(a, b, lanes));
        }
#if defined(__AVX512F__)
        // the rest (all of a row up to 2 L long) in one step under masks, not element by
        // element: masked-off lanes are never read or written
        if (const Index m = n - 2 * k; m > 0) {
            const V a = load_masked(src + 2 * k, lane_range<T>(0, m)), b = load_masked(src + 2 * k + L, lane_range<T>(0, m - L));
            store_masked(even + k, lane_range<T>(0, (m + 1) / 2), pick_lanes<0>(a, b, lanes));
            if (odd) store_masked(odd + k, lane_range<T>(0, m / 2), pick_lanes<1>(a, b, lanes));
            k += (m + 1) / 2;
        }
#endif
    } else {
        typedef T H __attribute__((vector_size(16), aligned(alignof(T)), may_alias));
        constexpr Index h = 16 / static_cast<Index>(sizeof(T));
        static_assert(h == 4 || h == 2, "split_even_odd: 4- or 8-byte elements");
        for (; 2 * k + 2 * h <= n; k += h) {
            const H a = *reinterpret_cast<const H*>(src + 2 * k), b = *reinterpret_cast<const H*>(src + 2 * k + h);
            if constexpr (h == 4) {
                *reinterpret_cast<H*>(even + k) = __builtin_shufflevector(a, b, 0, 2, 4, 6);
                if (odd) *reinterpret_cast<H*>(odd + k) = __builtin_shufflevector(a, b, 1, 3, 5, 7);
            } else {
                *reinterpret_cast<H*>(even + k) = __builtin_shufflevector(a, b, 0, 2);
                if (odd) *reinterpret_cast<H*>(odd + k) = __builtin_shufflevector(a, b, 1, 3);
            }
        }
    }
    for (; 2 * k < n; ++k) {
        even[k] = src[2 * k];
        if (odd && 2 * k + 1 < n) odd[k] = src[2 * k + 1];
    }
}

// Where the two column phases of a stride-2 plane take an input row's columns: phase b column q
// holds input column 2 q + b - pad_w, so one phase is the row's even columns from column `at` on
// and the other its odd columns. With even padding phase 0 takes the even ones, with odd padding
// the odd ones. Both fit in any geometry direct_geometry lays out: wq >= pad_w + ceil(w / 2).
struct PhaseSplit {
    Index at[2], count[2];  // per phase: first plane column and number of input columns
    bool even_pad;
    explicit PhaseSplit(const DirectGeometry& g) : even_pad(g.pad_w % 2 == 0) {
        const Index m = g.pad_w / 2, ne = (g.w + 1) / 2, no = g.w / 2;
        at[0] = even_pad ? m : m + 1, count[0] = even_pad ? ne : no;
        at[1] = m, count[1] = even_pad ? no : ne;
    }
    // dst[0] and dst[1] (wq columns each) from input row src, padded with `pad`
    template <class T>
    void fill(const T* src, Index w, Index wq, T* const dst[2], T pad) const {
        T* e = even_pad ? dst[0] + at[0] : dst[1] + at[1];
        T* o = even_pad ? dst[1] + at[1] : dst[0] + at[0];
        split_even_odd(src, w, e, o);
        for (int b = 0; b < 2; ++b) {
            std::fill(dst[b], dst[b] + at[b], pad);
            std::fill(dst[b] + at[b] + count[b], dst[b] + wq, pad);
        }
    }
};

// Copies one channel x [h, w] into its S x S phase planes (see the file comment), padded with `pad`:
// the planes of row phases [a0, a1), all of them by default.
template <class T, int S>
void fill_phase_planes(const T* x, const DirectGeometry& g, T* planes, T pad = T(0), int a0 = 0, int a1 = S) {
    if constexpr (S == 2) {  // both column phases of a row in one pass
        const PhaseSplit split(g);
        for (int a = a0; a < a1; ++a) {
            for (Index r = 0; r < g.hq; ++r) {
                T* const dst[2] = {planes + (a * 2) * g.plane + r * g.wq, planes + (a * 2 + 1) * g.plane + r * g.wq};
                const Index ih = r * 2 + a - g.pad_h;
                if (ih >= 0 && ih < g.h) {
                    split.fill(x + ih * g.w, g.w, g.wq, dst, pad);
                } else {
                    std::fill(dst[0], dst[0] + g.wq, pad);
                    std::fill(dst[1], dst[1] + g.wq, pad);
                }
            }
        }
        for (int p = 2 * a0; p < 2 * a1; ++p) std::fill(planes + p * g.plane + g.hq * g.wq, planes + (p + 1) * g.plane, pad);
        return;
    }
    for (int a = a0; a < a1; ++a)
        for (int b = 0; b < S; ++b) {
            T* pl = planes + (a * S + b) * g.plane;
            for (Index r = 0; r < g.hq; ++r) {
                T* dst = pl + r * g.wq;
                const Index ih = r * S + a - g.pad_h;
                if (ih < 0 || ih >= g.h) {
                    std::fill(dst, dst + g.wq, pad);
                    continue;
                }
                const T* src = x + ih * g.w;
                // plane column q reads input column q * S + b - pad_w
                const Index q0 = std::clamp<Index>((g.pad_w - b + S - 1) / S, 0, g.wq);
                const Index q1 = std::clamp<Index>((g.w + g.pad_w - b + S - 1) / S, q0, g.wq);
                std::fill(dst, dst + q0, pad);
                if constexpr (S == 1) {
                    std::memcpy(dst + q0, src + q0 - g.pad_w, sizeof(T) * (q1 - q0));
                } else {
                    const T* s = src + q0 * S + b - g.pad_w;
                    for (Index q = q0; q < q1; ++q, s += S) dst[q] = *s;
                }
                std::fill(dst + q1, dst + g.wq, pad);
            }
            std::fill(pl + g.hq * g.wq, pl + g.plane, pad);
        }
}

// The epilogues below apply the fused activation as a FusedClamp: a branch on the activation
// per vector kept the tile in memory (1x1 convs with 4 to 16 inputs ran 1.4x slower).
// y[0, L) = act(acc + bias + res[0, L)) for one vector of outputs that lie in one row; `res` may be null
template <class T, class V>
[[gnu::always_inline]] inline void store_vector(const V& acc, T bias, FusedClamp<T> act, T* y, const T* res) {
    V v = acc + bias;
    if (res) v += load(res);
    store(y, act(v));
}

// Writes flat outputs [f0, f0 + count) of one channel (see the file comment) to its
// rows y [out_h, out_w] as act(out + bias + res), `res` (optional) laid out like y;
// drops the columns past out_w. One pass per row piece, no calls: on 7 x 7 planes,
// adding, clamping and a memcpy per piece had been a third of a depthwise conv.
template <class T>
void store_flat(const T* out, Index f0, Index count, const DirectGeometry& g, T bias, FusedClamp<T> act, T* y,
                const T* res = nullptr) {
    Index oh = f0 / g.wq, ow = f0 % g.wq;
    for (Index k = 0; k < count;) {
        if (ow < g.out_w) {
            const Index n = std::min(g.out_w - ow, count - k), at = oh * g.out_w + ow;
            const T* o = out + k;
            for (Index i = 0; i < n; ++i) {
                T v = o[i] + bias;
                if (res) v += res[at + i];
                y[at + i] = act(v);
            }
            k += n, ow += n;
        } else {
            k += g.wq - ow, ow = 0, ++oh;
        }
    }
}

#if defined(__AVX__)
// store_vector under a mask: the lanes k sets of y = act(acc + bias + res); `res` may be null
template <class T, class V>
[[gnu::always_inline]] inline void store_vector_masked(const V& acc, T bias, FusedClamp<T> act, T* y, const T* res,
                                                       LaneMask<T> k) {
    V v = acc + bias;
    if (res) v += load_masked(res, k);
    store_masked(y, k, act(v));
}
#endif

#if defined(__AVX512F__)
// AVX-512: lanes [lane, lane + n) of v moved to the bottom.
inline VF compress(const VF& v, Index lane, Index n) {
    return reinterpret_cast<VF>(_mm512_maskz_compress_ps(lane_range<float>(lane, lane + n), reinterpret_cast<__m512>(v)));
}
inline VD compress(const VD& v, Index lane, Index n) {
    return reinterpret_cast<VD>(_mm512_maskz_compress_pd(lane_range<double>(lane, lane + n), reinterpret_cast<__m512d>(v)));
}

// A run of a step's flat outputs that lies in one output row and one vector: lanes
// [lane, lane + n) of vector v go to y[at, at + n).
struct FlatPiece {
    int v;
    Index lane, n, at;
};
// The pieces of `count` flat outputs from the one at row oh, column ow on, vectors of L
// lanes (see the file comment); returns how many (at most count + count / L + 1).
inline int flat_pieces(Index oh, Index ow, Index count, Index lanes_per_vector, const DirectGeometry& g,
                       FlatPiece* out) {
    int np = 0;
    for (Index k = 0; k < count;) {
        if (ow >= g.out_w) {  // padding columns: computed, dropped
            k += g.wq - ow, ow = 0, ++oh;
            continue;
        }
        const Index l = k % lanes_per_vector;
        const Index n = std::min({g.out_w - ow, count - k, lanes_per_vector - l});
        out[np++] = FlatPiece{static_cast<int>(k / lanes_per_vector), l, n, oh * g.out_w + ow};
        k += n, ow += n;
    }
    return np;
}
// y[piece] = act(v's lanes of the piece + bias + res[piece]), `res` (optional) laid out like
// y: the lanes compressed to the bottom of a vector and stored under a mask, no scalar
// loop. The register compress, not the memory one (Zen 4 runs compress-to-memory as
// microcode).
template <class T, class V>
[[gnu::always_inline]] inline void store_piece(const V& v, const FlatPiece& pc, T bias, FusedClamp<T> act, T* y,
                                               const T* res) {
    store_vector_masked(compress(v, pc.lane, pc.n), bias, act, y + pc.at, res ? res + pc.at : nullptr,
                        lane_range<T>(0, pc.n));
}
#endif
}  // namespace detail

namespace detail {
// With AVX's 16 registers GCC folded the input loads of a tile into its FMAs, loading each
// vector once per row (18 loads for 12 FMAs at 6 x 2: bound by the load ports). An empty asm
// that takes the vector in a register keeps it there when an R x N tile leaves room for it
// (R + 1 rows of N vectors and a broadcast weight). One row reads each vector once anyway.
template <int R, int N, class V>
[[gnu::always_inline]] inline void pin_input([[maybe_unused]] V& v) {
#if defined(__AVX__)
    if constexpr (vector_bytes == 32 && R > 1 && (R + 1) * N + 1 <= 16) asm("" : "+x"(v));
#endif
}

// acc = one step of a direct kernel: the R x N tile of outputs of weight panel `a` (packed,
// [cin][KH * KW][MR]) over N vectors from x on, summed over cin channels `channel` apart,
// each channel's KH x KW taps read from its S x S phase planes (`plane` apart, rows `wq` apart).
// A whole panel is MR x NV; a panel with at most R of its rows in use (a conv with few outputs,
// or the last panel of one) takes R rows and more vectors, so no FMAs go to its zero rows.
template <class T, int KH, int KW, int S, int R = direct_tile_rows, int N = direct_vectors, class V>
[[gnu::always_inline]] inline void direct_tile(const T* x, Index cin, Index channel, Index plane, Index wq, const T* a,
                                               V (&acc)[R][N]) {
    constexpr int L = Lanes<T>::count, MR = direct_tile_rows;
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < N; ++v) acc[r][v] = V{};
    for (Index c = 0; c < cin; ++c, x += channel) {
        for (int i = 0; i < KH; ++i) {
#pragma GCC unroll 8
            for (int j = 0; j < KW; ++j, a += MR) {
                const T* src = x + ((i % S) * S + j % S) * plane + (i / S) * wq + j / S;
                V b[N];
                for (int v = 0; v < N; ++v) {
                    b[v] = load(src + v * L);
                    pin_input<R, N>(b[v]);
                }
                for (int r = 0; r < R; ++r)
                    for (int v = 0; v < N; ++v) acc[r][v] += a[r] * b[v];
            }
        }
    }
}
// Finishes rows [0, rows) of a tile from registers: y[o][at + q] = act(acc + bias[o] + res[o][at + q])
// for o = o0 + r, outputs `plane` apart; bias and res may be null
template <class T, class V>
[[gnu::always_inline]] inline void store_tile(V (&acc)[direct_tile_rows][direct_vectors], Index rows, Index o0,
                                              const T* bias, FusedClamp<T> act, T* y, const T* res, Index plane,
                                              Index at) {
    constexpr int L = Lanes<T>::count;
    // forced inline as well: GCC called this lambda out of line, which took the tile through
    // memory (a 3x3 stride-2 stem with 3 inputs and 8 outputs ran 1.8x slower)
    auto row = [&](Index r) __attribute__((always_inline)) {
        const Index o = o0 + r;
        for (int v = 0; v < direct_vectors; ++v)
            store_vector(acc[r][v], bias ? bias[o] : T(0), act, y + o * plane + at + v * L,
                         res ? res + o * plane + at + v * L : nullptr);
    };
    if (rows == direct_tile_rows) {  // a whole panel: unrolled, the tile stays in registers
        for (int r = 0; r < direct_tile_rows; ++r) row(r);
    } else {
        for (Index r = 0; r < rows; ++r) row(r);
    }
}
// Rows [0, rows) of a 1x1 conv's weight panel `a` (packed, [cin][direct_mr]) over `count`
// pixels of x (channels `ld` apart), a step of direct_nr pixels at a time, the last step
// shifted back rather than cut (count >= direct_nr); pixel f of row r finished into
// y[(o0 + r) plane + at + f] as store_tile does. A panel with up to 4 of AVX-512's 8 rows in
// use (a conv with 4 outputs or 12, an expansion to 36) takes a 4-row tile over two steps at a
// time, as panel_steps does, so no FMAs go to its zero rows.
template <class T>
[[gnu::always_inline]] inline void pointwise_steps(const T* x, Index cin, Index ld, Index count, const T* a, Index rows,
                                                   Index o0, const T* bias, FusedClamp<T> act, T* y, const T* res,
                                                   Index plane, Index at) {
    using V = typename Lanes<T>::type;
    constexpr Index NR = direct_nr<T>();
    if constexpr (direct_tile_rows >= 8) {
        if (rows <= 4) {
            constexpr int L = Lanes<T>::count, NV = 2 * direct_vectors;  // two steps
            auto tile = [&](Index f0, auto n) __attribute__((always_inline)) {  // n: vectors, NV or direct_vectors
                constexpr int N = decltype(n)::value;
                V acc[4][N];
                direct_tile<T, 1, 1, 1, 4, N>(x + f0, cin, ld, ld, ld, a, acc);
                for (Index r = 0; r < rows; ++r) {
                    const Index o = o0 + r;
                    for (int v = 0; v < N; ++v)
                        store_vector(acc[r][v], bias ? bias[o] : T(0), act, y + o * plane + at + f0 + v * L,
                                     res ? res + o * plane + at + f0 + v * L : nullptr);
                }
            };
            Index f = 0;
            for (; f + 2 * NR <= count; f += 2 * NR) tile(f, std::integral_constant<int, NV>{});
            for (; f < count; f += NR) tile(std::min(f, count - NR), std::integral_constant<int, direct_vectors>{});
            return;
        }
    }
    for (Index f = 0; f < count; f += NR) {
        const Index f0 = std::min(f, count - NR);
        V acc[direct_mr][direct_vectors];
        direct_tile<T, 1, 1, 1>(x + f0, cin, ld, ld, ld, a, acc);
        store_tile(acc, rows, o0, bias, act, y, res, plane, at + f0);
    }
}
}  // namespace detail

namespace detail {
// Runs a direct kernel over `steps` steps of flat outputs and the weight panels of `cout`
// outputs, in parallel: tile.template operator()<R, N>(s, p, rows) computes and stores rows
// [0, rows) (rows <= R) of panel p over steps [s, s + N). `step_input` is the input one step
// reads (all channels), `step_work` its multiply-adds for a whole panel.
// Jobs are (block of steps, panel), so a panel's weights stay in L1 over a block of steps and
// a block's input (about 256 KiB) stays in L2 over the panels (equal blocks, and at least 4
// jobs per thread for balance).
// A panel with 1, 2 or (of AVX-512's 8 rows) up to 4 rows in use takes several steps to a
// tile: 1 x 8, 2 x 8 and 4 x 4 vectors with 32 registers, 1 x 8 and 2 x 4 with 16, so no
// FMAs go to its zero rows; of AVX's 6 rows, 3 or 4 in use take a 4-row tile of one step.
// With one output channel (pruned DenseNet's growth layers: 3x3, 32 inputs, 56 x 56) the
// conv ran 2x faster (47 -> 23 us on AVX-512).
// Steps [s0, s1) of weight panel p (of `cout` outputs) on one thread, in the tile shape its rows in use take.
template <class F>
[[gnu::always_inline]] inline void panel_steps(Index s0, Index s1, Index p, Index cout, F& tile) {
    constexpr int MR = direct_mr;
    // N steps at a time, the rest one by one
    auto run = [&]<int R, int N>(Index rows) __attribute__((always_inline)) {
        Index s = s0;
        if constexpr (N > 1)
            for (; s + N <= s1; s += N) tile.template operator()<R, N>(s, p, rows);
        for (; s < s1; ++s) tile.template operator()<R, 1>(s, p, rows);
    };
    const Index rows = std::min<Index>(MR, cout - p * MR);
    if (rows == 1) return run.template operator()<1, 4>(rows);
    if (rows == 2) return run.template operator()<2, (MR >= 8 ? 4 : 2)>(rows);
    if constexpr (MR >= 8)
        if (rows <= 4) return run.template operator()<4, 2>(rows);
    if constexpr (MR == 6)
        if (rows <= 4) return run.template operator()<4, 1>(rows);
    run.template operator()<MR, 1>(rows);
}
template <class F>
void run_direct_tiles(Index steps, Index cout, Index step_input, Index step_work, F&& tile) {
    constexpr int MR = direct_mr;
    const Index panels = (cout + MR - 1) / MR;
    const Index most = std::clamp<Index>(Index(1 << 16) / step_input, 1, steps);
    const Index blocks = std::min(steps, std::max((steps + most - 1) / most, (4 * num_threads() + panels - 1) / panels));
    const Index block = (steps + blocks - 1) / blocks;
    parallel_for(
        ((steps + block - 1) / block) * panels,
        [&](long job) {
            const Index b = job / panels, p = job % panels;
            panel_steps(b * block, std::min(steps, (b + 1) * block), p, cout, tile);
        },
        block * step_work);
}

#if defined(__AVX__)
// The load masks of a 3x3 "same" conv (stride 1, padding 1) computed flat over its unpadded
// input (conv3x3_flat), for N vectors of outputs from flat index f0 on: tap[i][j][v] keeps
// the lanes whose input f + (i - 1) w + j - 1 is a pixel of the plane, i.e. row oh + i - 1
// inside [0, h) and, for j = 0 (2), not an output at column 0 (w - 1), whose left (right)
// neighbour in flat order lies on the row above (below). Inside the plane only those
// column conditions remain: side[0] and side[1]. tap is filled at the plane's edges only.
// At stride 2 only side[0] is used, with w the output's width (flat3x3_tile).
template <class T, int N>
struct SameMasks {
    LaneMask<T> side[2][N];
    LaneMask<T> tap[3][3][N];
    SameMasks(Index f0, Index w, Index n, bool edge) {
        constexpr Index L = Lanes<T>::count;
        Index col = f0 % w;  // of the vector's first output
        for (int v = 0; v < N; ++v, col = (col + L) % w) {
            unsigned first = 0, last = 0;  // lanes at column 0 and at column w - 1
            for (Index l = (w - col) % w; l < L; l += w) first |= 1u << l;
            for (Index l = w - 1 - col; l < L; l += w) last |= 1u << l;
            side[0][v] = lane_bits<T>(~first), side[1][v] = lane_bits<T>(~last);
            if (!edge) continue;
            const Index f = f0 + v * L;
            for (int i = 0; i < 3; ++i) {
                const unsigned rows = lane_range_bits<T>((1 - i) * w - f, n - (i - 1) * w - f);
                tap[i][0][v] = lane_bits<T>(rows & ~first);
                tap[i][1][v] = lane_bits<T>(rows);
                tap[i][2][v] = lane_bits<T>(rows & ~last);
            }
        }
    }
};
// acc = R output channels of weight panel `a` (packed [cin][9][MR]) over N vectors of flat
// outputs of a 3x3 conv of padding 1 (conv3x3_flat), x at the first of them, channels
// `channel` apart.
// Stride 1: x is the unpadded input itself (rows w apart). Inside the plane (Edge false: every
// tap of every lane reads inside it) only the side columns' taps need masks.
// Stride 2: x is the first of four unpadded phase planes (fill_flat_planes), `plane` apart:
// plane (a, b) holds input pixel (2 r + a, 2 q + b) at flat index r w + q (w the output's width)
// after a zero margin, so tap (i, j) of output f reads plane (i != 1, j != 1) at f - w if i = 0
// (the margin above the first row) and at f - 1 if j = 0, where outputs at column 0 would wrap
// onto the row above: masked off by side[0].
template <class T, int S, int R, int N, bool Edge, class V>
[[gnu::always_inline]] inline void flat3x3_tile(const T* x, Index cin, Index channel, Index plane, Index w,
                                                const T* a, const SameMasks<T, N>& m, V (&acc)[R][N]) {
    constexpr int L = Lanes<T>::count, MR = direct_tile_rows;
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < N; ++v) acc[r][v] = V{};
    // a local copy: with AVX-512 GCC keeps it in mask registers (read from m, the tile spilled);
    // with AVX's 16 vector registers the tile takes them all and the masks are memory operands
    LaneMask<T> side[2][N];
    for (int v = 0; v < N; ++v) side[0][v] = m.side[0][v], side[1][v] = m.side[1][v];
    for (Index c = 0; c < cin; ++c, x += channel) {
#pragma GCC unroll 3
        for (int i = 0; i < 3; ++i) {
            for (int j = 0; j < 3; ++j, a += MR) {
                // before the input only in masked-off lanes
                const T* src = S == 1 ? x + (i - 1) * w + (j - 1)
                                      : x + (2 * (i != 1) + (j != 1)) * plane - (i == 0) * w - (j == 0);
                const int k = j == 0 ? 0 : S == 1 && j == 2 ? 1 : -1;  // the side mask a tap needs, if any
                V b[N];
                for (int v = 0; v < N; ++v) {
                    if constexpr (Edge)
                        b[v] = load_masked(src + v * L, m.tap[i][j][v]);
                    else
                        b[v] = k < 0 ? load(src + v * L) : load_kept(src + v * L, side[k][v]);
                    pin_input<R, N>(b[v]);
                }
                for (int r = 0; r < R; ++r)
                    for (int v = 0; v < N; ++v) acc[r][v] += a[r] * b[v];
            }
        }
    }
}
// Input row ih of one channel x [h, w] split into its even and odd columns (out_w each, the odd
// ones zero past the last odd column), or zeros for a row past the input.
template <class T>
[[gnu::always_inline]] inline void split_flat_row(const T* x, const DirectGeometry& g, Index ih, T* even, T* odd) {
    if (ih < g.h) {
        split_even_odd(x + ih * g.w, g.w, even, odd);
        if (g.w % 2) odd[g.out_w - 1] = T(0);
    } else {
        std::fill(even, even + g.out_w, T(0));
        std::fill(odd, odd + g.out_w, T(0));
    }
}
// One channel x [h, w] into the four unpadded phase planes of flat3x3_tile at stride 2 (g.flat_plane apart):
// each a zero margin of out_w + 1, then out_h x out_w pixels (zero past the input's last odd row
// or column). Fills the rows [r0, r1) of the planes (and the margins with r0 = 0).
template <class T>
void fill_flat_planes(const T* x, const DirectGeometry& g, T* planes, Index r0, Index r1) {
    const Index wo = g.out_w, margin = wo + 1;
    if (r0 == 0)
        for (int p = 0; p < 4; ++p) std::fill(planes + p * g.flat_plane, planes + p * g.flat_plane + margin, T(0));
    for (Index r = r0; r < r1; ++r)
        for (int a = 0; a < 2; ++a) {
            T* even = planes + 2 * a * g.flat_plane + margin + r * wo;
            split_flat_row(x, g, 2 * r + a, even, even + g.flat_plane);
        }
}
// The phase planes of fill_flat_planes for output rows [r0, r1) of one channel only, each plane
// `stride` apart: a margin of one zero and (for the odd input rows, read by the taps above) the
// row before r0, then rows r0 to r1 - 1, then zeros up to the next plane.
template <class T>
void fill_band_planes(const T* x, const DirectGeometry& g, T* planes, Index stride, Index r0, Index r1) {
    const Index wo = g.out_w, end = wo + 1 + (r1 - r0) * wo;
    for (int p = 0; p < 4; ++p) {
        planes[p * stride] = T(0);
        std::fill(planes + p * stride + end, planes + (p + 1) * stride, T(0));
    }
    // the even rows' margins: read by masked-off lanes and by the plane before's last step only
    std::fill(planes + 1, planes + 1 + wo, T(0));
    std::fill(planes + stride + 1, planes + stride + 1 + wo, T(0));
    T* above = planes + 2 * stride + 1;
    if (r0 > 0) {
        split_flat_row(x, g, 2 * r0 - 1, above, above + stride);
    } else {
        std::fill(above, above + wo, T(0));
        std::fill(above + stride, above + stride + wo, T(0));
    }
    for (Index r = r0; r < r1; ++r)
        for (int a = 0; a < 2; ++a) {
            T* even = planes + 2 * a * stride + wo + 1 + (r - r0) * wo;
            split_flat_row(x, g, 2 * r + a, even, even + stride);
        }
}
// The stems' banded path (conv3x3_flat, stem_block): up to this many input channels
inline constexpr Index flat_stem_channels = 4;
// Where fill_band lays out the phase planes of a band of `rows` output rows of all g.cin
// channels: planes `stride` apart (whole vectors), the first `lead` elements into the
// buffer (an element short of a vector), so that every plane's rows start a vector where
// they are a whole number of vectors wide (MobileNet-v2's stem: 112). An element off that, as
// they had been, every store of the split rows crossed a cache line: aligned, the planes of a
// 3 x 224 x 224 image took 13 us instead of 20.7 (one thread, the Intel AMX machine).
template <class T>
struct BandPlanes {
    static constexpr Index lead = Lanes<T>::count - 1;
    // size: the buffer's elements (whole vectors), what the last step reads past the last plane included
    Index stride, size;
    BandPlanes(const DirectGeometry& g, Index rows) {
        constexpr Index L = Lanes<T>::count;
        stride = (g.out_w + 1 + rows * g.out_w + L - 1) / L * L;
        size = lead + 1 + g.cin * 4 * stride + direct_nr<T>();
    }
};
// The phase planes of output rows [o0, o1) of every channel (fill_band_planes) into `buffer`
// (BandPlanes(g, o1 - o0).size elements, aligned), each plane as tall as the band: a
// plane's last step reads into the next one's margin, all written here (or the zeros after
// the last plane, read by lanes whose outputs are not stored), never a row an earlier band
// left. Returns the first plane and the planes' stride.
template <class T>
std::pair<const T*, Index> fill_band(const T* x, const DirectGeometry& g, T* buffer, Index o0, Index o1) {
    const Index stride = BandPlanes<T>(g, o1 - o0).stride;
    T* planes = buffer + BandPlanes<T>::lead;
    for (Index c = 0; c < g.cin; ++c) fill_band_planes(x + c * g.h * g.w, g, planes + c * 4 * stride, stride, o0, o1);
    std::fill(planes + g.cin * 4 * stride, planes + g.cin * 4 * stride + direct_nr<T>(), T(0));
    return {planes, stride};
}
// Rows [0, rows) of weight panel `a` (packed [cin][9][MR]) of a 3x3 conv of padding 1 computed
// flat (conv3x3_flat) over N steps of outputs from flat index f0 on, `count` outputs from f0 on
// (fewer than the steps hold in the last one): output f of row r stored at y[r y_plane + f]
// with bias[r] (bias may be null) and res[r y_plane + f] (res may be null). Stride 1: x is the
// unpadded input (channels `channel` apart, n outputs in the plane, `plane` unused). Stride 2: x
// is the first of four unpadded phase planes after their margin (flat3x3_tile), channels
// `channel` apart.
template <class T, int S, int R, int N>
[[gnu::always_inline]] inline void flat3x3_steps(const T* x, Index cin, Index channel, Index plane, Index w, Index n,
                                                 Index f0, Index count, const T* a, Index rows, const T* bias,
                                                 FusedClamp<T> clamp, T* y, Index y_plane, const T* res) {
    using V = typename Lanes<T>::type;
    constexpr int L = Lanes<T>::count, NT = N * direct_vectors;  // vectors of the tile
    // at stride 1: some tap of some lane reads outside the plane (stride 2 reads margins)
    const bool edge = S == 1 && (f0 < w + 1 || f0 + NT * L + w + 1 > n);
    const SameMasks<T, NT> m(f0, w, n, edge);
    // computed and stored in one piece per kind of tile: with one tile array for both
    // kinds, GCC kept the accumulators in memory (1.3x slower)
    auto compute = [&]<bool Edge>() __attribute__((always_inline)) {
        V acc[R][NT];
        flat3x3_tile<T, S, R, NT, Edge>(x + f0, cin, channel, plane, w, a, m, acc);
        auto row = [&](Index r) __attribute__((always_inline)) {
            const T b = bias ? bias[r] : T(0);
            T* yo = y + r * y_plane + f0;
            const T* ro = res ? res + r * y_plane + f0 : nullptr;
#pragma GCC unroll 8
            for (int v = 0; v < NT; ++v) {
                if ((v + 1) * L <= count) {
                    store_vector(acc[r][v], b, clamp, yo + v * L, ro ? ro + v * L : nullptr);
                } else if (v * L < count) {
                    store_vector_masked(acc[r][v], b, clamp, yo + v * L, ro ? ro + v * L : nullptr,
                                        lane_range<T>(0, count - v * L));
                }
            }
        };
        // unrolled, every row at a constant index: the tile stays in registers
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r)
            if (r < rows) row(r);
    };
    if constexpr (S == 1)
        if (edge) return compute.template operator()<true>();
    compute.template operator()<false>();
}
// conv_direct for a 3x3 kernel of stride S (1 or 2) and padding 1 (g.same), computed flat
// over the output: output f = oh w + ow, a step NR consecutive outputs stored where they lie,
// no row pieces. At stride 1 in place over the unpadded input: output f reads input
// f + (i - 1) w + j - 1 for tap (i, j), the taps that fall outside the plane or wrap onto the
// next row masked off in the load, no phase planes to fill (a tenth of the time of a pruned
// layer of 16 to 64 channels). At stride 2 over unpadded phase planes in `work`
// (fill_flat_planes, flat3x3_tile); with a stem's few inputs, band by band (fill_band_planes).
template <class T, int S>
void conv3x3_flat(const T* x, const DirectGeometry& g, const T* packed, const T* bias, FusedActivation act, T* y,
                  T* work, const T* res) {
    constexpr int MR = direct_mr;
    constexpr Index NR = direct_nr<T>();
    const Index n = g.out_h * g.out_w, w = g.out_w;
    const FusedClamp<T> clamp(act);
    // stride 2 with a stem's few input channels: bands of output rows, each filling the planes it
    // reads into a slice of its own and computed right away (see below)
    const bool banded = S == 2 && g.cin <= flat_stem_channels && g.out_h >= 2 * num_threads();
    if (S == 2 && !banded) {
        // a few channels split into bands of rows, so that every thread gets some
        const Index bands = std::clamp<Index>((4 * num_threads() + g.cin - 1) / g.cin, 1, g.out_h);
        parallel_for(
            g.cin * bands,
            [&](long i) {
                const Index c = i / bands, b = i % bands;
                fill_flat_planes(x + c * g.h * g.w, g, work + c * 4 * g.flat_plane, g.out_h * b / bands,
                                 g.out_h * (b + 1) / bands);
            },
            4 * g.flat_plane / bands);
        // the slack zeroed so that the lanes no output keeps read no stale values (denormals)
        std::fill(work + g.cin * 4 * g.flat_plane, work + g.cin * 4 * g.flat_plane + g.flat_slack, T(0));
    }
    // steps from s on of the outputs [first, first + total) (flat), at stride 2 over `planes`
    // (a plane `plane` apart, each from the margin of its first row on)
    auto tile_of = [&]<int R, int N>(const T* planes, Index plane, Index first, Index total, Index s, Index p,
                                     Index rows) __attribute__((always_inline)) {
        const Index o = p * MR, f0 = s * NR;
        const T* a = packed + p * g.cin * 9 * MR;
        const T* b = bias ? bias + o : nullptr;
        const T* r = res ? res + o * n + first : nullptr;
        if constexpr (S == 1)
            flat3x3_steps<T, 1, R, N>(x, g.cin, n, 0, w, n, f0, total - f0, a, rows, b, clamp, y + o * n + first, n, r);
        else
            flat3x3_steps<T, 2, R, N>(planes + w + 1, g.cin, 4 * plane, plane, w, n, f0, total - f0, a, rows, b, clamp,
                                      y + o * n + first, n, r);
    };
    if (banded) {
        // Stems (3 input channels at 224 x 224): the planes of a band of output rows are filled
        // by the thread that computes the band, into a slice of its own, instead of all the
        // planes first in a loop of their own (filled by both cores, read back by either). On
        // the Intel AMX machine, two threads: 3 -> 8, 16 and 32 channels at 224 x 224 10-20 %
        // faster alone, MobileNet-v2's stem in the network 69-73 -> 60-62 us pruned at 75 %,
        // 155 -> 141-147 us dense; one thread unchanged.
        // one band per thread, or whole rounds of them of at most 512 KiB of planes each
        const Index threads = num_threads();
        const Index cap = std::max<Index>(1, (Index(1) << 19) / Index(sizeof(T)) / (g.cin * 4 * w));  // rows
        const Index bands = ((g.out_h + cap - 1) / cap + threads - 1) / threads * threads;
        const Index band_rows = (g.out_h + bands - 1) / bands;
        ThreadScratch<T> scratch(static_cast<std::size_t>(BandPlanes<T>(g, band_rows).size), std::nullopt);
        parallel_for(
            bands,
            [&](long b) {
                const Index o0 = b * g.out_h / bands, o1 = (b + 1) * g.out_h / bands, total = (o1 - o0) * w;
                const auto [planes, stride] = fill_band(x, g, scratch.slice(), o0, o1);
                auto tile = [&]<int R, int N>(Index s, Index p, Index rows) __attribute__((always_inline)) {
                    tile_of.template operator()<R, N>(planes, stride, o0 * w, total, s, p, rows);
                };
                for (Index p = 0; p * MR < g.cout; ++p) panel_steps(0, (total + NR - 1) / NR, p, g.cout, tile);
            },
            g.cin * 9 * g.cout * band_rows * w);
        return;
    }
    auto tile = [&]<int R, int N>(Index s, Index p, Index rows) __attribute__((always_inline)) {
        tile_of.template operator()<R, N>(S == 1 ? x : work, g.flat_plane, 0, n, s, p, rows);
    };
    run_direct_tiles((n + NR - 1) / NR, g.cout, NR * g.cin * S * S, g.cin * 9 * MR * NR, tile);
}
#endif
}  // namespace detail

/// y[o] = act(bias[o] + sum_c w[o, c] (*) x[c] + res[o]) for one image x [cin, h, w] into y [cout, out_h, out_w],
/// a KH x KW kernel of stride S with zero padding as laid out by `g`. `packed` comes from
/// pack_direct_weights; `bias` and `res` (shaped like y) may be null; `work` holds g.workspace(S) elements
/// (none, and it may be null, at stride 1 when g.same).
template <class T, int KH, int KW, int S>
void conv_direct(const T* x, const DirectGeometry& g, const T* packed, const T* bias, FusedActivation act, T* y,
                 T* work, const T* res = nullptr) {
#if defined(__AVX__)
    if constexpr (KH == 3 && KW == 3 && detail::flat3x3_stride<S>())
        if (g.same) return detail::conv3x3_flat<T, S>(x, g, packed, bias, act, y, work, res);
#endif
    // one task per channel and row phase: a stem's 3 channels still split evenly over 2 threads
    parallel_for(
        g.cin * S,
        [&](long i) {
            const Index c = i / S;
            const int a = static_cast<int>(i % S);
            detail::fill_phase_planes<T, S>(x + c * g.h * g.w, g, work + c * S * S * g.plane, T(0), a, a + 1);
        },
        S * g.plane);
    const Index plane = g.plane;
    using V = typename detail::Lanes<T>::type;
    constexpr int L = detail::Lanes<T>::count, MR = direct_mr, NV = detail::direct_vectors, taps = KH * KW;
    constexpr Index NR = direct_nr<T>();
    const Index out_plane = g.out_h * g.out_w;
    const FusedClamp<T> clamp(act);
    // stores rows [0, rows) of panel p's tile of step s
    auto finish = [&](V (&acc)[MR][NV], Index s, Index p, Index rows) __attribute__((always_inline)) {
        const Index f0 = s * NR, count = std::min<Index>(NR, g.flat - f0);
        const Index oh = f0 / g.wq, ow = f0 % g.wq;
        if (count == NR && ow + NR <= g.out_w)  // the step lies inside one output row: finish it in registers
            return detail::store_tile(acc, rows, p * MR, bias, clamp, y, res, out_plane, oh * g.out_w + ow);
#if defined(__AVX512F__)
        // a step across row ends: its row pieces, found once for all rows of the tile (on 3x3
        // convs of 16 to 128 channels a scalar store of these steps took 7-24 % of the time)
        detail::FlatPiece pieces[direct_nr<T>() + detail::direct_vectors + 1];  // (NR + NV + 1 here: a GCC 12 ICE)
        const int np = detail::flat_pieces(oh, ow, count, L, g, pieces);
#endif
        for (Index r = 0; r < rows; ++r) {
            const Index o = p * MR + r;
#if defined(__AVX512F__)
            for (int k = 0; k < np; ++k)
                detail::store_piece(acc[r][pieces[k].v], pieces[k], bias ? bias[o] : T(0), clamp, y + o * out_plane,
                                    res ? res + o * out_plane : nullptr);
#else
            T out[NR];
            for (int v = 0; v < NV; ++v) detail::store(out + v * L, acc[r][v]);
            detail::store_flat(out, f0, count, g, bias ? bias[o] : T(0), clamp, y + o * out_plane,
                               res ? res + o * out_plane : nullptr);
#endif
        }
    };
    // R rows of panel p over N steps from s on (one direct_tile), finished step by step
    auto tile = [&]<int R, int N>(Index s, Index p, Index rows) __attribute__((always_inline)) {
        V acc[R][N * NV];
        detail::direct_tile<T, KH, KW, S, R, N * NV>(work + s * NR, g.cin, S * S * plane, plane, g.wq,
                                                    packed + p * g.cin * taps * MR, acc);
        if constexpr (R == MR && N == 1) {
            finish(acc, s, p, rows);
        } else {
            for (int k = 0; k < N; ++k) {
                V one[MR][NV];  // rows past R are never read (rows <= R)
                for (int r = 0; r < R; ++r)
                    for (int v = 0; v < NV; ++v) one[r][v] = acc[r][k * NV + v];
                finish(one, s + k, p, rows);
            }
        }
    };
    detail::run_direct_tiles((g.flat + NR - 1) / NR, g.cout, NR * g.cin * S * S, g.cin * taps * MR * NR, tile);
}

/// A per-channel affine map and activation applied to a conv's input as it is read: x[c] ->
/// act(scale[c] x[c] + shift[c]), a BatchNorm2d (and ReLU) before a 1x1 conv, folded into the
/// conv's input pass by the inference compile step.
template <class T>
struct InputNorm {
    const T* scale;
    const T* shift;
    FusedActivation act;
    /// dst[(c - c0) m + k] = the map of x[c n + lo + k] for channels [c0, c1) and pixels
    /// [lo, hi) of an image x [cin, n], m = hi - lo.
    void apply(const T* x, Index n, Index c0, Index c1, Index lo, Index hi, T* dst) const {
        const FusedClamp<T> clamp(act);
        const Index m = hi - lo;
        for (Index c = c0; c < c1; ++c) {
            const T a = scale[c], b = shift[c];
            const T* src = x + c * n + lo;
            T* d = dst + (c - c0) * m;
            for (Index k = 0; k < m; ++k) d[k] = clamp(a * src[k] + b);
        }
    }
    /// dst [cin, n] = the map of all of x [cin, n], a channel per task.
    void apply_image(const T* x, Index cin, Index n, T* dst) const {
        parallel_for(cin, [&](long c) { apply(x, n, c, c + 1, 0, n, dst + c * n); }, n);
    }
};

/// y[o] = act(bias[o] + sum_c w[o, c] x[c] + res[o]) for a 1x1 convolution of one image read in
/// place: x [cin, n] (n >= direct_nr pixels), y and res (optional) [cout, n]; `packed` comes from
/// pack_direct_weights with one tap. The last step of a plane is shifted back to end at n, so
/// every step is whole and finished in registers; it overlaps the step before, and the two
/// are always in one job (no two threads write the same outputs). Jobs are blocks of steps
/// whose input (4096 elements, 16 KiB of floats, unless one step alone needs more) stays in
/// L1 while every panel of weights passes over it; with fewer blocks than 4 per thread
/// (7x7 to 14x14 planes) the panels are split into groups too. With AVX-512 this measured
/// 1.3-2.6x faster than Eigen's GEMM (which packs the whole image first and accumulates
/// into a zeroed result) on every 1x1 shape of the zoo's classifiers, with AVX2 and the
/// 6 x 2 tile (Zen 2) 1.1-1.7x on all but one (2048 -> 512 at 7x7: 0.98x); with AVX2's
/// old 4 x 2 tile only up to 16 output channels (1.06-1.5x) or up to 32 inputs (1.3x),
/// the rule that remains for weights not pre-packed. Conv2d picks.
/// With `norm`, the conv reads norm's map of x: each job maps its block into an L1-sized slice
/// of its own, which every panel of the job then reads, so the mapped image is never written
/// out whole. Where jobs share blocks (small planes, panels in groups), each maps it: a
/// block is mapped once per group (at most a panel's worth of work per element, against
/// the panel's MR multiply-adds). Mapping the whole image first on the calling thread, as
/// it had been, DenseNet-121 (whose 7 x 7 and 14 x 14 layers split so) ran 10 % slower
/// pruned by three quarters, 4 % by half, 2 % dense (two threads, the Intel AMX machine).
template <class T>
void conv_pointwise(const T* x, Index cin, Index n, Index cout, const T* packed, const T* bias, FusedActivation act,
                    T* y, const T* res = nullptr, const InputNorm<T>* norm = nullptr) {
    constexpr int MR = direct_mr;
    constexpr Index NR = direct_nr<T>();
    const Index panels = (cout + MR - 1) / MR, steps = (n + NR - 1) / NR;
    const Index block = std::clamp<Index>(Index(1 << 12) / (NR * cin), 1, std::max<Index>(1, steps / (2 * num_threads())));
    const Index blocks = std::max<Index>(1, (steps - 1) / block);  // the last block takes the rest, two steps or more
    // too few blocks to keep every thread busy (small planes): the panels split into groups as well
    const Index groups = std::clamp<Index>((4 * num_threads() + blocks - 1) / blocks, 1, panels);
    std::optional<ThreadScratch<T>> mapped;  // a block's mapped input per thread (the last block has the most pixels)
    if (norm) mapped.emplace(static_cast<std::size_t>(cin * (n - (blocks - 1) * block * NR)), std::nullopt);
    const FusedClamp<T> clamp(act);
    parallel_for(
        blocks * groups,
        [&](long job) {
            const Index b = job / groups, group = job % groups;
            const Index s0 = b * block, s1 = b + 1 == blocks ? steps : s0 + block;
            const T* in = x;  // pixel f of channel c at in[c * ld + f - lo]
            Index ld = n, lo = 0;
            if (norm) {
                const Index hi = s1 == steps ? n : s1 * NR;
                lo = s0 * NR, ld = hi - lo;
                T* slice = mapped->slice();
                norm->apply(x, n, 0, cin, lo, hi, slice);
                in = slice;
            }
            for (Index p = group * panels / groups; p < (group + 1) * panels / groups; ++p) {
                // the block's pixels, its last step (the plane's) shifted back to end at n
                const Index f0 = s0 * NR, count = (s1 == steps ? n : s1 * NR) - f0;
                detail::pointwise_steps(in + f0 - lo, cin, ld, count, packed + p * cin * MR, std::min<Index>(MR, cout - p * MR),
                                        p * MR, bias, clamp, y, res, n, f0);
            }
        },
        block * cin * MR * NR * panels / groups);
}

}  // namespace spade::kernels
