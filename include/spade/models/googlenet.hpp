// GoogLeNet / Inception v1 (Szegedy et al., "Going Deeper with Convolutions",
// 2015) in torchvision's inference form: no auxiliary heads, no input
// transform. Names match torchvision's googlenet: BasicConv2d units
// "<name>.conv/.bn" (BN eps 0.001), inception branches "branch1",
// "branch2.0/.1", "branch3.0/.1" (a 3x3 conv, as torchvision has it),
// "branch4.1" after a 3x3 max pool, ceil-mode max pools, dropout 0.2 and "fc".
#pragma once

#include <string>

#include "spade/models/classifier.hpp"

namespace spade::models {

namespace detail {

/// torchvision's BasicConv2d: conv without bias, BN with eps 0.001, ReLU.
template <Scalar T>
Var<T> basic_conv2d(Var<T> x, const std::string& name, Index out, Index kernel, Index stride = 1, Index padding = 0) {
    auto s = x.builder->scope(name);
    return nn::relu(conv_bn(x, "conv", "bn", out, kernel, stride, padding, 1, 1e-3), "relu");
}

/// Widths of one inception module, in torchvision's argument order.
struct InceptionWidths {
    Index ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj;
};

/// Inception module: four parallel branches concatenated along channels.
template <Scalar T>
Var<T> inception(Var<T> x, const std::string& name, const InceptionWidths& c) {
    auto s = x.builder->scope(name);
    Var<T> b1 = basic_conv2d(x, "branch1", c.ch1x1, 1);
    Var<T> b2, b3, b4;
    {
        auto br = x.builder->scope("branch2");
        b2 = basic_conv2d(basic_conv2d(x, "0", c.ch3x3red, 1), "1", c.ch3x3, 3, 1, 1);
    }
    {
        auto br = x.builder->scope("branch3");
        b3 = basic_conv2d(basic_conv2d(x, "0", c.ch5x5red, 1), "1", c.ch5x5, 3, 1, 1);
    }
    {
        auto br = x.builder->scope("branch4");
        b4 = nn::max_pool2d(x, "0", PoolOptions{.kernel = 3, .stride = 1, .padding = 1, .ceil_mode = true});
        b4 = basic_conv2d(b4, "1", c.pool_proj, 1);
    }
    return nn::concat(std::vector<Var<T>>{b1, b2, b3, b4}, "concat");
}

}  // namespace detail

/// GoogLeNet without auxiliary heads: 6,624,904 parameters at 1000 classes.
template <Scalar T>
Graph<T> googlenet(const ClassifierOptions& o = {}) {
    using detail::basic_conv2d;
    using detail::inception;
    auto pool = [](Index kernel) { return PoolOptions{.kernel = kernel, .stride = 2, .ceil_mode = true}; };
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::classifier_input(b, o, "googlenet");
    x = basic_conv2d(x, "conv1", 64, 7, 2, 3);
    x = nn::max_pool2d(x, "maxpool1", pool(3));
    x = basic_conv2d(x, "conv2", 64, 1);
    x = basic_conv2d(x, "conv3", 192, 3, 1, 1);
    x = nn::max_pool2d(x, "maxpool2", pool(3));
    x = inception(x, "inception3a", {64, 96, 128, 16, 32, 32});
    x = inception(x, "inception3b", {128, 128, 192, 32, 96, 64});
    x = nn::max_pool2d(x, "maxpool3", pool(3));
    x = inception(x, "inception4a", {192, 96, 208, 16, 48, 64});
    x = inception(x, "inception4b", {160, 112, 224, 24, 64, 64});
    x = inception(x, "inception4c", {128, 128, 256, 24, 64, 64});
    x = inception(x, "inception4d", {112, 144, 288, 32, 64, 64});
    x = inception(x, "inception4e", {256, 160, 320, 32, 128, 128});
    x = nn::max_pool2d(x, "maxpool4", pool(2));
    x = inception(x, "inception5a", {256, 160, 320, 32, 128, 128});
    x = inception(x, "inception5b", {384, 192, 384, 48, 128, 128});
    x = nn::flatten(nn::global_avg_pool(x, "avgpool"), "flatten");
    x = nn::dropout(x, "dropout", 0.2);
    b.output(nn::linear(x, "fc", LinearOptions{.out_features = o.num_classes}));
    return std::move(b).build();
}

}  // namespace spade::models
