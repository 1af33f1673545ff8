// The classifier zoo: torchvision's parameter totals, names and shapes, the
// structure that makes each family what it is, and a forward pass that is
// finite, of the right shape, independent of the batch and of the example size.
#include "fixtures.hpp"

#include <map>

using namespace spade;
using models::ClassifierOptions;

namespace {

// Learnable parameters only: BN running statistics are buffers (DESIGN.md).
Index learnable_params(const Graph<float>& g) {
    Index n = 0;
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        const auto& p = g.parameter(static_cast<ParamId>(i));
        if (p.learnable()) n += p.numel();
    }
    return n;
}

// How many nodes of each op type the graph holds.
std::map<std::string, int> op_counts(const Graph<float>& g) {
    std::map<std::string, int> m;
    for (const auto& n : g.nodes()) ++m[n.op->type()];
    return m;
}

// Checks that parameter `name` exists with shape `s`.
void check_param(const Graph<float>& g, const std::string& name, const Shape& s) {
    INFO("parameter " << name);
    REQUIRE(g.has_parameter(name));
    CHECK(g.parameter(name).shape() == s);
}

// Runs the graph on a [2, 3, h, w] batch and on its first image alone: logits
// must have shape [n, classes], be finite, not all equal, and image 0 must not
// depend on its batch neighbour (eval-mode BN, no cross-batch mixing).
void check_forward(const Graph<float>& g, Index h, Index w, Index classes) {
    Tensor<float> x = test::random_tensor<float>(Shape{2, 3, h, w}, 7);
    Executor<float> ex(g);
    Tensor<float> y = ex.forward(x);
    REQUIRE(y.shape() == Shape{2, classes});
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); }));
    const auto [lo, hi] = std::minmax_element(y.begin(), y.end());
    CHECK(*hi > *lo);

    Tensor<float> x0(Shape{1, 3, h, w}, std::vector<float>(x.begin(), x.begin() + 3 * h * w));
    Tensor<float> y0 = ex.forward(x0);
    REQUIRE(y0.shape() == Shape{1, classes});
    double err = 0, scale = 0;
    for (Index k = 0; k < classes; ++k) {
        err = std::max(err, std::abs(static_cast<double>(y0[k]) - y[k]));
        scale = std::max(scale, std::abs(static_cast<double>(y[k])));
    }
    CHECK(err <= 1e-5 * scale);
}

}  // namespace

TEST_CASE("resnet18 and resnet34 match torchvision", "[zoo][resnet]") {
    auto g18 = models::resnet18<float>({.image_size = 64});
    CHECK(learnable_params(g18) == 11'689'512);
    check_param(g18, "conv1.weight", Shape{64, 3, 7, 7});
    check_param(g18, "bn1.running_var", Shape{64});
    check_param(g18, "layer1.1.conv2.weight", Shape{64, 64, 3, 3});
    check_param(g18, "layer2.0.downsample.0.weight", Shape{128, 64, 1, 1});
    check_param(g18, "layer4.0.downsample.1.running_mean", Shape{512});
    check_param(g18, "fc.weight", Shape{1000, 512});
    CHECK_FALSE(g18.has_parameter("layer1.0.downsample.0.weight"));  // 64 -> 64, stride 1: identity shortcut
    CHECK_FALSE(g18.parameter("layer3.1.bn2.running_mean").learnable());
    CHECK(op_counts(g18)["Add"] == 8);
    check_forward(g18, 64, 64, 1000);

    auto g34 = models::resnet34<float>({.num_classes = 10, .image_size = 32});
    CHECK(learnable_params(g34) == 21'797'672 - 990 * 513);  // fc shrinks from 1000 to 10 outputs
    check_param(g34, "layer3.5.conv2.weight", Shape{256, 256, 3, 3});
    check_param(g34, "fc.bias", Shape{10});
    CHECK_FALSE(g34.has_parameter("layer3.6.conv1.weight"));
    CHECK(op_counts(g34)["Add"] == 16);
    check_forward(g34, 40, 56, 10);  // other than the example size, non-square
}

TEST_CASE("resnet50 matches torchvision", "[zoo][resnet]") {
    auto g = models::resnet50<float>({.batch = 2, .image_size = 64});
    CHECK(learnable_params(g) == 25'557'032);
    check_param(g, "layer1.0.conv1.weight", Shape{64, 64, 1, 1});
    check_param(g, "layer1.0.downsample.0.weight", Shape{256, 64, 1, 1});  // channels change in the first block
    check_param(g, "layer2.0.conv2.weight", Shape{128, 128, 3, 3});
    check_param(g, "layer4.2.conv3.weight", Shape{2048, 512, 1, 1});
    check_param(g, "layer4.2.bn3.running_mean", Shape{2048});
    check_param(g, "fc.weight", Shape{1000, 2048});
    // torchvision v1.5 strides in the 3x3 conv: the 1x1 conv1 of a downsampling block keeps the size
    const auto& v = g.value(g.value_id("layer2.0.conv1"));
    const auto& w = g.value(g.value_id("layer2.0.conv2"));
    CHECK(v.shape == Shape{2, 128, 16, 16});
    CHECK(w.shape == Shape{2, 128, 8, 8});
    CHECK(op_counts(g)["Add"] == 16);
    CHECK(op_counts(g)["BatchNorm2d"] == 53);
    check_forward(g, 64, 64, 1000);
}

TEST_CASE("vgg16_bn matches torchvision", "[zoo][vgg]") {
    auto g = models::vgg16_bn<float>({.image_size = 32});
    CHECK(learnable_params(g) == 138'365'992);
    check_param(g, "features.0.weight", Shape{64, 3, 3, 3});
    check_param(g, "features.1.running_var", Shape{64});
    check_param(g, "features.7.weight", Shape{128, 64, 3, 3});  // after conv-bn-relu x2 and pool at 6
    check_param(g, "features.40.bias", Shape{512});             // last conv
    check_param(g, "features.41.running_mean", Shape{512});     // its BN
    check_param(g, "classifier.0.weight", Shape{4096, 512 * 7 * 7});
    check_param(g, "classifier.3.weight", Shape{4096, 4096});
    check_param(g, "classifier.6.bias", Shape{1000});
    CHECK(g.node(g.node_id("features.42")).op->type() == "ReLU");
    CHECK(g.node(g.node_id("features.43")).op->type() == "MaxPool2d");
    CHECK(op_counts(g)["Dropout"] == 2);
    // 32x32 pools down to 1x1, which the adaptive pool spreads over 7x7
    check_forward(g, 32, 32, 1000);
}

TEST_CASE("mobilenet_v2 matches torchvision", "[zoo][mobilenet]") {
    auto g = models::mobilenet_v2<float>({.image_size = 64});
    CHECK(learnable_params(g) == 3'504'872);
    check_param(g, "features.0.0.weight", Shape{32, 3, 3, 3});
    check_param(g, "features.0.1.bias", Shape{32});
    // t = 1: no expansion, so the depthwise unit is conv.0 and the projection conv.1 / conv.2
    check_param(g, "features.1.conv.0.0.weight", Shape{32, 1, 3, 3});
    check_param(g, "features.1.conv.1.weight", Shape{16, 32, 1, 1});
    check_param(g, "features.1.conv.2.running_var", Shape{16});
    check_param(g, "features.2.conv.0.0.weight", Shape{96, 16, 1, 1});
    check_param(g, "features.2.conv.1.0.weight", Shape{96, 1, 3, 3});
    check_param(g, "features.17.conv.2.weight", Shape{320, 960, 1, 1});
    check_param(g, "features.17.conv.3.weight", Shape{320});
    check_param(g, "features.18.0.weight", Shape{1280, 320, 1, 1});
    check_param(g, "classifier.1.weight", Shape{1000, 1280});
    auto ops = op_counts(g);
    CHECK(ops["Add"] == 10);  // stride-1 blocks whose width does not change
    CHECK(ops["ReLU6"] == 35);
    CHECK_FALSE(g.has_node("features.2.add"));  // 16 -> 24 channels: no residual
    CHECK(g.has_node("features.3.add"));
    check_forward(g, 64, 48, 1000);
}

TEST_CASE("densenet121 matches torchvision", "[zoo][densenet]") {
    auto g = models::densenet121<float>({.image_size = 64});
    CHECK(learnable_params(g) == 7'978'856);
    check_param(g, "features.conv0.weight", Shape{64, 3, 7, 7});
    check_param(g, "features.norm0.running_mean", Shape{64});
    check_param(g, "features.denseblock1.denselayer1.norm1.weight", Shape{64});
    check_param(g, "features.denseblock1.denselayer6.conv1.weight", Shape{128, 64 + 5 * 32, 1, 1});
    check_param(g, "features.transition1.conv.weight", Shape{128, 256, 1, 1});
    check_param(g, "features.denseblock3.denselayer24.norm1.running_var", Shape{256 + 23 * 32});
    check_param(g, "features.transition3.conv.weight", Shape{512, 1024, 1, 1});
    check_param(g, "features.denseblock4.denselayer16.conv2.weight", Shape{32, 128, 3, 3});
    check_param(g, "features.norm5.weight", Shape{1024});
    check_param(g, "classifier.weight", Shape{1000, 1024});
    // every layer after the first of a block concatenates, plus one concat per block
    CHECK(op_counts(g)["Concat"] == (6 + 12 + 24 + 16 - 4) + 4);
    check_forward(g, 64, 64, 1000);
}

TEST_CASE("googlenet matches torchvision", "[zoo][googlenet]") {
    auto g = models::googlenet<float>({.image_size = 64});
    CHECK(learnable_params(g) == 6'624'904);
    check_param(g, "conv1.conv.weight", Shape{64, 3, 7, 7});
    check_param(g, "conv1.bn.running_var", Shape{64});
    check_param(g, "conv3.conv.weight", Shape{192, 64, 3, 3});
    check_param(g, "inception3a.branch1.conv.weight", Shape{64, 192, 1, 1});
    check_param(g, "inception3a.branch2.1.conv.weight", Shape{128, 96, 3, 3});
    check_param(g, "inception3a.branch3.1.conv.weight", Shape{32, 16, 3, 3});  // torchvision's 3x3, not 5x5
    check_param(g, "inception4e.branch2.0.bn.bias", Shape{160});
    check_param(g, "inception5b.branch4.1.conv.weight", Shape{128, 832, 1, 1});
    check_param(g, "fc.weight", Shape{1000, 1024});
    CHECK_FALSE(g.has_parameter("aux1.conv.conv.weight"));
    // ceil_mode: 32 -> 16 -> 8 -> 4 -> 2, where floor would give 15 -> 7 -> 3 -> 1
    CHECK(g.value(g.value_id("maxpool1")).shape == Shape{1, 64, 16, 16});
    CHECK(g.value(g.value_id("maxpool4")).shape == Shape{1, 832, 2, 2});
    CHECK(g.value(g.value_id("inception5b.concat")).shape == Shape{1, 1024, 2, 2});
    check_forward(g, 64, 64, 1000);
}

TEST_CASE("zoo options are checked and seeds are reproducible", "[zoo]") {
    CHECK_THROWS_WITH(models::resnet18<float>({.num_classes = 0}), Catch::Contains("resnet18"));
    CHECK_THROWS_AS(models::mobilenet_v2<float>({.image_size = 0}), ShapeError);
    auto a = models::mobilenet_v2<float>({.num_classes = 10, .image_size = 32, .seed = 3});
    auto b = models::mobilenet_v2<float>({.num_classes = 10, .image_size = 32, .seed = 3});
    auto c = models::mobilenet_v2<float>({.num_classes = 10, .image_size = 32, .seed = 4});
    const auto& wa = a.parameter("features.5.conv.1.0.weight");
    CHECK(std::equal(wa.begin(), wa.end(), b.parameter("features.5.conv.1.0.weight").begin()));
    CHECK_FALSE(std::equal(wa.begin(), wa.end(), c.parameter("features.5.conv.1.0.weight").begin()));
    CHECK(a.value(a.inputs()[0]).name == "x");
    CHECK(a.outputs().size() == 1);
}
