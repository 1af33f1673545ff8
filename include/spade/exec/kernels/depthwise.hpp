// Direct depthwise convolution: one small filter per channel, where a GEMM
// would be a stack of tiny products.
#pragma once

#include <algorithm>

#include "spade/core/threading.hpp"
#include "spade/exec/kernels/im2col.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade::kernels {

/// out[c] = act(w[c] (*) in[c / multiplier] (+ bias[c])) for every output channel c of
/// one image; `in` is [in_channels, in_h, in_w], `w` is [out_channels, kh, kw].
template <class T>
void depthwise_conv2d(const T* in, Index out_channels, Index multiplier, const ConvGeometry& g, const T* w,
                      const T* bias, T* out, FusedActivation act = FusedActivation::none) {
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
            apply_fused(act, dst, g.out_h * g.out_w);
        },
        g.out_h * g.out_w * kk);
}

}  // namespace spade::kernels
