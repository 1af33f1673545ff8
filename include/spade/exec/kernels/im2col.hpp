// im2col / col2im for NCHW images: lay each receptive field out as a column so
// a convolution becomes one GEMM.
#pragma once

#include <algorithm>
#include <cstring>

#include "spade/core/threading.hpp"
#include "spade/tensor/shape.hpp"

namespace spade::kernels {

/// Geometry of a 2-D convolution window.
struct ConvGeometry {
    Index in_h = 0, in_w = 0, out_h = 0, out_w = 0;
    Index kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;

    /// Output extent of a strided, padded, dilated window along one axis.
    /// Output extent along one axis; 0 when even one window does not fit (PyTorch raises there too).
    static Index out_extent(Index in, Index k, Index s, Index p, Index d) {
        const Index span = in + 2 * p - d * (k - 1) - 1;
        return span < 0 ? 0 : span / s + 1;
    }
    /// True when the window is a plain 1x1, stride-1, unpadded read: im2col is the identity.
    bool is_pointwise() const {
        return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
    }
};

/// Writes `channels` x (kh*kw) rows of im2col columns for output pixels
/// [p_begin, p_end) (row-major pixel index oh * out_w + ow) into `col`, whose
/// rows are `ldcol` apart; column p lands at col[row * ldcol + p]. Padding reads
/// as zero. Rows are split over threads unless called inside a parallel region.
template <class T>
void im2col(const T* im, Index channels, const ConvGeometry& g, T* col, Index p_begin, Index p_end, Index ldcol) {
    const Index kk = g.kernel_h * g.kernel_w;
    parallel_for(
        channels * kk,
        [&](long r) {
            const Index c = r / kk, ki = (r % kk) / g.kernel_w, kj = r % g.kernel_w;
            const T* src = im + c * g.in_h * g.in_w;
            T* dst = col + r * ldcol;
            // output columns whose input column is inside the image
            const Index off_w = kj * g.dilation_w - g.pad_w;
            Index ow_lo = off_w >= 0 ? 0 : (-off_w + g.stride_w - 1) / g.stride_w;
            Index ow_hi = g.in_w - off_w <= 0 ? 0 : std::min(g.out_w, (g.in_w - off_w + g.stride_w - 1) / g.stride_w);
            ow_lo = std::min(ow_lo, g.out_w);
            ow_hi = std::max(ow_hi, ow_lo);
            for (Index oh = p_begin / g.out_w, p = p_begin; p < p_end; ++oh) {
                const Index row_start = oh * g.out_w;
                const Index a = p - row_start, e = std::min(g.out_w, p_end - row_start);  // [a, e) of this output row
                T* d = dst + row_start;
                const Index ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
                if (ih < 0 || ih >= g.in_h) {
                    std::fill(d + a, d + e, T(0));
                } else {
                    const T* s = src + ih * g.in_w;  // input column of ow is ow * stride_w + off_w
                    const Index lo = std::clamp(ow_lo, a, e), hi = std::clamp(ow_hi, lo, e);
                    std::fill(d + a, d + lo, T(0));
                    if (g.stride_w == 1)
                        std::memcpy(d + lo, s + (lo + off_w), sizeof(T) * static_cast<std::size_t>(hi - lo));
                    else
                        for (Index ow = lo; ow < hi; ++ow) d[ow] = s[ow * g.stride_w + off_w];
                    std::fill(d + hi, d + e, T(0));
                }
                p = row_start + e;
            }
        },
        p_end - p_begin);
}

/// im2col of the whole output plane into a [channels*kh*kw, out_h*out_w] buffer.
template <class T>
void im2col(const T* im, Index channels, const ConvGeometry& g, T* col) {
    const Index plane = g.out_h * g.out_w;
    im2col(im, channels, g, col, 0, plane, plane);
}

/// Adds the columns of `col` back into the [channels, in_h, in_w] image `im`
/// (the adjoint of im2col; transposed convolution and gradients use it).
template <class T>
void col2im(const T* col, Index channels, const ConvGeometry& g, T* im) {
    const Index kk = g.kernel_h * g.kernel_w, plane = g.out_h * g.out_w;
    parallel_for(
        channels,
        [&](long c) {
            T* dst = im + c * g.in_h * g.in_w;
            for (Index k = 0; k < kk; ++k) {
                const Index ki = k / g.kernel_w, kj = k % g.kernel_w;
                const T* src = col + (c * kk + k) * plane;
                for (Index oh = 0; oh < g.out_h; ++oh) {
                    const Index ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
                    if (ih < 0 || ih >= g.in_h) continue;
                    for (Index ow = 0; ow < g.out_w; ++ow) {
                        const Index iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
                        if (iw >= 0 && iw < g.in_w) dst[ih * g.in_w + iw] += src[oh * g.out_w + ow];
                    }
                }
            }
        },
        kk * plane);
}

}  // namespace spade::kernels
