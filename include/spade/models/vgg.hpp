// VGG-16 with batch norm (Simonyan & Zisserman, "Very Deep Convolutional
// Networks for Large-Scale Image Recognition", 2015) laid out exactly as
// torchvision's vgg16_bn: "features.N" counts every conv, BN, ReLU and pool of
// its nn.Sequential (so convs sit at 0, 3, 7, 10, ...), then an adaptive 7x7
// average pool and "classifier.0/.3/.6" with ReLU and dropout between.
#pragma once

#include <string>

#include "spade/models/classifier.hpp"

namespace spade::models {

/// VGG-16-BN: 13 3x3 convs in 5 pooled stages, 138,365,992 parameters at 1000 classes.
template <Scalar T>
Graph<T> vgg16_bn(const ClassifierOptions& o = {}) {
    // torchvision's configuration "D": output channels, 0 for a 2x2 max pool
    constexpr Index cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::classifier_input(b, o, "vgg16_bn");
    {
        auto s = b.scope("features");
        int index = 0;  // position in torchvision's nn.Sequential
        auto next = [&] { return std::to_string(index++); };
        for (Index c : cfg) {
            if (c == 0) {
                x = nn::max_pool2d(x, next(), PoolOptions{.kernel = 2, .stride = 2});
                continue;
            }
            x = nn::conv2d(x, next(), Conv2dOptions{.out_channels = c, .kernel = 3, .padding = 1});
            x = nn::batch_norm2d(x, next(), BatchNormOptions{});
            x = nn::relu(x, next());
        }
    }
    x = nn::flatten(nn::adaptive_avg_pool2d(x, "avgpool", Pair2{7, 7}), "flatten");
    {
        auto s = b.scope("classifier");
        x = nn::dropout(nn::relu(nn::linear(x, "0", LinearOptions{.out_features = 4096}), "1"), "2");
        x = nn::dropout(nn::relu(nn::linear(x, "3", LinearOptions{.out_features = 4096}), "4"), "5");
        x = nn::linear(x, "6", LinearOptions{.out_features = o.num_classes});
    }
    b.output(x);
    return std::move(b).build();
}

}  // namespace spade::models
