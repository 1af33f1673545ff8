// Direct depthwise convolution: one small filter per channel, where a GEMM
// would be a stack of tiny products. Square kernels of 3 (stride 1 or 2) with
// padding 1 and AVX-512 are read in place by tiles of output rows
// (depthwise_rows): at stride 2 all, at stride 1 those from 1.5 vectors of
// outputs wide and from 3/4 of one to one (24 on and 12 to 16 floats). The
// rest at stride 1, and with AVX2 all, go through unpadded phase planes
// computed flat (depthwise_flat), whole vectors in flat order. Other paddings,
// and at stride 1 planes of under a vector, take the padded phase planes of the
// direct kernel (direct.hpp), where every tap is a contiguous vector load.
// Other shapes take a plain loop over output rows. A 1x1 expansion and the
// depthwise 3x3 after it run as one pass where expand_depthwise_fits
// (expand_depthwise): the expanded rows a band of outputs needs are computed into
// a per-thread slice and read there, flat at stride 1, by the row tiles at stride
// 2. With the 1x1 projection after them too (an inverted residual block), where
// inverted_residual_fits (inverted_residual): by bands of rows, or on small planes
// by shares of the expanded channels. A stem (3x3, stride 2, a few input channels)
// with a depthwise 3x3 and a 1x1 projection after it, where stem_block_fits
// (stem_block): by chunks of rows within each thread's band.
#pragma once

#include <algorithm>
#include <cassert>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/exec/kernels/direct.hpp"
#include "spade/exec/kernels/im2col.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade::kernels {

/// depthwise_conv2d for a K x K kernel of stride S without dilation, through phase planes.
template <class T, int K, int S>
void depthwise_direct(const T* in, Index out_channels, Index multiplier, const ConvGeometry& g, const T* w,
                      const T* bias, T* out, FusedActivation act, const T* res) {
    using V = typename detail::Lanes<T>::type;
    constexpr int L = detail::Lanes<T>::count;
    auto dg = direct_geometry<T, K, K, S>(1, g.in_h, g.in_w, g.pad_h, g.pad_w, 1);
    const Index steps = (dg.flat + 4 * L - 1) / (4 * L) * 4;  // vectors, whole groups of 4
    // the last group of vectors reads up to 4 L past the flat range: planes get that slack
    dg.plane = std::max(dg.plane, steps * L + (K - 1) / S * dg.wq + (K - 1) / S);
    ThreadScratch<T> scratch(static_cast<std::size_t>(S * S * dg.plane + steps * L));
    const FusedClamp<T> clamp(act);
    parallel_for(
        out_channels,
        [&](long c) {
            // this channel's phase planes, then its flat outputs
            T* planes = scratch.slice();
            T* flat = planes + S * S * dg.plane;
            detail::fill_phase_planes<T, S>(in + (c / multiplier) * g.in_h * g.in_w, dg, planes);
            T wc[K * K];
            std::copy(w + c * K * K, w + (c + 1) * K * K, wc);
            const Index plane = g.out_h * g.out_w;
            T* yc = out + c * plane;
            const T* rc = res ? res + c * plane : nullptr;
            const T bc = bias ? bias[c] : T(0);
            // N vectors of outputs from flat index f0 on: N independent sums hide the latency of the FMAs
            auto taps = [&]<int N>(Index f0, V(&acc)[N]) {
                for (int n = 0; n < N; ++n) acc[n] = V{};
                for (int i = 0; i < K; ++i)
                    for (int j = 0; j < K; ++j) {
                        const T* src = planes + ((i % S) * S + j % S) * dg.plane + (i / S) * dg.wq + j / S + f0;
                        for (int n = 0; n < N; ++n) {
                            acc[n] += wc[i * K + j] * detail::load(src + n * L);
                        }
                    }
            };
            // by rows, N vectors at a time, the last group of a row shifted left to end at the row's end
            // (it recomputes a few outputs rather than leaving a partial vector)
            auto rows = [&]<int N>() {
                for (Index oh = 0; oh < g.out_h; ++oh) {
                    T* yr = yc + oh * g.out_w;
                    const T* rr = rc ? rc + oh * g.out_w : nullptr;
                    detail::cover(g.out_w, N * L, [&](Index ow) {
                        V acc[N];
                        taps(oh * dg.wq + ow, acc);
                        for (int n = 0; n < N; ++n)
                            detail::store_vector(acc[n], bc, clamp, yr + ow + n * L, rr ? rr + ow + n * L : nullptr);
                    });
                }
            };
            if (g.out_w >= 4 * L) return rows.template operator()<4>();
            if (g.out_w >= 2 * L) return rows.template operator()<2>();
            if (g.out_w >= L) return rows.template operator()<1>();
            constexpr int N = 4;
            for (Index f0 = 0; f0 < steps * L; f0 += N * L) {  // narrow rows: the flat index wastes no lanes
                V acc[N];
                taps(f0, acc);
                for (int n = 0; n < N; ++n) detail::store(flat + f0 + n * L, acc[n]);
            }
            detail::store_flat(flat, 0, dg.flat, dg, bc, clamp, yc, rc);
        },
        g.out_h * g.out_w * K * K);
}

namespace detail {
// One channel of depthwise_flat: its S x S unpadded phase planes `plane` apart, each of out_w
// columns after a margin of out_w + 1 zeros (and as many after), into y (n outputs, res read
// there). `w` is the channel's 9 weights, `keep` the wrap masks of a plane out_w wide of at
// least n outputs.
template <class T, int S>
[[gnu::always_inline]] inline void depthwise_flat_channel(const T* planes, Index plane, Index wo, Index n, const T* w,
                                                          T bias, FusedClamp<T> act, T* y, const T* res,
                                                          typename WrapMasks<T>::View keep) {
    using V = typename Lanes<T>::type;
    using M = typename WrapMasks<T>::vector;
    constexpr int L = Lanes<T>::count;
    V wc[9];  // broadcast once per channel (in registers with AVX-512's 32)
    for (int t = 0; t < 9; ++t) wc[t] = V{} + w[t];
    // where tap (i, j) reads for the output at flat index 0: input row S oh + i - 1 is row
    // oh + dr of phase a (the same for columns). Locals, as the sizes are: captures would be
    // reloaded after every store of a vector (it may alias).
    const T* tap[9];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            const int a = (i - 1 + S) % S, dr = (i - 1 + S) / S - 1;
            const int b = (j - 1 + S) % S, dc = (j - 1 + S) / S - 1;
            tap[i * 3 + j] = planes + (a * S + b) * plane + wo + 1 + dr * wo + dc;
        }
    // N vectors of outputs from f on; sum[d][k] adds the taps of column offset d - 1
    auto vectors = [&]<int N>(Index f) __attribute__((always_inline)) {
        V sum[3][N] = {};
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
                for (int k = 0; k < N; ++k)
                    sum[(j - 1 + S) / S][k] += wc[i * 3 + j] * load(tap[i * 3 + j] + f + k * L);
        for (int k = 0; k < N; ++k) {
            const Index at = f + k * L;
            V v = sum[1][k] + (V)((M)sum[0][k] & keep.left(at));
            if constexpr (S == 1) v += (V)((M)sum[2][k] & keep.right(at));
            store_vector(v, bias, act, y + at, res ? res + at : nullptr);
        }
    };
    // 3 x N sums, 9 broadcast weights: AVX-512's 32 registers hold 3 vectors of outputs,
    // AVX2's 16 one (with 3 the sums spilled, and it ran 5 to 10 % slower)
    constexpr int N = vector_bytes >= 64 ? 3 : 1;
    Index f = 0;
    if constexpr (N > 1)
        for (; f + N * L <= n; f += N * L) vectors.template operator()<N>(f);
    for (; f + L <= n; f += L) vectors.template operator()<1>(f);
    if (f < n) vectors.template operator()<1>(n - L);  // recomputes a few outputs, no partial vector
}
}  // namespace detail

/// depthwise_conv2d for a 3 x 3 kernel of stride S, padding 1 and no dilation, through unpadded
/// phase planes. Plane (a, b) of a channel holds input pixel (S r + a, S q + b) at row r, column q,
/// out_w columns wide, between zero margins of a row and one element. Then tap (i, j) of the output at
/// flat index f = oh out_w + ow reads one plane at f plus a fixed offset, so outputs are computed in
/// whole vectors in flat order and land in place: no padded rows to fill, no rows to pick out after.
/// A tap one column left (right) of its output wraps onto the row above (below) where the output
/// is at column 0 (out_w - 1); such taps are summed apart and masked off there. On 7 x 7 to 28 x 28
/// planes this ran 1.3x to 2.7x faster than the padded planes, whose per-row copies and stores
/// dominated there.
template <class T, int S>
void depthwise_flat(const T* in, Index out_channels, Index multiplier, const ConvGeometry& g, const T* w,
                    const T* bias, T* out, FusedActivation act, const T* res) {
    const Index wo = g.out_w, n = g.out_h * g.out_w;
    const Index margin = wo + 1, plane = n + 2 * margin;
    const detail::WrapMasks<T> wrap(n, wo);
    // zeroed once: the margins, and with an odd input extent the last row or column of the odd
    // phase, are never written, so they stay zero from channel to channel
    ThreadScratch<T> scratch(static_cast<std::size_t>(S * S * plane));
    const FusedClamp<T> clamp(act);
    parallel_for(
        out_channels,
        [&](long c) {
            T* planes = scratch.slice();
            const T* x = in + (c / multiplier) * g.in_h * g.in_w;
            if constexpr (S == 1) {
                std::memcpy(planes + margin, x, sizeof(T) * n);
            } else {
                for (Index r = 0; r < g.out_h; ++r)
                    for (Index a = 0; a < 2 && 2 * r + a < g.in_h; ++a)
                        detail::split_even_odd(x + (2 * r + a) * g.in_w, g.in_w, planes + 2 * a * plane + margin + r * wo,
                                               planes + (2 * a + 1) * plane + margin + r * wo);
            }
            detail::depthwise_flat_channel<T, S>(planes, plane, wo, n, w + c * 9, bias ? bias[c] : T(0), clamp,
                                                 out + c * n, res ? res + c * n : nullptr, wrap.view());
        },
        n * 9);
}

#if defined(__AVX512F__)
namespace detail {
// Output rows [o0, o1) of one channel of depthwise_rows: output row oh is written at
// y + (oh - out_row0) * g.out_w (and res read there), input row ih (of g.in_h) is read at
// x + (ih - row0) * g.in_w, and only the rows those outputs need are: from S o0 - 1 to
// S (o1 - 1) + 1, within the input. `w` is the channel's 9 weights.
// Not inlined: inlined into the serial loop of one thread (and into the fused kernel's job loop),
// GCC 12 made the tiles 1.45x slower (72 channels at 56 x 56 on one thread: 106 against 72 us,
// which the call costs back on 7 x 7 planes only, 3-5 %).
template <class T, int S>
[[gnu::noinline]] void depthwise_rows_channel(const T* x, Index row0, const ConvGeometry& g, const T* w, T bias,
                                              FusedClamp<T> act, T* y, const T* res, Index o0, Index o1,
                                              Index out_row0 = 0) {
    using V = typename Lanes<T>::type;
    constexpr int L = Lanes<T>::count, R = 4;
    V wc[9];  // broadcast once per channel
    for (int t = 0; t < 9; ++t) wc[t] = V{} + w[t];
    // locals, as the sizes are: not reloaded after every store (which may alias)
    const Index width = g.out_w, in_h = g.in_h, in_w = g.in_w;
    // output rows [oh, oh + B) at columns [ow, ow + L); Edge: an input row above or below may be read
    auto tile = [&]<int B, bool Edge>(Index oh, Index ow) __attribute__((always_inline)) {
        // the lanes each load may read and the outputs kept: at stride 1 the left, middle and
        // right taps, at stride 2 column 2 ow - 1 (lane L - 1) and the two loads; all lanes
        // but at the plane's edges and on planes narrower than a vector
        const Index cols = width - ow;  // outputs from ow to the row's end
        LaneMask<T> m0, m1, m2;
        if constexpr (S == 1) {
            m0 = lane_range<T>(ow == 0 ? 1 : 0, cols + 1);
            m1 = lane_range<T>(0, cols), m2 = lane_range<T>(0, cols - 1);
        } else {
            m0 = lane_bits<T>(ow == 0 ? 0u : 1u << (L - 1));
            m1 = lane_range<T>(0, in_w - 2 * ow), m2 = lane_range<T>(0, in_w - 2 * ow - L);
        }
        const LaneMask<T> keep = lane_range<T>(0, cols);
        V acc[B];
        for (int k = 0; k < B; ++k) acc[k] = V{};
#pragma GCC unroll 16
        for (int r = 0; r < S * (B - 1) + 3; ++r) {  // input row S oh - 1 + r
            const Index ih = S * oh + r - 1;
            if (Edge && (ih < 0 || ih >= in_h)) continue;
            const T* src = x + (ih - row0) * in_w + S * ow;  // before the input only in masked-off lanes
            V v0, v1, v2;
            if constexpr (S == 1) {
                v0 = load_masked(src - 1, m0), v1 = load_masked(src, m1), v2 = load_masked(src + 1, m2);
            } else {
                constexpr auto lanes = std::make_index_sequence<L>{};
                const V a = load_masked(src, m1), b = load_masked(src + L, m2);
                v1 = pick_lanes<0>(a, b, lanes);
                v2 = pick_lanes<1>(a, b, lanes);
                v0 = shift_in(load_masked(src - L, m0), v2, lanes);
            }
#pragma GCC unroll 16
            for (int k = 0; k < B; ++k)
                if (r - S * k >= 0 && r - S * k < 3) {  // input row r is tap row r - S k of output row k
                    const int i = r - S * k;
                    acc[k] += wc[i * 3] * v0 + wc[i * 3 + 1] * v1 + wc[i * 3 + 2] * v2;
                }
        }
        for (int k = 0; k < B; ++k) {
            const Index at = (oh + k - out_row0) * width + ow;
            store_vector_masked(acc[k], bias, act, y + at, res ? res + at : nullptr, keep);
        }
    };
    // a band of B output rows (one masked tile a row on planes narrower than a vector)
    auto band = [&]<int B>(Index oh) __attribute__((always_inline)) {
        if (oh == 0 || S * (oh + B) + 1 - S >= in_h)  // the tile's last input row: S (oh + B - 1) + 1
            cover(width, L, [&](Index ow) { tile.template operator()<B, true>(oh, ow); });
        else
            cover(width, L, [&](Index ow) { tile.template operator()<B, false>(oh, ow); });
    };
    if (o1 - o0 < R) {
        for (Index oh = o0; oh < o1; ++oh) band.template operator()<1>(oh);
        return;
    }
    cover(o1 - o0, R, [&](Index k) { band.template operator()<R>(o0 + k); });
}
}  // namespace detail

/// depthwise_conv2d for a 3 x 3 kernel of stride S (1 or 2), padding 1 and no dilation (AVX-512),
/// read in place: no planes. A tile is R output rows by one vector of columns; each input row it
/// needs is read once as the three vectors of its taps (columns one left, in place, one right of
/// the outputs' own; at stride 2 the even and odd columns of two loads, picked apart by permutes,
/// and the odd ones moved up a lane with the column before shifted in) and feeds every output row
/// it is a tap of: a tile of 4 rows reads 6 input rows at stride 1 (18 loads for 36 FMAs, where
/// the phase planes loaded 9 vectors per output vector) and 9 at stride 2. Taps left of column 0
/// and past the input's last column are masked-off lanes; rows above the first and past the last
/// are skipped in the tiles at the top and bottom. The last tile of a plane (of a row) is
/// shifted back to end there, and recomputes a few outputs. On the Intel AMX machine, one
/// thread, against the phase planes: stride 1 at 112 x 112 2.2x faster (7.3 -> 3.3 us a
/// channel, a fifth of it had been copying rows into the padded plane), 56 x 56 1.4x, 36 to
/// 48 wide 2x, and 1.2-1.5x the flat planes at 24 to 32 wide; stride 2 from 112 x 112 to 56 x 56
/// 2.1x, to 16 to 28 wide outputs 1.2-2x. On planes narrower than a vector a tile is one row's
/// outputs under a mask: stride 2 to 7 x 7 and 14 x 14 2.1-2.7x the flat planes, stride 1 at 14 x 14
/// 1.2x (and at 7 x 7, with 9 of 16 lanes idle, 5 % slower: the flat planes stay there).
template <class T, int S>
void depthwise_rows(const T* in, Index out_channels, Index multiplier, const ConvGeometry& g, const T* w,
                    const T* bias, T* out, FusedActivation act, const T* res) {
    static_assert(S == 1 || S == 2, "depthwise_rows: stride 1 or 2");
    const Index n = g.out_h * g.out_w;
    const FusedClamp<T> clamp(act);
    // On planes of 56 rows and more, each thread takes a band of rows of every channel, as the
    // layer before (the stem's bands, the 1x1 convs' blocks of pixels) left its output: split by
    // channels, each core read half of its input from the other's cache. Pruned MobileNet-v2's
    // first depthwise conv (112 x 112), whole networks 0.7-1.2 % faster, dense and pruned alike.
    const Index bands = g.out_h >= 56 ? std::clamp<Index>(num_threads(), 1, g.out_h / 4) : 1;
    parallel_for(
        out_channels * bands,
        [&](long job) {
            const Index b = job / out_channels, c = job % out_channels;
            detail::depthwise_rows_channel<T, S>(in + (c / multiplier) * g.in_h * g.in_w, 0, g, w + c * 9,
                                                 bias ? bias[c] : T(0), clamp, out + c * n, res ? res + c * n : nullptr,
                                                 b * g.out_h / bands, (b + 1) * g.out_h / bands);
        },
        n * 9 / bands);
}
#endif

namespace detail {
// Whether g is a 3x3 window of stride s both ways, padding 1 and no dilation (the fused kernels')
inline bool window3x3(const ConvGeometry& g, Index s) {
    return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == s && g.stride_w == s && g.pad_h == 1 && g.pad_w == 1 &&
           g.dilation_h == 1 && g.dilation_w == 1;
}
}  // namespace detail

/// Whether expand_depthwise computes a 1x1 expansion followed by a depthwise conv of geometry `g`
/// (on the expanded channels, one output each) in one pass: with AVX-512, a 3x3 kernel of stride
/// 1 or 2, padding 1, no dilation, on inputs of 14 x 14 and larger. On 7 x 7 planes the fused
/// pass measured 4-7 % slower than the two layers (two threads, the Intel AMX machine).
inline bool expand_depthwise_fits(const ConvGeometry& g) {
#if defined(__AVX512F__)
    return (detail::window3x3(g, 1) || detail::window3x3(g, 2)) && g.in_h >= 14 && g.in_w >= 14;
#else
    (void)g;
    return false;
#endif
}

#if defined(__AVX512F__)
namespace detail {
// How expand_depthwise_panel (at stride 1) and stem_block lay out the expanded rows of a
// panel for the depthwise conv to run flat over them: each channel's `rows` rows of w pixels
// between margins of zeros (a row and one, rounded up to whole vectors), channels `plane` apart
// (whole vectors), so that each channel starts a vector and the expansion stores its steps
// aligned (from a channel's first pixel on; the scratch slices start pages). An element off
// that, as they had been, every store crossed a cache line: aligned, MobileNet-v2's stride-1
// blocks alone pruned by three quarters (56 x 56, 28 x 28) ran 0-10 % faster on two threads.
template <class T>
struct PaddedRows {
    Index margin, plane;
    PaddedRows(Index w, Index rows) {
        constexpr Index L = Lanes<T>::count;
        margin = (w + 1 + L - 1) / L * L;
        plane = 2 * margin + (rows * w + L - 1) / L * L;
    }
    // depthwise_flat_channel's plane for the outputs from row `row` (of those rows) on: it starts
    // an element before the row above that row
    const T* flat(const T* channel, Index w, Index row) const { return channel + margin - (w + 1) + row * w; }
    // zeros in the margins of `channels` channels from e on, around `count` pixels each
    void zero_margins(T* e, Index channels, Index count) const {
        for (Index r = 0; r < channels; ++r) {
            std::fill(e + r * plane, e + r * plane + margin, T(0));
            std::fill(e + r * plane + margin + count, e + (r + 1) * plane, T(0));
        }
    }
};
// Elements of the scratch expand_depthwise_panel (and stem_block) writes the expanded rows of a
// panel into, for `rows` input rows (at stride 1 as PaddedRows lays them out).
template <class T, int S>
Index expanded_panel_size(const ConvGeometry& g, Index rows) {
    return direct_mr * (S == 1 ? PaddedRows<T>(g.in_w, rows).plane : rows * g.in_w);
}
// The expansion and depthwise step of one weight panel p for output rows [o0, o1): the
// panel's expanded channels over input rows [lo, hi) (the rows those outputs need) into `e`
// (expanded_panel_size), then the depthwise conv over them, the panel's channel r's output
// row oh written at out + r out_plane + (oh - out_row0) out_w (and res read there). At
// stride 1 each channel's rows lie between zero margins and the conv runs flat over them
// (depthwise_flat_channel, `keep` the wrap masks of a plane of at least (o1 - o0) out_w
// outputs), in whole vectors with no lanes past a row's end: against the row tiles on the
// Intel AMX machine, MobileNet-v2's stride-1 blocks (inverted_residual) at 7 x 7 to 56 x 56
// ran 1.2-1.4x faster pruned by three quarters, 1.1-1.2x dense (two threads), and the whole
// network 11 % faster pruned by three quarters, 10 % by half, 6 % dense. At stride 2 the row
// tiles read the rows (depthwise_rows_channel).
template <class T, int S>
[[gnu::always_inline]] inline void expand_depthwise_panel(const T* x, Index cin, const ConvGeometry& g, Index cexp,
                                                          const T* packed, const T* bias_e, FusedClamp<T> clamp_e,
                                                          const T* w, const T* bias, FusedClamp<T> clamp, Index p,
                                                          Index lo, Index hi, Index o0, Index o1, T* e, T* out,
                                                          Index out_plane, Index out_row0, const T* res,
                                                          typename WrapMasks<T>::View keep) {
    constexpr int MR = direct_mr;
    const Index count = (hi - lo) * g.in_w;
    const PaddedRows<T> pad(g.in_w, hi - lo);
    const Index margin = S == 1 ? pad.margin : 0, plane = S == 1 ? pad.plane : count;  // a channel's rows apart
    const Index rows = std::min<Index>(MR, cexp - p * MR);
    if constexpr (S == 1)  // written each time: the expanded rows of a panel differ in count from band to band
        pad.zero_margins(e, rows, count);
    pointwise_steps(x + lo * g.in_w, cin, g.in_h * g.in_w, count, packed + p * cin * MR, rows, 0,
                    bias_e ? bias_e + p * MR : nullptr, clamp_e, e, static_cast<const T*>(nullptr), plane, margin);
    for (Index r = 0; r < rows; ++r) {
        const Index c = p * MR + r;
        const T bc = bias ? bias[c] : T(0);
        if constexpr (S == 1) {
            const Index at = r * out_plane + (o0 - out_row0) * g.out_w;
            depthwise_flat_channel<T, 1>(pad.flat(e + r * plane, g.in_w, o0 - lo), plane, g.out_w, (o1 - o0) * g.out_w,
                                         w + c * 9, bc, clamp, out + at, res ? res + at : nullptr, keep);
        } else {
            depthwise_rows_channel<T, S>(e + r * plane, lo, g, w + c * 9, bc, clamp, out + r * out_plane,
                                         res ? res + r * out_plane : nullptr, o0, o1, out_row0);
        }
    }
}
// The input rows output rows [o0, o1) of a 3x3 conv of stride S and padding 1 read: [lo, hi)
template <int S>
std::pair<Index, Index> input_rows(const ConvGeometry& g, Index o0, Index o1) {
    return {std::max<Index>(0, S * o0 - 1), std::min<Index>(g.in_h, S * (o1 - 1) + 2)};
}
}  // namespace detail

/// out[c] = act(w[c] (*) act_e(E x + bias_e)[c] (+ bias[c]) (+ res[c])): a 1x1 expansion of `cin`
/// channels to `cexp` (E packed by pack_direct_weights) and a depthwise conv of geometry g on
/// each expanded channel (expand_depthwise_fits(g)), without the expanded tensor ever being
/// written out whole. A job is a band of output rows and a group of weight panels: for each panel
/// it expands the input rows the band needs, for the panel's direct_mr channels, into a slice of
/// its own (the direct tiles over those rows, flat), and runs the depthwise conv over that
/// slice (detail::expand_depthwise_panel). Bands are the threads on inputs of 56 rows and more
/// (halo rows expanded twice: 2 of 30 at 56 x 56), else the whole plane; panel groups make up the
/// rest, two jobs per thread. The expanded rows stay in the core's L1 or L2 where the two layers
/// had written 0.3-4.8 MB and read it back, half from the other core: on the Intel AMX machine,
/// two threads, the pairs of MobileNet-v2 pruned by half and by three quarters ran 1.3-2.8x
/// faster fused, the dense ones 1.2-1.8x; on one thread 0.93-1.35x.
template <class T, int S>
void expand_depthwise(const T* x, Index cin, const ConvGeometry& g, Index cexp, const T* packed, const T* bias_e,
                      FusedActivation act_e, const T* w, const T* bias, FusedActivation act, T* out,
                      const T* res = nullptr) {
    static_assert(S == 1 || S == 2, "expand_depthwise: stride 1 or 2");
    constexpr int MR = direct_mr;
    const Index n = g.in_h * g.in_w, n_out = g.out_h * g.out_w, panels = (cexp + MR - 1) / MR;
    const Index threads = num_threads();
    // bands of at least 4 output rows: with rows 14 and more wide, every band expands a step of pixels or more
    const Index bands = g.in_h >= 56 ? std::clamp<Index>(threads, 1, g.out_h / 4) : 1;
    const Index groups = std::clamp<Index>((2 * threads + bands - 1) / bands, 1, panels);
    const Index band_out = (g.out_h + bands - 1) / bands;  // output rows of the tallest band
    // every element a panel's depthwise conv reads, its expansion has written first (or zeroed)
    ThreadScratch<T> scratch(
        static_cast<std::size_t>(detail::expanded_panel_size<T, S>(g, std::min(S * band_out + 2, g.in_h))), std::nullopt);
    const FusedClamp<T> clamp_e(act_e), clamp(act);
    const detail::WrapMasks<T> wrap(S == 1 ? band_out * g.out_w : 0, g.out_w);
    parallel_for(
        bands * groups,
        [&](long job) {
            const Index band = job / groups, group = job % groups;
            const Index o0 = band * g.out_h / bands, o1 = (band + 1) * g.out_h / bands;
            const auto [lo, hi] = detail::input_rows<S>(g, o0, o1);
            T* e = scratch.slice();  // the expanded rows of a panel's channels
            for (Index p = group * panels / groups; p < (group + 1) * panels / groups; ++p)
                detail::expand_depthwise_panel<T, S>(x, cin, g, cexp, packed, bias_e, clamp_e, w, bias, clamp, p, lo, hi,
                                                     o0, o1, e, out + p * MR * n_out, n_out, 0,
                                                     res ? res + p * MR * n_out : nullptr, wrap.view());
        },
        cexp * n * (cin + 9) / (bands * groups));
}
#endif

/// Whether inverted_residual computes a 1x1 expansion, a depthwise conv of geometry `g` and a
/// 1x1 projection in one pass: with AVX-512, a 3x3 kernel of stride 1 or 2, padding 1, no
/// dilation, on outputs of up to 56 rows, input and output planes of a step of pixels
/// (direct_nr) or more. With its two blocks of 56-row outputs fused as well as those of 14 and
/// 28 rows, pruned MobileNet-v2 ran 1-2 % faster than without, dense the same; with its four
/// blocks of 7 x 7 outputs too (in shares of channels), pruned by three quarters 6 % faster,
/// by half 3 %, dense 1 % (two threads, the Intel AMX machine).
inline bool inverted_residual_fits(const ConvGeometry& g) {
#if defined(__AVX512F__)
    constexpr Index NR = direct_nr<float>();  // the larger step (a double one is half)
    return (detail::window3x3(g, 1) || detail::window3x3(g, 2)) && g.out_h <= 56 &&
           g.out_h * g.out_w >= NR;  // and so the input plane (at most twice as wide and tall)
#else
    (void)g;
    return false;
#endif
}

#if defined(__AVX512F__)
/// y = act_p(P act(w (*) act_e(E x + bias_e) + bias) + bias_p (+ res)): an inverted residual
/// block (1x1 expansion of `cin` channels to `cexp`, depthwise conv of geometry g, 1x1
/// projection to `cout`; E and P packed by pack_direct_weights) in one pass where
/// inverted_residual_fits(g). Neither the expanded nor the depthwise tensor is written out.
///
/// Bands of rows: each thread takes a band of output rows through all three steps: the
/// expansion and depthwise step panel by panel (detail::expand_depthwise_panel) into a slice
/// of its own holding the band's depthwise outputs of every channel, then the projection's
/// direct tiles over that slice into the band's rows of y. A thread reads the block's input
/// and writes its output in the rows it owns, as the next block's thread does: the two layers
/// had split the depthwise tensor by channels and the projection its pixels, so half of the
/// wide tensor crossed between the cores. Halo rows of the expansion are computed by both
/// bands (at 14 x 14 on two threads one row of each band's 8). On the Intel AMX machine, two
/// threads, chains of MobileNet-v2's blocks at 14 x 14 and 28 x 28 pruned by three quarters
/// ran 1.33-1.55x faster than the two kernels, pruned by half 1.16-1.29x, the dense blocks at
/// 14 x 14 to 56 x 56 1.02-1.17x. On one thread, on rows 14 or more wide, it runs
/// expand_depthwise and conv_pointwise over the depthwise tensor in a scratch buffer: one band
/// there was 2-10 % slower than the two kernels (and one share, below, runs each projection
/// panel over the whole plane, where conv_pointwise takes all panels over L1-sized blocks).
///
/// Shares of channels: where a second band would hold under a step of pixels, or rows are
/// under 14 wide (7 x 7), the threads split the expanded channels instead, in whole panels. Each
/// share expands and convolves its channels over the whole plane and multiplies them by their
/// columns of P, the first share into y (with bias_p and res), the others into partial sums
/// of their own, which the calling thread adds after, with the activation. What crosses
/// between the cores is the block's input and the partial sums, not the depthwise tensor. At
/// stride 1 the expansion writes each channel between the zero margins of depthwise_flat's
/// plane and the depthwise conv runs flat over it (the row tiles, with a row of 7 under a
/// vector, computed twice the outputs). MobileNet-v2's 7 x 7 blocks, against the three
/// kernels: pruned by three quarters 1.80x faster on two threads (stride 1; stride 2, from
/// 14 x 14, 1.91x), by half 1.37x (1.44x), dense 1.14x (1.18x); on one thread 1.06-1.20x at
/// stride 1, 0.96-1.06x at stride 2.
template <class T, int S>
void inverted_residual(const T* x, Index cin, const ConvGeometry& g, Index cexp, const T* packed_e, const T* bias_e,
                       FusedActivation act_e, const T* w, const T* bias, FusedActivation act, Index cout,
                       const T* packed_p, const T* bias_p, FusedActivation act_p, T* y, const T* res = nullptr) {
    static_assert(S == 1 || S == 2, "inverted_residual: stride 1 or 2");
    assert(inverted_residual_fits(g) && g.stride_h == S);
    constexpr int MR = direct_mr;
    constexpr Index NR = direct_nr<T>();
    const Index n_out = g.out_h * g.out_w, panels = (cexp + MR - 1) / MR, panels_p = (cout + MR - 1) / MR;
    const Index threads = spade::detail::in_parallel() ? 1 : num_threads();
    const FusedClamp<T> clamp_e(act_e), clamp(act), clamp_p(act_p);
    // a band of rows per thread, each a step of pixels or more (a plane that fits holds one)
    const Index bands = std::clamp<Index>(threads, 1, g.out_h / ((NR + g.out_w - 1) / g.out_w));
    if (g.out_w < 14 || (threads > 1 && bands < 2)) {  // shares of the expanded channels
        const Index shares = std::min(threads, panels), e_size = detail::expanded_panel_size<T, S>(g, g.in_h);
        const Index n_in = g.in_h * g.in_w;
        const Index d_size = (panels + shares - 1) / shares * MR * n_out;
        ThreadScratch<T> scratch(static_cast<std::size_t>(e_size + d_size), std::nullopt);
        const auto partial = std::make_unique_for_overwrite<T[]>(static_cast<std::size_t>((shares - 1) * cout * n_out));
        const FusedClamp<T> share_act(shares == 1 ? act_p : FusedActivation::none);  // else after the sum
        const detail::WrapMasks<T> wrap(S == 1 ? n_out : 0, g.out_w);
        parallel_for(
            shares,
            [&](long k) {
                const Index p0 = k * panels / shares, p1 = (k + 1) * panels / shares;
                const Index c0 = p0 * MR, c1 = std::min(cexp, p1 * MR);
                T* e = scratch.slice();
                T* d = e + e_size;  // channel c's depthwise outputs at d + (c - c0) n_out
                for (Index p = p0; p < p1; ++p)
                    detail::expand_depthwise_panel<T, S>(x, cin, g, cexp, packed_e, bias_e, clamp_e, w, bias, clamp, p, 0,
                                                         g.in_h, 0, g.out_h, e, d + (p - p0) * MR * n_out, n_out, 0,
                                                         nullptr, wrap.view());
                T* z = k == 0 ? y : partial.get() + (k - 1) * cout * n_out;
                for (Index p = 0; p < panels_p; ++p)  // columns [c0, c1) of panel p: cexp MR apart, MR per column
                    detail::pointwise_steps(d, c1 - c0, n_out, n_out, packed_p + (p * cexp + c0) * MR,
                                            std::min<Index>(MR, cout - p * MR), p * MR, k == 0 ? bias_p : nullptr, share_act, z,
                                            k == 0 ? res : nullptr, n_out, 0);
            },
            cexp * n_in * (cin + 9 + cout) / shares);
        if (shares == 1) return;
        // in whole vectors, the last under a mask: element by element (GCC 12 left the loop
        // scalar) the four sums of MobileNet-v2 pruned by three quarters took 12 us of its 0.36 ms
        constexpr Index L = detail::Lanes<T>::count;
        const Index m = cout * n_out;
        for (Index i = 0; i < m; i += L) {
            const auto lanes = detail::lane_range<T>(0, m - i);
            auto v = detail::load_masked(y + i, lanes);
            for (Index k = 1; k < shares; ++k) v += detail::load_masked(partial.get() + (k - 1) * m + i, lanes);
            detail::store_masked(y + i, lanes, clamp_p(v));
        }
        return;
    }
    if (threads == 1) {  // one band: the two steps apart were as fast or faster
        ThreadScratch<T> d(static_cast<std::size_t>(cexp * n_out), std::nullopt);  // the depthwise tensor
        expand_depthwise<T, S>(x, cin, g, cexp, packed_e, bias_e, act_e, w, bias, act, d.slice());
        return conv_pointwise(d.slice(), cexp, n_out, cout, packed_p, bias_p, act_p, y, res);
    }
    const Index band_out = (g.out_h + bands - 1) / bands;                 // output rows of the tallest band
    const Index band_in = std::min(S * band_out + 2, g.in_h);            // its input rows
    const Index e_size = detail::expanded_panel_size<T, S>(g, band_in), d_size = cexp * band_out * g.out_w;
    // every element read is written first: the expansion's rows, then the depthwise rows of the band
    ThreadScratch<T> scratch(static_cast<std::size_t>(e_size + d_size), std::nullopt);
    const detail::WrapMasks<T> wrap(S == 1 ? band_out * g.out_w : 0, g.out_w);
    parallel_for(
        bands,
        [&](long band) {
            const Index o0 = band * g.out_h / bands, o1 = (band + 1) * g.out_h / bands, count = (o1 - o0) * g.out_w;
            const auto [lo, hi] = detail::input_rows<S>(g, o0, o1);
            T* e = scratch.slice();
            T* d = e + e_size;  // channel c's depthwise outputs at d + c count
            for (Index p = 0; p < panels; ++p)
                detail::expand_depthwise_panel<T, S>(x, cin, g, cexp, packed_e, bias_e, clamp_e, w, bias, clamp, p, lo, hi,
                                                     o0, o1, e, d + p * MR * count, count, o0, nullptr, wrap.view());
            for (Index p = 0; p < panels_p; ++p)
                detail::pointwise_steps(d, cexp, count, count, packed_p + p * cexp * MR, std::min<Index>(MR, cout - p * MR),
                                        p * MR, bias_p, clamp_p, y, res, n_out, o0 * g.out_w);
        },
        cexp * g.in_h * g.in_w * (cin + 9 + cout) / bands);
}
#endif

/// Whether stem_block computes a 3x3 conv of stride 2 and padding 1 of `cin` inputs on an input
/// of geometry `sg` (the stem), a depthwise conv of geometry `g` on its output and a 1x1
/// projection in one pass: with AVX-512, up to 4 inputs, the depthwise conv 3x3 of stride 1
/// and padding 1, a plane of a step of pixels (direct_nr) or more.
inline bool stem_block_fits(Index cin, const ConvGeometry& sg, const ConvGeometry& g) {
#if defined(__AVX512F__)
    constexpr Index NR = direct_nr<float>();  // the larger step (a double one is half)
    return cin >= 1 && cin <= detail::flat_stem_channels && detail::window3x3(sg, 2) && detail::window3x3(g, 1) &&
           g.in_h == sg.out_h && g.in_w == sg.out_w && g.out_h * g.out_w >= NR;
#else
    (void)cin, (void)sg, (void)g;
    return false;
#endif
}

#if defined(__AVX512F__)
/// y = act_p(P act(w (*) act_s(S (*) x + bias_s) + bias) + bias_p (+ res)): a stem (3x3 conv of
/// stride 2 and padding 1 laid out by direct_geometry (sg.same), `sg.cin` inputs to sg.cout, S
/// packed by pack_direct_weights with 9 taps), a depthwise 3x3 conv of stride 1 and padding 1
/// on each of its channels (`w` [sg.cout][9]) and a 1x1 projection to `cout` (P packed with one
/// tap), where stem_block_fits: MobileNet-v2's first three layers. Neither the stem's nor the
/// depthwise tensor is written out.
///
/// Each thread takes a band of output rows, in chunks of at least 1344 pixels (12 rows of 112)
/// and under twice that, through all three steps: it fills the phase planes of the image rows
/// a chunk reads (detail::fill_band, as the stem alone does), then for each weight panel of the
/// stem computes the panel's channels over the chunk's rows and one row either side
/// (detail::flat3x3_steps) between zero margins (PaddedRows), and runs the depthwise conv flat
/// over them (detail::depthwise_flat_channel) into a slice holding the chunk's depthwise
/// outputs of every channel; last, the projection's direct tiles over that slice into the
/// chunk's rows of y.
/// A chunk's scratch stays in L1 and L2 from chunk to chunk; the rows either side are computed
/// twice. Against the three kernels in MobileNet-v2 on the Intel AMX machine (two threads,
/// paired runs in one process), the network ran 3.4 % faster pruned by three quarters, 2.5 % by
/// half and 2.6 % dense; in bands of a whole half of the plane, without chunks, 4 % slower
/// pruned by three quarters. The three layers alone, hot in cache: 1.09x (8 stem channels) to
/// 1.23x (32) faster on two threads; on one 0.91x to 1.08x.
template <class T>
void stem_block(const T* x, const DirectGeometry& sg, const T* packed_s, const T* bias_s, FusedActivation act_s,
                const T* w, const T* bias, FusedActivation act, Index cout, const T* packed_p, const T* bias_p,
                FusedActivation act_p, T* y, const T* res = nullptr) {
    constexpr int MR = direct_mr;
    constexpr Index NR = direct_nr<T>();
    const Index cexp = sg.cout, h = sg.out_h, wd = sg.out_w, n = h * wd;
    const Index panels = (cexp + MR - 1) / MR, panels_p = (cout + MR - 1) / MR;
    assert(sg.same && sg.cin <= detail::flat_stem_channels && n >= NR);
    ConvGeometry g;  // the depthwise conv's
    g.in_h = g.out_h = h, g.in_w = g.out_w = wd;
    const Index threads = spade::detail::in_parallel() ? 1 : num_threads();
    // a band of rows per thread, each a step of pixels or more, in chunks of `least` rows or more
    constexpr Index chunk_pixels = 1344;  // 12 rows of MobileNet-v2's 112
    const Index step_rows = (NR + wd - 1) / wd;
    const Index least = std::max(step_rows, (chunk_pixels + wd - 1) / wd);
    const Index bands = std::clamp<Index>(threads, 1, h / step_rows);
    const Index band_out = (h + bands - 1) / bands, most = std::min(band_out, 2 * least);  // rows of the largest chunk
    const Index p_size = detail::BandPlanes<T>(sg, most + 2).size, e_size = detail::expanded_panel_size<T, 1>(g, most + 2);
    ThreadScratch<T> scratch(static_cast<std::size_t>(p_size + e_size + cexp * most * wd), std::nullopt);
    const FusedClamp<T> clamp_s(act_s), clamp(act), clamp_p(act_p);
    const detail::WrapMasks<T> wrap(most * wd, wd);
    // output rows [o0, o1) through all three steps
    auto rows_of = [&](Index o0, Index o1) {
        const Index count = (o1 - o0) * wd;
        const auto [lo, hi] = detail::input_rows<1>(g, o0, o1);
        T* e = scratch.slice() + p_size;  // a panel's stem outputs, rows [lo, hi) of each channel between margins
        T* d = e + e_size;                // channel c's depthwise outputs at d + c count
        const auto [planes, stride] = detail::fill_band(x, sg, scratch.slice(), lo, hi);
        const Index total = (hi - lo) * wd;
        const detail::PaddedRows<T> pad(wd, hi - lo);
        for (Index p = 0; p < panels; ++p) {
            const Index rows = std::min<Index>(MR, cexp - p * MR);
            pad.zero_margins(e, rows, total);
            auto tile = [&]<int R, int N>(Index s, Index, Index used) __attribute__((always_inline)) {
                detail::flat3x3_steps<T, 2, R, N>(planes + wd + 1, sg.cin, 4 * stride, stride, wd, total, s * NR,
                                                  total - s * NR, packed_s + p * sg.cin * 9 * MR, used,
                                                  bias_s ? bias_s + p * MR : nullptr, clamp_s, e + pad.margin, pad.plane,
                                                  nullptr);
            };
            detail::panel_steps(0, (total + NR - 1) / NR, p, cexp, tile);
            for (Index r = 0; r < rows; ++r) {
                const Index c = p * MR + r;
                detail::depthwise_flat_channel<T, 1>(pad.flat(e + r * pad.plane, wd, o0 - lo), pad.plane, wd, count,
                                                     w + c * 9, bias ? bias[c] : T(0), clamp, d + c * count, nullptr,
                                                     wrap.view());
            }
        }
        for (Index p = 0; p < panels_p; ++p)
            detail::pointwise_steps(d, cexp, count, count, packed_p + p * cexp * MR, std::min<Index>(MR, cout - p * MR),
                                    p * MR, bias_p, clamp_p, y, res, n, o0 * wd);
    };
    parallel_for(
        bands,
        [&](long band) {
            const Index b0 = band * h / bands, b1 = (band + 1) * h / bands;
            const Index chunks = std::max<Index>(1, (b1 - b0) / least);
            for (Index k = 0; k < chunks; ++k) rows_of(b0 + k * (b1 - b0) / chunks, b0 + (k + 1) * (b1 - b0) / chunks);
        },
        cexp * n * (sg.cin * 9 + 9 + cout) / bands);
}
#endif

/// out[c] = act(w[c] (*) in[c / multiplier] (+ bias[c]) (+ res[c])) for every output channel c of
/// one image; `in` is [in_channels, in_h, in_w], `w` is [out_channels, kh, kw], `res` (optional) is
/// shaped like `out` and must not share its memory (a few outputs are computed twice).
template <class T>
void depthwise_conv2d(const T* in, Index out_channels, Index multiplier, const ConvGeometry& g, const T* w,
                      const T* bias, T* out, FusedActivation act = FusedActivation::none, const T* res = nullptr) {
    if (g.kernel_h == 3 && g.kernel_w == 3 && g.dilation_h == 1 && g.dilation_w == 1 && g.stride_h == g.stride_w) {
        constexpr Index L = detail::Lanes<T>::count;
#if defined(__AVX512F__)
        // in place by row tiles: at stride 2 at every width, at stride 1 from 3/4 of a vector to one
        // and from 1.5 on (at 17 to 20 wide a third to half of the lanes computed twice, at 7 wide
        // 9 of 16 idle: the flat planes were as fast or faster)
        if (g.pad_h == 1 && g.pad_w == 1) {
            if (g.stride_h == 1 && (g.out_w >= L + L / 2 || (4 * g.out_w >= 3 * L && g.out_w <= L)))
                return depthwise_rows<T, 1>(in, out_channels, multiplier, g, w, bias, out, act, res);
            if (g.stride_h == 2) return depthwise_rows<T, 2>(in, out_channels, multiplier, g, w, bias, out, act, res);
        }
#endif
        // SSE keeps flat planes to 32 wide (AVX-512 reaches here below the row tiles' widths); with
        // AVX2 they ran 1.4x to 2.2x faster than the padded ones at every width from 14 to 112 (Zen 2)
        const bool flat_width = detail::vector_bytes == 32 || g.out_w <= 32;
        if (g.pad_h == 1 && g.pad_w == 1 && flat_width && g.out_h * g.out_w >= L) {
            if (g.stride_h == 1) return depthwise_flat<T, 1>(in, out_channels, multiplier, g, w, bias, out, act, res);
            if (g.stride_h == 2) return depthwise_flat<T, 2>(in, out_channels, multiplier, g, w, bias, out, act, res);
        }
        if (g.stride_h == 1) return depthwise_direct<T, 3, 1>(in, out_channels, multiplier, g, w, bias, out, act, res);
        if (g.stride_h == 2) return depthwise_direct<T, 3, 2>(in, out_channels, multiplier, g, w, bias, out, act, res);
    }
    const Index kk = g.kernel_h * g.kernel_w;
    parallel_for(
        out_channels,
        [&](long c) {
            const T* src = in + (c / multiplier) * g.in_h * g.in_w;
            const T* wc = w + c * kk;
            T* dst = out + c * g.out_h * g.out_w;
            std::fill(dst, dst + g.out_h * g.out_w, bias ? bias[c] : T(0));
            for (Index kj = 0; kj < g.kernel_w; ++kj) {
                const Index off_w = kj * g.dilation_w - g.pad_w;
                Index lo = off_w >= 0 ? 0 : (-off_w + g.stride_w - 1) / g.stride_w;
                Index hi = g.in_w - off_w <= 0 ? 0 : std::min(g.out_w, (g.in_w - off_w + g.stride_w - 1) / g.stride_w);
                lo = std::min(lo, g.out_w);
                if (hi <= lo) continue;
                for (Index ki = 0; ki < g.kernel_h; ++ki) {
                    const T wv = wc[ki * g.kernel_w + kj];
                    for (Index oh = 0; oh < g.out_h; ++oh) {
                        const Index ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
                        if (ih < 0 || ih >= g.in_h) continue;
                        const T* s = src + ih * g.in_w;  // input column of ow is ow * stride_w + off_w
                        T* d = dst + oh * g.out_w;
                        if (g.stride_w == 1)
                            for (Index ow = lo; ow < hi; ++ow) d[ow] += wv * s[ow + off_w];
                        else
                            for (Index ow = lo; ow < hi; ++ow) d[ow] += wv * s[ow * g.stride_w + off_w];
                    }
                }
            }
            if (res)
                for (Index i = 0, m = g.out_h * g.out_w; i < m; ++i) dst[i] += res[c * m + i];
            apply_fused(act, dst, g.out_h * g.out_w);
        },
        g.out_h * g.out_w * kk);
}

}  // namespace spade::kernels
