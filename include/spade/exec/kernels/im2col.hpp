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
    static Index out_extent(Index in, Index k, Index s, Index p, Index d) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }
    /// True when the window is a plain 1x1, stride-1, unpadded read: im2col is the identity.
    bool is_pointwise() const {
        return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 && pad_w == 0;
    }
};

/// Writes `channels` x (kh*kw) rows of out_h*out_w columns into `col` from the
/// [channels, in_h, in_w] image at `im`. Padding reads as zero.
template <class T>
void im2col(const T* im, Index channels, const ConvGeometry& g, T* col) {
    const Index kk = g.kernel_h * g.kernel_w, plane = g.out_h * g.out_w;
    parallel_for(
        channels * kk,
        [&](long r) {
            const Index c = r / kk, ki = (r % kk) / g.kernel_w, kj = r % g.kernel_w;
            const T* src = im + c * g.in_h * g.in_w;
            T* dst = col + r * plane;
            // output columns whose input column is inside the image
            const Index off_w = kj * g.dilation_w - g.pad_w;
            Index ow_lo = off_w >= 0 ? 0 : (-off_w + g.stride_w - 1) / g.stride_w;
            Index ow_hi = g.in_w - off_w <= 0 ? 0 : std::min(g.out_w, (g.in_w - off_w + g.stride_w - 1) / g.stride_w);
            ow_lo = std::min(ow_lo, g.out_w);
            ow_hi = std::max(ow_hi, ow_lo);
            for (Index oh = 0; oh < g.out_h; ++oh) {
                const Index ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
                T* d = dst + oh * g.out_w;
                if (ih < 0 || ih >= g.in_h) {
                    std::fill(d, d + g.out_w, T(0));
                    continue;
                }
                const T* s = src + ih * g.in_w + off_w;
                std::fill(d, d + ow_lo, T(0));
                if (g.stride_w == 1) std::memcpy(d + ow_lo, s + ow_lo, sizeof(T) * static_cast<std::size_t>(ow_hi - ow_lo));
                else
                    for (Index ow = ow_lo; ow < ow_hi; ++ow) d[ow] = s[ow * g.stride_w];
                std::fill(d + ow_hi, d + g.out_w, T(0));
            }
        },
        g.out_h * g.out_w);
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
