// What the restoration networks of the zoo (DnCNN, EDSR, U-Net) share. Each maps
// an image to an image and comes in two forms: a builder function that appends
// the network to a graph under construction (the learned prior inside an
// unrolled or deep-equilibrium MBDL network, shared across iterations with
// `param_scope`), and a function returning a standalone graph with input "x".
#pragma once

#include <string>

#include "spade/graph/builder.hpp"
#include "spade/graph/ops.hpp"

namespace spade::models::detail {

/// Throws ShapeError unless `value >= min`, naming the model and the option.
inline void expect_at_least(const char* model, const char* option, Index value, Index min) {
    if (value < min) fail<ShapeError>(model, ": ", option, " must be >= ", min, ", got ", value);
}

/// Throws ShapeError unless `x` is NCHW with `channels` channels (what the options promise).
template <Scalar T>
void expect_image(const char* model, Var<T> x, const char* option, Index channels) {
    if (x.shape().rank() != 4)
        fail<ShapeError>(model, ": input must be NCHW, got shape ", x.shape());
    if (x.channels() != channels)
        fail<ShapeError>(model, ": input has ", x.channels(), " channels but ", option, " is ", channels, " (shape ",
                         x.shape(), ")");
}

/// Declares the image input "x" [batch, channels, size, size] of a standalone restoration graph.
template <Scalar T>
Var<T> image_input(GraphBuilder<T>& b, Index batch, Index channels, Index image_size, const char* model) {
    expect_at_least(model, "batch", batch, 1);
    expect_at_least(model, "channels", channels, 1);
    expect_at_least(model, "image_size", image_size, 1);
    return b.input("x", Shape{batch, channels, image_size, image_size});
}

/// A 3x3 "same" convolution, the building block of all three networks.
inline Conv2dOptions conv3x3_same(Index out_channels, bool bias) {
    return Conv2dOptions{.out_channels = out_channels, .kernel = 3, .stride = 1, .padding = 1, .bias = bias};
}

}  // namespace spade::models::detail
