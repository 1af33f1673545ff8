// U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
// Segmentation", MICCAI 2015) in the image-to-image form used for MRI
// reconstruction (e.g. the fastMRI baseline): `depth` encoder levels of double
// 3x3 convs with 2x2 max-pool between them, a bottleneck, and a decoder that
// upsamples with ConvTranspose2d(2, stride 2), concatenates the encoder's
// feature map and applies a double conv; a final 1x1 conv maps to the output
// channels. Level l has base * 2^l channels; padded convs keep the size.
//
// Names (l = 0 is the full-resolution level; depth D):
//   down.{l}.conv.{0,3}      the two convs of encoder level l (l < D)
//   down.{l}.conv.{1,4}      their norms (absent with UNetNorm::none), .{2,5} the ReLUs
//   down.{l}.pool            2x2 max-pool after level l
//   bottleneck.conv.*        double conv at 1/2^D resolution, base * 2^D channels
//   up.{l}.upconv            ConvTranspose2d from level l+1 to level l
//   up.{l}.cat               concat [down.{l} output, up.{l}.upconv output]
//   up.{l}.conv.*            decoder double conv, 2 * base * 2^l -> base * 2^l
//   out                      1x1 conv to out_channels, with bias
//   residual                 x + out (only with residual = true)
// e.g. "down.0.conv.0.weight", "down.2.conv.4.running_var", "up.1.upconv.weight", "out.bias".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spade/models/restoration.hpp"

namespace spade::models {

/// Normalisation after each conv of a U-Net double conv.
enum class UNetNorm {
    batch,     ///< BatchNorm2d (affine)
    instance,  ///< InstanceNorm2d without affine parameters, as the fastMRI U-Net
    none,      ///< no normalisation; the convs then carry a bias
};

/// Settings of a U-Net. `batch` and `image_size` only set the example input shape
/// of the standalone graph; at run time height and width must stay divisible by 2^depth.
struct UNetOptions {
    Index in_channels = 1;
    Index out_channels = 1;
    Index base = 32;          ///< channels of level 0; level l has base * 2^l
    Index depth = 4;          ///< number of 2x down-samplings (>= 1)
    bool residual = false;    ///< output x + net(x); needs in_channels == out_channels
    UNetNorm norm = UNetNorm::batch;
    Index batch = 1;
    Index image_size = 256;   ///< must be divisible by 2^depth
    std::uint64_t seed = 0;   ///< seed of the random initialisation
};

namespace detail {

/// (conv 3x3 -> norm -> ReLU) twice, named "conv.0" .. "conv.5" in the current scope.
template <Scalar T>
Var<T> unet_double_conv(Var<T> x, Index out, UNetNorm norm) {
    auto s = x.builder->scope("conv");
    for (int k = 0; k < 2; ++k) {
        const int m = 3 * k;
        // a bias before a norm is cancelled by it, so only unnormalised convs carry one
        x = nn::conv2d(x, std::to_string(m), conv3x3_same(out, norm == UNetNorm::none));
        if (norm == UNetNorm::batch) x = nn::batch_norm2d(x, std::to_string(m + 1), BatchNormOptions{});
        if (norm == UNetNorm::instance) x = nn::instance_norm2d(x, std::to_string(m + 1), InstanceNormOptions{});
        x = nn::relu(x, std::to_string(m + 2));
    }
    return x;
}

}  // namespace detail

/// Appends a U-Net on `x` (NCHW with `o.in_channels` channels, height and width
/// divisible by 2^depth) under the current scope; returns its output.
template <Scalar T>
Var<T> unet(Var<T> x, const UNetOptions& o) {
    detail::expect_at_least("unet", "depth", o.depth, 1);
    detail::expect_at_least("unet", "base", o.base, 1);
    detail::expect_at_least("unet", "out_channels", o.out_channels, 1);
    detail::expect_image("unet", x, "in_channels", o.in_channels);
    if (o.depth > 30) fail<ShapeError>("unet: depth ", o.depth, " is too large");
    const Index factor = Index{1} << o.depth;
    const Index h = x.shape()[2], w = x.shape()[3];
    if (h % factor != 0 || w % factor != 0)
        fail<ShapeError>("unet: image ", h, "x", w, " is not divisible by 2^depth = ", factor, " (depth ", o.depth, ")");
    if (o.residual && o.in_channels != o.out_channels)
        fail<ShapeError>("unet: residual output needs in_channels == out_channels, got ", o.in_channels, " and ",
                         o.out_channels);
    GraphBuilder<T>& b = *x.builder;

    std::vector<Var<T>> skips;
    Var<T> y = x;
    for (Index l = 0; l < o.depth; ++l) {
        auto s = b.scope("down." + std::to_string(l));
        y = detail::unet_double_conv(y, o.base << l, o.norm);
        skips.push_back(y);
        y = nn::max_pool2d(y, "pool", PoolOptions{.kernel = 2});
    }
    {
        auto s = b.scope("bottleneck");
        y = detail::unet_double_conv(y, o.base << o.depth, o.norm);
    }
    for (Index l = o.depth - 1; l >= 0; --l) {
        auto s = b.scope("up." + std::to_string(l));
        const Index c = o.base << l;
        y = nn::conv_transpose2d(y, "upconv", ConvTranspose2dOptions{.out_channels = c, .kernel = 2, .stride = 2});
        y = nn::concat(std::vector<Var<T>>{skips[static_cast<std::size_t>(l)], y}, "cat");
        y = detail::unet_double_conv(y, c, o.norm);
    }
    y = nn::conv2d(y, "out", Conv2dOptions{.out_channels = o.out_channels, .kernel = 1});
    return o.residual ? nn::add(x, y, "residual") : y;
}

/// Standalone U-Net graph with input "x" [batch, in_channels, image_size, image_size].
template <Scalar T>
Graph<T> unet(const UNetOptions& o = {}) {
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::image_input(b, o.batch, o.in_channels, o.image_size, "unet");
    b.output(unet(x, o));
    return std::move(b).build();
}

}  // namespace spade::models
