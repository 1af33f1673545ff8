// Pooling kernels over NCHW planes with PyTorch's semantics: max and average
// over strided, padded (max: dilated) windows, and adaptive average over
// PyTorch's bins. Loops run along output rows so the compiler can vectorize.
#pragma once

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/exec/kernels/direct.hpp"
#include "spade/exec/kernels/im2col.hpp"

namespace spade::kernels {

/// a / b rounded toward minus infinity (b > 0), as PyTorch's pooling shape rule needs.
inline Index floor_div(Index a, Index b) { return a / b - ((a % b != 0 && a < 0) ? 1 : 0); }

/// Output extent of a pooling window along one axis (PyTorch's rule): with
/// `ceil_mode` partial windows count, but the last window must start inside the
/// input or the left padding. May come out < 1; callers report that.
inline Index pool_out_extent(Index in, Index k, Index s, Index p, Index d, bool ceil_mode) {
    const Index span = in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
    Index out = floor_div(span, s) + 1;
    if (ceil_mode && out > 0 && (out - 1) * s >= in + p) --out;
    return out;
}

/// Elements an average-pooling window at output `o` divides by along one axis:
/// the window clipped to the padded input (count_include_pad) or to the input.
inline Index avg_pool_count(Index o, Index k, Index s, Index p, Index in, bool count_include_pad) {
    const Index start = o * s - p, end = std::min(start + k, in + p);
    if (count_include_pad) return end - start;
    return std::min(end, in) - std::max(start, Index(0));
}

/// First and one-past-last input index of adaptive bin `o` of `out` over `in`:
/// [floor(o*in/out), ceil((o+1)*in/out)).
inline std::pair<Index, Index> adaptive_bin(Index o, Index in, Index out) {
    return {o * in / out, ((o + 1) * in + out - 1) / out};
}

namespace detail {

// Output columns [lo, hi) whose input column ow*stride + offset lies inside [0, in).
inline std::pair<Index, Index> inside_columns(Index offset, Index stride, Index in, Index out) {
    Index lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    Index hi = in - offset <= 0 ? 0 : std::min(out, (in - offset + stride - 1) / stride);
    lo = std::min(lo, out);
    return {lo, std::max(hi, lo)};
}

// Column ranges for every kernel column kj, shared by every row and plane.
inline std::vector<std::pair<Index, Index>> kernel_columns(const ConvGeometry& g) {
    std::vector<std::pair<Index, Index>> cols(static_cast<std::size_t>(g.kernel_w));
    for (Index kj = 0; kj < g.kernel_w; ++kj)
        cols[kj] = inside_columns(kj * g.dilation_w - g.pad_w, g.stride_w, g.in_w, g.out_w);
    return cols;
}

// Sum of n contiguous values with independent partial sums (vectorizable, and
// more accurate than one running sum over a large plane).
template <class T>
T sum(const T* x, Index n) {
    T acc[8] = {};
    Index i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += x[i + k];
    T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; ++i) s += x[i];
    return s;
}

}  // namespace detail

namespace detail {
// max(m, v) that lets NaN through, as PyTorch's max pooling does
template <class T>
inline T max_nan(T m, T v) {
    return (v > m || v != v) ? v : m;
}
// m = max_nan(m, v) lane by lane
template <class V>
[[gnu::always_inline]] inline void vmax_nan(V& m, const V& v) {
    m = ((v > m) | (v != v)) ? v : m;
}

// Max pooling with dilation, window by window.
template <class T>
void max_pool2d_dilated(const T* in, Index planes, const ConvGeometry& g, T* out) {
    const auto cols = kernel_columns(g);
    const Index in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
    parallel_for(
        planes,
        [&](long c) {
            const T* src = in + c * in_plane;
            T* dst = out + c * out_plane;
            std::fill(dst, dst + out_plane, -std::numeric_limits<T>::infinity());
            for (Index oh = 0; oh < g.out_h; ++oh) {
                T* d = dst + oh * g.out_w;
                for (Index ki = 0; ki < g.kernel_h; ++ki) {
                    const Index ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
                    if (ih < 0 || ih >= g.in_h) continue;
                    const T* row = src + ih * g.in_w;
                    for (Index kj = 0; kj < g.kernel_w; ++kj) {
                        const Index off = kj * g.dilation_w - g.pad_w;
                        const auto [lo, hi] = cols[kj];
                        for (Index ow = lo; ow < hi; ++ow) d[ow] = max_nan(d[ow], row[ow * g.stride_w + off]);
                    }
                }
            }
        },
        out_plane * g.kernel_h * g.kernel_w);
}
}  // namespace detail

namespace detail {
// max_pool2d for a K x K window of stride S without dilation, in three passes
// over a plane: (1) for every output row, the K input rows of its windows are
// reduced to one row (a vector max down the columns, whatever the stride) with
// -inf padding on both sides; (2) at stride 2, those rows are split into their
// even and odd columns; (3) every output vector is the max of K contiguous
// loads. Each pass reads what the one before wrote a whole plane earlier, so no
// load waits on a store still in flight, and rows of any width keep whole vectors
// (the last vector of a row is shifted back to end at the row's end).
template <class T, int K, int S>
void max_pool_rows(const T* in, Index planes, const ConvGeometry& g, T* out) {
    using V = typename Lanes<T>::type;
    constexpr int L = Lanes<T>::count;
    constexpr T lowest = -std::numeric_limits<T>::infinity();
    const Index vecs = (g.out_w + L - 1) / L;
    // a phase row is long enough for every output vector's (K - 1) / S extra reads
    const Index phase = vecs * L + (K - 1) / S + 1;
    const Index width = std::max(S * phase, g.pad_w + g.in_w + L);  // a reduced row, padding included
    const Index reduced = g.out_h * width, phased = S == 1 ? 0 : S * g.out_h * phase;
    ThreadScratch<T> scratch(static_cast<std::size_t>(reduced + phased), lowest);  // padding stays -inf
    parallel_for(
        planes,
        [&](long c) {
            T* red = scratch.slice();
            const T* src = in + c * g.in_h * g.in_w;
            for (Index oh = 0; oh < g.out_h; ++oh) {
                const T* rows[K];
                int n = 0;
                for (int i = 0; i < K; ++i) {
                    const Index ih = oh * S - g.pad_h + i;
                    if (ih >= 0 && ih < g.in_h) rows[n++] = src + ih * g.in_w;
                }
                T* r = red + oh * width + g.pad_w;
                if (n == 0) {  // a window of padding rows only
                    std::fill(r, r + g.in_w, lowest);
                } else if (g.in_w >= L) {
                    cover(g.in_w, L, [&](Index q) {
                        V m = load(rows[0] + q);
                        for (int i = 1; i < n; ++i) vmax_nan(m, load(rows[i] + q));
                        store(r + q, m);
                    });
                } else {
                    for (Index q = 0; q < g.in_w; ++q) {
                        T m = rows[0][q];
                        for (int i = 1; i < n; ++i) m = max_nan(m, rows[i][q]);
                        r[q] = m;
                    }
                }
            }
            // phase b of output row oh starts at ph[b][oh * pstride] and holds columns b, b + S, ...
            const T* ph[2] = {red, red};
            Index pstride = width;
            if constexpr (S == 2) {
                T* even = red + reduced;
                T* odd = even + g.out_h * phase;
                for (Index oh = 0; oh < g.out_h; ++oh)  // rows hold at least 2 * phase columns
                    split_even_odd(red + oh * width, 2 * phase, even + oh * phase, odd + oh * phase);
                ph[0] = even, ph[1] = odd, pstride = phase;
            }
            T* dst = out + c * g.out_h * g.out_w;
            for (Index oh = 0; oh < g.out_h; ++oh) {
                T* d = dst + oh * g.out_w;
                const Index at = oh * pstride;
                auto window = [&](Index v0, V& m) {
                    m = load(ph[0] + at + v0);
                    for (int j = 1; j < K; ++j) vmax_nan(m, load(ph[j % S] + at + j / S + v0));
                };
                if (g.out_w >= L) {
                    cover(g.out_w, L, [&](Index v0) {
                        V m;
                        window(v0, m);
                        store(d + v0, m);
                    });
                } else {
                    V m;
                    window(0, m);
                    T tail[L];
                    store(tail, m);
                    std::copy(tail, tail + g.out_w, d);
                }
            }
        },
        g.out_h * g.out_w * K * K);
}

// max_pool2d for a 3 x 3 window of stride 1 and padding 1 (out = in) on planes up to 32 wide and
// at least a vector in all, computed flat as depthwise_flat does: each plane is copied once
// between margins of -inf (a row and one element), and every output vector is the max of the
// column maxima at flat index f - 1, f and f + 1, the outer two set to -inf in the lanes where
// they wrap onto the row above or below. max_pool_rows goes element by element down rows
// narrower than a vector (14 x 14 and 7 x 7 planes with AVX-512's 16 floats).
template <class T>
void max_pool_flat3(const T* in, Index planes, const ConvGeometry& g, T* out) {
    using V = typename Lanes<T>::type;
    constexpr int L = Lanes<T>::count;
    constexpr T lowest = -std::numeric_limits<T>::infinity();
    const Index w = g.in_w, n = g.in_h * g.in_w, margin = w + 1;
    const WrapMasks<T> wrap(n, w);
    ThreadScratch<T> scratch(static_cast<std::size_t>(n + 2 * margin), lowest);  // margins stay -inf
    parallel_for(
        planes,
        [&](long c) {
            T* x = scratch.slice() + margin;
            std::memcpy(x, in + c * n, sizeof(T) * static_cast<std::size_t>(n));
            T* y = out + c * n;
            const auto keep = wrap.view();
            auto column = [&](Index f) {
                V m = load(x + f - w);
                vmax_nan(m, load(x + f));
                vmax_nan(m, load(x + f + w));
                return m;
            };
            auto vector_at = [&](Index f) {
                const V none = V{} + lowest;
                V m = column(f);
                vmax_nan(m, keep.left(f) ? column(f - 1) : none);
                vmax_nan(m, keep.right(f) ? column(f + 1) : none);
                store(y + f, m);
            };
            cover(n, L, vector_at);  // the last vector shifted back: a few outputs twice, no partial one
        },
        n * 9);
}
}  // namespace detail

/// Max over each window of `planes` [in_h, in_w] planes into [out_h, out_w]
/// planes. Padding never wins (it reads as -inf) and NaN propagates, as in PyTorch.
/// Square 2x2 and 3x3 windows of stride 1 or 2 without dilation go through
/// vectorized phase planes (3x3 stride 1 padding 1 on planes up to 32 wide: flat
/// planes); other windows take a loop over output rows.
template <class T>
void max_pool2d(const T* in, Index planes, const ConvGeometry& g, T* out) {
    if (g.dilation_h == 1 && g.dilation_w == 1 && g.kernel_h == g.kernel_w && g.stride_h == g.stride_w) {
        const Index k = g.kernel_h, s = g.stride_h;
        if (k == 3 && s == 1 && g.pad_h == 1 && g.pad_w == 1 && g.in_w <= 32 && g.in_h * g.in_w >= detail::Lanes<T>::count &&
            g.out_h == g.in_h && g.out_w == g.in_w)
            return detail::max_pool_flat3(in, planes, g, out);
        if (k == 3 && s == 1) return detail::max_pool_rows<T, 3, 1>(in, planes, g, out);
        if (k == 3 && s == 2) return detail::max_pool_rows<T, 3, 2>(in, planes, g, out);
        if (k == 2 && s == 2) return detail::max_pool_rows<T, 2, 2>(in, planes, g, out);
    }
    const auto cols = detail::kernel_columns(g);
    const Index in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
    parallel_for(
        planes,
        [&](long c) {
            const T* src = in + c * in_plane;
            T* dst = out + c * out_plane;
            std::fill(dst, dst + out_plane, -std::numeric_limits<T>::infinity());
            for (Index oh = 0; oh < g.out_h; ++oh) {
                T* d = dst + oh * g.out_w;
                for (Index ki = 0; ki < g.kernel_h; ++ki) {
                    const Index ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
                    if (ih < 0 || ih >= g.in_h) continue;
                    const T* row = src + ih * g.in_w;
                    for (Index kj = 0; kj < g.kernel_w; ++kj) {
                        const Index off = kj * g.dilation_w - g.pad_w;
                        const auto [lo, hi] = cols[kj];
                        for (Index ow = lo; ow < hi; ++ow) {
                            const T v = row[ow * g.stride_w + off];
                            d[ow] = (v > d[ow] || v != v) ? v : d[ow];
                        }
                    }
                }
            }
        },
        out_plane * g.kernel_h * g.kernel_w);
}

/// Mean over each window (no dilation) with PyTorch's divisor: the window
/// clipped to the padded input when `count_include_pad`, else to the input.
template <class T>
void avg_pool2d(const T* in, Index planes, const ConvGeometry& g, bool count_include_pad, T* out) {
    const auto cols = detail::kernel_columns(g);
    std::vector<T> count_w(static_cast<std::size_t>(g.out_w));
    for (Index ow = 0; ow < g.out_w; ++ow)
        count_w[ow] = static_cast<T>(avg_pool_count(ow, g.kernel_w, g.stride_w, g.pad_w, g.in_w, count_include_pad));
    const Index in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
    parallel_for(
        planes,
        [&](long c) {
            const T* src = in + c * in_plane;
            T* dst = out + c * out_plane;
            std::fill(dst, dst + out_plane, T(0));
            for (Index oh = 0; oh < g.out_h; ++oh) {
                T* d = dst + oh * g.out_w;
                for (Index ki = 0; ki < g.kernel_h; ++ki) {
                    const Index ih = oh * g.stride_h - g.pad_h + ki;
                    if (ih < 0 || ih >= g.in_h) continue;
                    const T* row = src + ih * g.in_w;
                    for (Index kj = 0; kj < g.kernel_w; ++kj) {
                        const Index off = kj - g.pad_w;
                        const auto [lo, hi] = cols[kj];
                        if (g.stride_w == 1)
                            for (Index ow = lo; ow < hi; ++ow) d[ow] += row[ow + off];
                        else
                            for (Index ow = lo; ow < hi; ++ow) d[ow] += row[ow * g.stride_w + off];
                    }
                }
                const T count_h =
                    static_cast<T>(avg_pool_count(oh, g.kernel_h, g.stride_h, g.pad_h, g.in_h, count_include_pad));
                for (Index ow = 0; ow < g.out_w; ++ow) d[ow] /= count_h * count_w[ow];
            }
        },
        out_plane * g.kernel_h * g.kernel_w);
}

/// Mean over PyTorch's adaptive bins of `planes` [in_h, in_w] planes into
/// [out_h, out_w] planes; a 1x1 output is the plain mean of each plane.
template <class T>
void adaptive_avg_pool2d(const T* in, Index planes, Index in_h, Index in_w, Index out_h, Index out_w, T* out) {
    const Index in_plane = in_h * in_w, out_plane = out_h * out_w;
    if (out_plane == 1) {
        parallel_for(
            planes, [&](long c) { out[c] = detail::sum(in + c * in_plane, in_plane) / static_cast<T>(in_plane); },
            in_plane);
        return;
    }
    parallel_for(
        planes,
        [&](long c) {
            const T* src = in + c * in_plane;
            T* dst = out + c * out_plane;
            for (Index oh = 0; oh < out_h; ++oh) {
                const auto [h0, h1] = adaptive_bin(oh, in_h, out_h);
                for (Index ow = 0; ow < out_w; ++ow) {
                    const auto [w0, w1] = adaptive_bin(ow, in_w, out_w);
                    T s = 0;
                    for (Index ih = h0; ih < h1; ++ih)
                        for (Index iw = w0; iw < w1; ++iw) s += src[ih * in_w + iw];
                    dst[oh * out_w + ow] = s / static_cast<T>((h1 - h0) * (w1 - w0));
                }
            }
        },
        in_plane);
}

}  // namespace spade::kernels
