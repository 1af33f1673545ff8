// DnCNN (Zhang et al., "Beyond a Gaussian Denoiser: Residual Learning of Deep
// CNN for Image Denoising", IEEE TIP 2017): a plain stack of 3x3 convs that
// predicts the noise, y = x - net(x). The classic learned denoiser / prior of
// plug-and-play and unrolled MBDL networks.
//
// Layout, as the nn.Sequential named `dncnn` of the common PyTorch port
// (SaoYan/DnCNN-PyTorch), modules numbered in order:
//   dncnn.0 conv(C -> F), dncnn.1 ReLU,
//   then depth-2 times: dncnn.{3i+2} conv(F -> F, no bias), dncnn.{3i+3} BN, dncnn.{3i+4} ReLU,
//   dncnn.{3*depth-4} conv(F -> C)                       (dncnn.47 at depth 17)
// Parameters: "dncnn.0.weight", "dncnn.0.bias", "dncnn.2.weight",
// "dncnn.3.weight/bias/running_mean/running_var", ..., "dncnn.47.weight/bias".
#pragma once

#include <cstdint>
#include <string>

#include "spade/models/restoration.hpp"

namespace spade::models {

/// Settings of a DnCNN. `batch` and `image_size` only set the example input shape
/// of the standalone graph; the graph runs at any image size.
struct DnCNNOptions {
    Index channels = 1;      ///< image channels (1 grey, 3 colour, 2 for complex MRI as real/imag)
    Index features = 64;     ///< channels of every hidden layer
    Index depth = 17;        ///< conv layers in total (17 for DnCNN-S, 20 for DnCNN-B); >= 3
    bool residual = true;    ///< output x - net(x) (residual learning) instead of net(x)
    bool bias = true;        ///< bias on the first and last conv (the paper); false is SaoYan's all-bias-free port
    Index batch = 1;
    Index image_size = 256;
    std::uint64_t seed = 0;  ///< seed of the random initialisation
};

/// Appends a DnCNN on `x` (NCHW with `o.channels` channels) under the current scope; returns its output.
template <Scalar T>
Var<T> dncnn(Var<T> x, const DnCNNOptions& o) {
    detail::expect_at_least("dncnn", "depth", o.depth, 3);
    detail::expect_at_least("dncnn", "features", o.features, 1);
    detail::expect_image("dncnn", x, "channels", o.channels);
    Var<T> y = x;
    {
        auto s = x.builder->scope("dncnn");
        y = nn::relu(nn::conv2d(x, "0", detail::conv3x3_same(o.features, o.bias)), "1");
        Index m = 2;  // index of the next module in the Sequential
        for (Index layer = 1; layer < o.depth - 1; ++layer, m += 3) {
            // bias-free: the BN right after it would cancel any bias
            y = nn::conv2d(y, std::to_string(m), detail::conv3x3_same(o.features, false));
            y = nn::batch_norm2d(y, std::to_string(m + 1), BatchNormOptions{});
            y = nn::relu(y, std::to_string(m + 2));
        }
        y = nn::conv2d(y, std::to_string(m), detail::conv3x3_same(o.channels, o.bias));
    }
    return o.residual ? nn::sub(x, y, "residual") : y;
}

/// Standalone DnCNN graph with input "x" [batch, channels, image_size, image_size].
template <Scalar T>
Graph<T> dncnn(const DnCNNOptions& o = {}) {
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::image_input(b, o.batch, o.channels, o.image_size, "dncnn");
    b.output(dncnn(x, o));
    return std::move(b).build();
}

}  // namespace spade::models
