// ResNet-18/34/50 (He et al., "Deep Residual Learning for Image Recognition",
// 2016) laid out exactly as torchvision's: parameter names ("layer4.2.conv3.weight",
// "layer2.0.downsample.1.running_var") and shapes match its state_dict, and the
// Bottleneck strides in its 3x3 conv (torchvision's "v1.5").
#pragma once

#include <array>
#include <string>

#include "spade/models/classifier.hpp"

namespace spade::models {

namespace detail {

/// torchvision's shortcut: identity, or 1x1 conv + BN ("downsample.0/.1") when the shape changes.
template <Scalar T>
Var<T> resnet_shortcut(Var<T> x, Index out, Index stride) {
    if (stride == 1 && x.channels() == out) return x;
    auto s = x.builder->scope("downsample");
    return conv_bn(x, "0", "1", out, 1, stride, 0);
}

/// BasicBlock: two 3x3 convs (the first strides), identity or projection shortcut.
template <Scalar T>
Var<T> basic_block(Var<T> x, Index planes, Index stride) {
    Var<T> y = nn::relu(conv_bn(x, "conv1", "bn1", planes, 3, stride, 1), "relu1");
    y = conv_bn(y, "conv2", "bn2", planes, 3, 1, 1);
    Var<T> shortcut = resnet_shortcut(x, planes, stride);  // after the main path: torchvision's parameter order
    return nn::relu(nn::add(y, shortcut, "add"), "relu2");
}

/// Bottleneck: 1x1 reduce, 3x3 (strided, as torchvision v1.5), 1x1 expand by 4.
template <Scalar T>
Var<T> bottleneck(Var<T> x, Index planes, Index stride) {
    Var<T> y = nn::relu(conv_bn(x, "conv1", "bn1", planes, 1, 1, 0), "relu1");
    y = nn::relu(conv_bn(y, "conv2", "bn2", planes, 3, stride, 1), "relu2");
    y = conv_bn(y, "conv3", "bn3", planes * 4, 1, 1, 0);
    Var<T> shortcut = resnet_shortcut(x, planes * 4, stride);
    return nn::relu(nn::add(y, shortcut, "add"), "relu3");
}

/// Stem, four stages of `blocks[i]` blocks, global pool and fc.
template <Scalar T, bool Bottleneck>
Graph<T> resnet(const std::array<Index, 4>& blocks, const ClassifierOptions& o, const char* model) {
    GraphBuilder<T> b(o.seed);
    Var<T> x = classifier_input(b, o, model);
    x = nn::relu(conv_bn(x, "conv1", "bn1", 64, 7, 2, 3), "relu");
    x = nn::max_pool2d(x, "maxpool", PoolOptions{.kernel = 3, .stride = 2, .padding = 1});
    for (std::size_t stage = 0; stage < 4; ++stage) {
        auto s = b.scope("layer" + std::to_string(stage + 1));
        const Index planes = Index{64} << stage;
        for (Index i = 0; i < blocks[stage]; ++i) {
            auto blk = b.scope(std::to_string(i));
            const Index stride = (stage > 0 && i == 0) ? 2 : 1;
            x = Bottleneck ? bottleneck(x, planes, stride) : basic_block(x, planes, stride);
        }
    }
    x = nn::flatten(nn::global_avg_pool(x, "avgpool"), "flatten");
    b.output(nn::linear(x, "fc", LinearOptions{.out_features = o.num_classes}));
    return std::move(b).build();
}

}  // namespace detail

/// ResNet-18: BasicBlocks [2, 2, 2, 2], 11,689,512 parameters at 1000 classes.
template <Scalar T>
Graph<T> resnet18(const ClassifierOptions& o = {}) {
    return detail::resnet<T, false>({2, 2, 2, 2}, o, "resnet18");
}

/// ResNet-34: BasicBlocks [3, 4, 6, 3], 21,797,672 parameters at 1000 classes.
template <Scalar T>
Graph<T> resnet34(const ClassifierOptions& o = {}) {
    return detail::resnet<T, false>({3, 4, 6, 3}, o, "resnet34");
}

/// ResNet-50: Bottlenecks [3, 4, 6, 3], 25,557,032 parameters at 1000 classes.
template <Scalar T>
Graph<T> resnet50(const ClassifierOptions& o = {}) {
    return detail::resnet<T, true>({3, 4, 6, 3}, o, "resnet50");
}

}  // namespace spade::models
