// EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image
// Super-Resolution", CVPRW 2017): head conv, N residual blocks without batch
// norm, body conv, a global skip around the body, then the tail: a sub-pixel
// upsampler (conv to F*r^2 + PixelShuffle(r); two x2 stages for x4) and a conv
// back to image channels. With scale 1 the upsampler is empty: the denoising
// prior form used in MBDL.
//
// Parameter names are those of the official code (thstkdgus35/EDSR-PyTorch):
//   head.0                 conv(C -> F)
//   body.{i}.body.0 / .2   the two convs of residual block i (body.{i}.body.1 is the ReLU)
//   body.{i}.res_scale     only when res_scale != 1 (see EDSROptions::res_scale)
//   body.{N}               conv(F -> F) after the N blocks
//   tail.0.{2k}            upsampler convs, tail.0.{2k+1} their PixelShuffles
//   tail.1                 conv(F -> C)
// The official model's fixed RGB mean shift (sub_mean / add_mean) is not part of
// the graph: feed mean-subtracted images, and load its checkpoints non-strictly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spade/models/restoration.hpp"

namespace spade::models {

/// Settings of an EDSR. `batch` and `image_size` only set the example input shape
/// of the standalone graph; the graph runs at any image size.
struct EDSROptions {
    Index channels = 3;      ///< image channels
    Index features = 64;     ///< channels of the body (64 baseline, 256 for the large EDSR)
    Index blocks = 16;       ///< residual blocks (16 baseline, 32 for the large EDSR)
    Index scale = 1;         ///< upscaling factor: 1 (no upsampler), a power of two, or 3
    /// Multiplies each block's residual before the skip (0.1 in the large EDSR). When != 1
    /// it is a per-tensor Scale initialised to res_scale, which is LEARNABLE (one parameter
    /// per block, counted in the parameters) where the official code uses a constant.
    double res_scale = 1.0;
    Index batch = 1;
    Index image_size = 256;
    std::uint64_t seed = 0;  ///< seed of the random initialisation
};

namespace detail {

/// Upscaling factors of the sub-pixel stages: {2, 2, ...} for a power of two, {3} for 3, {} for 1.
inline std::vector<Index> edsr_upsampler_stages(Index scale) {
    if (scale == 3) return {3};
    if (scale < 1 || (scale & (scale - 1)) != 0)
        fail<ShapeError>("edsr: scale must be 1, 3 or a power of two, got ", scale);
    std::vector<Index> stages;
    for (Index s = scale; s > 1; s /= 2) stages.push_back(2);
    return stages;
}

}  // namespace detail

/// Appends an EDSR on `x` (NCHW with `o.channels` channels) under the current scope; returns its output.
template <Scalar T>
Var<T> edsr(Var<T> x, const EDSROptions& o) {
    detail::expect_at_least("edsr", "features", o.features, 1);
    detail::expect_at_least("edsr", "blocks", o.blocks, 0);
    const auto stages = detail::edsr_upsampler_stages(o.scale);
    detail::expect_image("edsr", x, "channels", o.channels);
    GraphBuilder<T>& b = *x.builder;
    const Conv2dOptions conv = detail::conv3x3_same(o.features, true);

    Var<T> head;
    {
        auto s = b.scope("head");
        head = nn::conv2d(x, "0", conv);
    }
    Var<T> y = head;
    {
        auto s = b.scope("body");
        for (Index i = 0; i < o.blocks; ++i) {
            auto block = b.scope(std::to_string(i));
            Var<T> r;
            {
                auto inner = b.scope("body");
                r = nn::conv2d(nn::relu(nn::conv2d(y, "0", conv), "1"), "2", conv);
            }
            if (o.res_scale != 1.0)
                r = nn::scale(r, "res_scale", ScaleOptions{.per_channel = false, .init = o.res_scale});
            y = nn::add(r, y, "add");
        }
        y = nn::conv2d(y, std::to_string(o.blocks), conv);
    }
    y = nn::add(y, head, "skip");  // global residual: body output + head output
    {
        auto s = b.scope("tail");
        {
            auto up = b.scope("0");
            Index m = 0;
            for (Index r : stages) {
                y = nn::conv2d(y, std::to_string(m++), detail::conv3x3_same(o.features * r * r, true));
                y = nn::pixel_shuffle(y, std::to_string(m++), r);
            }
        }
        y = nn::conv2d(y, "1", detail::conv3x3_same(o.channels, true));
    }
    return y;
}

/// Standalone EDSR graph with input "x" [batch, channels, image_size, image_size];
/// the output is `scale` times larger in height and width.
template <Scalar T>
Graph<T> edsr(const EDSROptions& o = {}) {
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::image_input(b, o.batch, o.channels, o.image_size, "edsr");
    b.output(edsr(x, o));
    return std::move(b).build();
}

}  // namespace spade::models
