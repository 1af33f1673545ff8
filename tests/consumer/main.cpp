// Builds and runs a two-layer network through an installed spade.
#include <spade/spade.hpp>

#include <cstdio>

int main() {
    spade::GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 8, 8});
    x = spade::nn::conv2d(x, "conv1", {.out_channels = 4, .padding = 1});
    x = spade::nn::conv2d(x, "conv2", {.out_channels = 2, .kernel = 1});
    b.output(x);
    auto g = std::move(b).build();
    spade::Executor<float> ex(g);
    auto y = ex.forward(spade::Tensor<float>(spade::Shape{1, 3, 8, 8}, 1.0f));
    const auto macs = spade::count(g).macs;
    std::printf("output %s, %lld MACs\n", y.shape().str().c_str(), static_cast<long long>(macs));
    // conv1 3*3*3*4*64 + 4*64 (bias) = 7168, conv2 4*2*64 + 2*64 = 640
    return (y.shape() == spade::Shape{1, 2, 8, 8} && macs == 7808) ? 0 : 1;
}
