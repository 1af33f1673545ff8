// MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
// Bottlenecks", 2018) laid out exactly as torchvision 0.14's mobilenet_v2:
// "features.0.0/.1" stem, InvertedResidual blocks "features.k.conv.{0.0,0.1,
// 1.0,1.1,2,3}" (without the expansion unit when t = 1: "conv.{0.0,0.1,1,2}"),
// "features.18.0/.1" head, ReLU6 throughout, dropout then "classifier.1".
#pragma once

#include <string>

#include "spade/models/classifier.hpp"

namespace spade::models {

namespace detail {

/// torchvision's Conv2dNormActivation with ReLU6: "<name>.0" conv, "<name>.1" BN, "<name>.2" ReLU6.
template <Scalar T>
Var<T> conv_bn_relu6(Var<T> x, const std::string& name, Index out, Index kernel, Index stride, Index groups = 1) {
    auto s = x.builder->scope(name);
    return nn::relu6(conv_bn(x, "0", "1", out, kernel, stride, (kernel - 1) / 2, groups), "2");
}

/// Inverted residual: 1x1 expansion by `t` (skipped when t = 1), 3x3 depthwise,
/// linear 1x1 projection; the input is added back when the shape is unchanged.
template <Scalar T>
Var<T> inverted_residual(Var<T> x, Index out, Index stride, Index t) {
    const Index in = x.channels(), hidden = in * t;
    Var<T> y = x;
    {
        auto s = x.builder->scope("conv");
        int index = 0;  // position in torchvision's block nn.Sequential
        if (t != 1) y = conv_bn_relu6(y, std::to_string(index++), hidden, 1, 1);
        y = conv_bn_relu6(y, std::to_string(index++), hidden, 3, stride, hidden);
        const std::string conv = std::to_string(index++), bn = std::to_string(index++);
        y = conv_bn(y, conv, bn, out, 1, 1, 0);
    }
    if (stride == 1 && in == out) y = nn::add(x, y, "add");
    return y;
}

}  // namespace detail

/// MobileNetV2 at width 1.0: 3,504,872 parameters at 1000 classes.
template <Scalar T>
Graph<T> mobilenet_v2(const ClassifierOptions& o = {}) {
    struct Stage {
        Index t, c, n, s;  // expansion, output channels, blocks, first stride
    };
    constexpr Stage stages[] = {{1, 16, 1, 1},  {6, 24, 2, 2},  {6, 32, 3, 2},  {6, 64, 4, 2},
                                {6, 96, 3, 1},  {6, 160, 3, 2}, {6, 320, 1, 1}};
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::classifier_input(b, o, "mobilenet_v2");
    {
        auto s = b.scope("features");
        int index = 0;
        x = detail::conv_bn_relu6(x, std::to_string(index++), 32, 3, 2);
        for (const auto& st : stages)
            for (Index i = 0; i < st.n; ++i) {
                auto blk = b.scope(std::to_string(index++));
                x = detail::inverted_residual(x, st.c, i == 0 ? st.s : 1, st.t);
            }
        x = detail::conv_bn_relu6(x, std::to_string(index++), 1280, 1, 1);
    }
    x = nn::flatten(nn::global_avg_pool(x, "avgpool"), "flatten");
    {
        auto s = b.scope("classifier");
        x = nn::linear(nn::dropout(x, "0", 0.2), "1", LinearOptions{.out_features = o.num_classes});
    }
    b.output(x);
    return std::move(b).build();
}

}  // namespace spade::models
