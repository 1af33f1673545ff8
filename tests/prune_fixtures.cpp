// The coupling graphs and zoo models of the pruning tests (see prune_fixtures.hpp).
#include "prune_fixtures.hpp"

namespace spade::test {

namespace {

using B = GraphBuilder<double>;
using V = Var<double>;

Graph<double> finish(B& b, V y) {
    b.output(y);
    auto g = std::move(b).build();
    randomize(g, 11);
    return g;
}

// conv -> BN -> ReLU -> conv -> InstanceNorm -> PReLU -> Scale -> pool -> Flatten -> Linear
Graph<double> chain() {
    B b(1);
    auto x = b.input("x", {2, 3, 8, 8});
    auto y = nn::conv2d(x, "c1", {.out_channels = 4, .kernel = 3, .padding = 1});
    y = nn::relu(nn::batch_norm2d(y, "bn1"), "r1");
    y = nn::conv2d(y, "c2", {.out_channels = 6, .kernel = 3, .padding = 1, .bias = false});
    y = nn::instance_norm2d(y, "in2", {.affine = true});
    y = nn::prelu(y, "act2");
    y = nn::scale(y, "gain2");
    y = nn::flatten(nn::global_avg_pool(y, "pool"), "flat");
    return finish(b, nn::linear(y, "fc", {.out_features = 5}));
}

// two residual branches added, a Sub and an elementwise Mul of equal shapes
Graph<double> residual() {
    B b(2);
    auto x = b.input("x", {1, 3, 8, 8});
    auto a = nn::conv2d(x, "a", {.out_channels = 4, .kernel = 1});
    auto r = nn::relu(nn::conv2d(a, "b1", {.out_channels = 5, .kernel = 3, .padding = 1}), "rb");
    auto c = nn::conv2d(r, "b2", {.out_channels = 4, .kernel = 3, .padding = 1});
    auto s = nn::add(a, c, "sum");
    auto d = nn::conv2d(s, "d", {.out_channels = 4, .kernel = 1});
    auto m = nn::mul(nn::sub(s, d, "diff"), s, "prod");
    return finish(b, nn::conv2d(m, "head", {.out_channels = 2, .kernel = 1}));
}

// concat of two convs, a tensor concatenated with itself, and a concat of a concat
Graph<double> concat() {
    B b(3);
    auto x = b.input("x", {1, 3, 6, 6});
    auto a = nn::conv2d(x, "a", {.out_channels = 2, .kernel = 1});
    auto bb = nn::conv2d(x, "b", {.out_channels = 3, .kernel = 1});
    auto ab = nn::concat({a, bb}, "ab");
    auto aa = nn::concat({a, a}, "aa");
    auto nest = nn::concat({ab, bb}, "nest");
    auto c = nn::conv2d(ab, "c", {.out_channels = 4, .kernel = 1});
    auto d = nn::conv2d(aa, "d", {.out_channels = 4, .kernel = 1});
    auto e = nn::conv2d(nest, "e", {.out_channels = 4, .kernel = 1});
    auto y = nn::add(nn::add(c, d, "cd"), e, "cde");
    return finish(b, nn::conv2d(y, "head", {.out_channels = 1, .kernel = 1}));
}

// Split feeding a conv and a concat (in swapped order), and a Slice
Graph<double> split() {
    B b(4);
    auto x = b.input("x", {1, 2, 6, 6});
    auto a = nn::conv2d(x, "a", {.out_channels = 6, .kernel = 1});
    auto parts = nn::split(a, "sp", {2, 4});
    auto p = nn::conv2d(parts[1], "p", {.out_channels = 3, .kernel = 1});
    auto q = nn::conv2d(nn::concat({parts[1], parts[0]}, "swap"), "q", {.out_channels = 3, .kernel = 1});
    auto r = nn::conv2d(nn::slice(a, "mid", 1, 4), "r", {.out_channels = 3, .kernel = 1});
    return finish(b, nn::add(nn::add(p, q, "pq"), r, "pqr"));
}

// conv -> BN -> Flatten -> Linear: channel c is features [16c, 16c + 16)
Graph<double> flatten() {
    B b(5);
    auto x = b.input("x", {2, 3, 4, 4});
    auto y = nn::batch_norm2d(nn::conv2d(x, "c", {.out_channels = 4, .kernel = 3, .padding = 1}), "bn");
    return finish(b, nn::linear(nn::flatten(y, "flat"), "fc", {.out_features = 3}));
}

// PixelShuffle after a conv (blocks of 4 conv channels) and PixelUnshuffle before one
Graph<double> pixel_shuffle() {
    B b(6);
    auto x = b.input("x", {1, 2, 8, 8});
    auto up = nn::pixel_shuffle(nn::conv2d(x, "c", {.out_channels = 12, .kernel = 3, .padding = 1}), "ps", 2);
    auto y = nn::conv2d(up, "after", {.out_channels = 4, .kernel = 3, .padding = 1});  // 16x16
    auto down = nn::pixel_unshuffle(y, "pu", 2);                                       // 16 channels, 8x8
    return finish(b, nn::conv2d(down, "last", {.out_channels = 2, .kernel = 1}));
}

// depthwise conv with multiplier 2, and a grouped conv with 2 groups
Graph<double> depthwise() {
    B b(7);
    auto x = b.input("x", {1, 3, 6, 6});
    auto a = nn::conv2d(x, "a", {.out_channels = 4, .kernel = 1});
    auto dw = nn::conv2d(a, "dw", {.out_channels = 8, .kernel = 3, .padding = 1, .groups = 4});
    auto y = nn::relu6(nn::batch_norm2d(dw, "bn"), "act");
    auto g2 = nn::conv2d(y, "g2", {.out_channels = 6, .kernel = 3, .padding = 1, .groups = 2});
    return finish(b, nn::conv2d(g2, "pw", {.out_channels = 3, .kernel = 1}));
}

// squeeze-and-excitation gate ([N, C, 1, 1] multiply) and a scalar multiply
Graph<double> gate() {
    B b(8);
    auto x = b.input("x", {1, 3, 6, 6});
    auto alpha = b.input("alpha", {1, 1, 1, 1});
    auto a = nn::relu(nn::conv2d(x, "a", {.out_channels = 4, .kernel = 3, .padding = 1}), "ra");
    auto s = nn::global_avg_pool(a, "squeeze");
    s = nn::relu(nn::conv2d(s, "fc1", {.out_channels = 2, .kernel = 1}), "rs");
    s = nn::sigmoid(nn::conv2d(s, "fc2", {.out_channels = 4, .kernel = 1}), "sig");
    auto y = nn::mul(nn::mul(a, s, "excite"), alpha, "times_alpha");
    return finish(b, nn::conv2d(y, "head", {.out_channels = 3, .kernel = 1}));
}

// GroupNorm with 2 channels per group: channels leave in pairs
Graph<double> group_norm() {
    B b(9);
    auto x = b.input("x", {1, 3, 6, 6});
    auto y = nn::conv2d(x, "c", {.out_channels = 8, .kernel = 3, .padding = 1});
    y = nn::relu(nn::group_norm(y, "gn", {.num_groups = 4}), "r");
    return finish(b, nn::conv2d(y, "head", {.out_channels = 3, .kernel = 1}));
}

// LayerNorm over channels
Graph<double> layer_norm() {
    B b(10);
    auto x = b.input("x", {1, 3, 6, 6});
    auto y = nn::layer_norm2d(nn::conv2d(x, "c", {.out_channels = 5, .kernel = 1}), "ln");
    return finish(b, nn::conv2d(y, "head", {.out_channels = 2, .kernel = 1}));
}

// transposed convs: plain, depthwise and grouped
Graph<double> conv_transpose() {
    B b(11);
    auto x = b.input("x", {1, 3, 5, 5});
    auto a = nn::conv2d(x, "a", {.out_channels = 4, .kernel = 1});
    auto up = nn::conv_transpose2d(a, "up", {.out_channels = 6, .kernel = 2, .stride = 2});
    auto dw = nn::conv_transpose2d(up, "dw", {.out_channels = 6, .kernel = 3, .padding = 1, .groups = 6});
    auto gt = nn::conv_transpose2d(dw, "gt", {.out_channels = 4, .kernel = 3, .padding = 1, .groups = 2});
    return finish(b, nn::conv2d(gt, "head", {.out_channels = 2, .kernel = 1}));
}

// three unrolled iterations sharing one CNN prior (param_scope), with a data term
Graph<double> shared_prior() {
    B b(12);
    auto x = b.input("x", {1, 2, 6, 6});
    auto z = x;
    for (int k = 0; k < 3; ++k) {
        auto s = b.scope("iter" + std::to_string(k));
        V h;
        {
            auto p = b.param_scope("prior");
            h = nn::relu(nn::conv2d(z, "c1", {.out_channels = 6, .kernel = 3, .padding = 1}), "r");
            h = nn::conv2d(h, "c2", {.out_channels = 2, .kernel = 3, .padding = 1});
        }
        z = nn::add(nn::sub(z, h, "step"), x, "data");
    }
    return finish(b, z);
}

// a deep-equilibrium style FixedPoint whose body holds the prior
Graph<double> fixed_point() {
    B body(13);
    auto z = body.input("z", {1, 2, 6, 6});
    auto x = body.input("x", {1, 2, 6, 6});
    auto h = nn::relu(nn::conv2d(z, "c1", {.out_channels = 6, .kernel = 3, .padding = 1}), "r");
    h = nn::conv2d(h, "c2", {.out_channels = 2, .kernel = 3, .padding = 1});
    body.output(nn::add(nn::scale(h, "damp", {.per_channel = false, .init = 0.1}), x, "update"));
    auto bg = std::move(body).build();
    B b(14);
    auto x0 = b.input("x", {1, 2, 6, 6});
    auto y = nn::fixed_point({x0, x0}, "deq", std::move(bg), {.max_iter = 4});
    auto g = finish(b, nn::conv2d(y, "head", {.out_channels = 2, .kernel = 1}));
    // weights small enough for the iteration to stay bounded
    for (auto* sub : g.mutable_node(g.node_id("deq")).op->mutable_subgraphs()) randomize(*sub, 15, -0.2, 0.2);
    return g;
}

}  // namespace

std::vector<std::string> coupling_names() {
    return {"chain", "residual", "concat",   "split",          "flatten",      "pixel_shuffle", "depthwise",
            "gate",  "group_norm", "layer_norm", "conv_transpose", "shared_prior", "fixed_point"};
}

std::vector<std::string> dead_channel_names() {
    auto n = coupling_names();
    n.erase(std::find(n.begin(), n.end(), "layer_norm"));
    return n;
}

Graph<double> coupling_graph(const std::string& name) {
    static const std::map<std::string, Graph<double> (*)()> make{
        {"chain", chain},         {"residual", residual},       {"concat", concat},
        {"split", split},         {"flatten", flatten},         {"pixel_shuffle", pixel_shuffle},
        {"depthwise", depthwise}, {"gate", gate},               {"group_norm", group_norm},
        {"layer_norm", layer_norm}, {"conv_transpose", conv_transpose}, {"shared_prior", shared_prior},
        {"fixed_point", fixed_point}};
    return make.at(name)();
}

std::vector<std::string> zoo_names() {
    return {"resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "densenet121", "googlenet", "dncnn", "edsr", "unet"};
}

Graph<double> zoo_model(const std::string& name) {
    const models::ClassifierOptions c{.num_classes = 10, .batch = 1, .image_size = 32, .seed = 3};
    Graph<double> g;
    if (name == "resnet18") g = models::resnet18<double>(c);
    else if (name == "resnet50") g = models::resnet50<double>(c);
    else if (name == "vgg16_bn") g = models::vgg16_bn<double>(c);
    else if (name == "mobilenet_v2") g = models::mobilenet_v2<double>(c);
    else if (name == "densenet121") g = models::densenet121<double>(c);
    else if (name == "googlenet") g = models::googlenet<double>(c);
    else if (name == "dncnn") g = models::dncnn<double>({.channels = 1, .features = 16, .depth = 5, .image_size = 16});
    else if (name == "edsr") g = models::edsr<double>({.channels = 3, .features = 16, .blocks = 2, .scale = 2, .image_size = 12});
    else if (name == "unet") g = models::unet<double>({.in_channels = 2, .out_channels = 2, .base = 8, .depth = 2, .image_size = 16});
    else FAIL("unknown zoo model " << name);
    randomize(g, 21);
    return g;
}

}  // namespace spade::test
