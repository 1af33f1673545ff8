// What every image classifier of the zoo shares: its options and the
// conv + batch-norm (+ activation) unit most torchvision networks are made of.
#pragma once

#include <cstdint>
#include <string>

#include "spade/graph/builder.hpp"
#include "spade/graph/ops.hpp"

namespace spade::models {

/// Settings of a zoo classifier. `batch` and `image_size` only set the example
/// input shape [batch, 3, image_size, image_size]; the graph runs at other sizes.
struct ClassifierOptions {
    Index num_classes = 1000;  ///< outputs of the last layer (the logits)
    Index batch = 1;           ///< batch of the example input shape
    Index image_size = 224;    ///< height and width of the example input shape
    std::uint64_t seed = 0;    ///< seed of the random initialisation (PyTorch's default layer init)
};

namespace detail {

/// Starts a classifier: checks the options and declares the RGB input "x".
template <Scalar T>
Var<T> classifier_input(GraphBuilder<T>& b, const ClassifierOptions& o, const char* model) {
    if (o.num_classes < 1 || o.batch < 1 || o.image_size < 1)
        fail<ShapeError>(model, ": num_classes, batch and image_size must be >= 1 (got ", o.num_classes, ", ", o.batch,
                         ", ", o.image_size, ")");
    return b.input("x", Shape{o.batch, 3, o.image_size, o.image_size});
}

/// Conv (no bias) then batch norm, named `<conv>` and `<bn>` in the current scope.
template <Scalar T>
Var<T> conv_bn(Var<T> x, const std::string& conv, const std::string& bn, Index out, Index kernel, Index stride,
               Index padding, Index groups = 1, double eps = 1e-5) {
    x = nn::conv2d(x, conv,
                   Conv2dOptions{.out_channels = out, .kernel = kernel, .stride = stride, .padding = padding,
                                 .groups = groups, .bias = false});
    return nn::batch_norm2d(x, bn, BatchNormOptions{.eps = eps});
}

}  // namespace detail
}  // namespace spade::models
