// DenseNet-121 (Huang et al., "Densely Connected Convolutional Networks", 2017)
// laid out exactly as torchvision's densenet121: "features.conv0/norm0/pool0",
// "features.denseblockK.denselayerJ.{norm1,conv1,norm2,conv2}",
// "features.transitionK.{norm,conv}", "features.norm5", then ReLU, global
// average pool and "classifier". Each dense layer reads the concatenation of
// the block input and every earlier layer's output, as torchvision does.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "spade/models/classifier.hpp"

namespace spade::models {

namespace detail {

/// Dense layer: BN-ReLU-1x1 conv to bn_size * growth, BN-ReLU-3x3 conv to `growth` new channels.
template <Scalar T>
Var<T> dense_layer(const std::vector<Var<T>>& features, Index growth, Index bn_size) {
    Var<T> x = features.size() == 1 ? features.front() : nn::concat(features, "concat");
    x = nn::relu(nn::batch_norm2d(x, "norm1", BatchNormOptions{}), "relu1");
    x = nn::conv2d(x, "conv1", Conv2dOptions{.out_channels = bn_size * growth, .kernel = 1, .bias = false});
    x = nn::relu(nn::batch_norm2d(x, "norm2", BatchNormOptions{}), "relu2");
    return nn::conv2d(x, "conv2", Conv2dOptions{.out_channels = growth, .kernel = 3, .padding = 1, .bias = false});
}

/// Transition: BN-ReLU-1x1 conv halving the channels, 2x2 average pool.
template <Scalar T>
Var<T> transition(Var<T> x) {
    x = nn::relu(nn::batch_norm2d(x, "norm", BatchNormOptions{}), "relu");
    x = nn::conv2d(x, "conv", Conv2dOptions{.out_channels = x.channels() / 2, .kernel = 1, .bias = false});
    return nn::avg_pool2d(x, "pool", PoolOptions{.kernel = 2, .stride = 2});
}

}  // namespace detail

/// DenseNet-121: growth 32, blocks [6, 12, 24, 16], 7,978,856 parameters at 1000 classes.
template <Scalar T>
Graph<T> densenet121(const ClassifierOptions& o = {}) {
    constexpr Index growth = 32, bn_size = 4, init_features = 64;
    constexpr std::array<Index, 4> blocks{6, 12, 24, 16};
    GraphBuilder<T> b(o.seed);
    Var<T> x = detail::classifier_input(b, o, "densenet121");
    {
        auto s = b.scope("features");
        x = nn::conv2d(x, "conv0",
                       Conv2dOptions{.out_channels = init_features, .kernel = 7, .stride = 2, .padding = 3, .bias = false});
        x = nn::relu(nn::batch_norm2d(x, "norm0", BatchNormOptions{}), "relu0");
        x = nn::max_pool2d(x, "pool0", PoolOptions{.kernel = 3, .stride = 2, .padding = 1});
        for (std::size_t k = 0; k < blocks.size(); ++k) {
            const std::string id = std::to_string(k + 1);
            {
                auto blk = b.scope("denseblock" + id);
                std::vector<Var<T>> features{x};
                for (Index j = 0; j < blocks[k]; ++j) {
                    auto layer = b.scope("denselayer" + std::to_string(j + 1));
                    features.push_back(detail::dense_layer(features, growth, bn_size));
                }
                x = nn::concat(features, "concat");
            }
            if (k + 1 < blocks.size()) {
                auto tr = b.scope("transition" + id);
                x = detail::transition(x);
            }
        }
        x = nn::batch_norm2d(x, "norm5", BatchNormOptions{});
    }
    x = nn::flatten(nn::global_avg_pool(nn::relu(x, "relu"), "avgpool"), "flatten");
    b.output(nn::linear(x, "classifier", LinearOptions{.out_features = o.num_classes}));
    return std::move(b).build();
}

}  // namespace spade::models
