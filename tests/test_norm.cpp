#include "fixtures.hpp"

using namespace spade;

namespace {

// Plain-loop references in double. `x` is [N, C, spatial...]; `plane` is the product of the spatial extents.
// Variances are biased (divided by the count), as PyTorch normalises.

template <class X>
Index plane_of(const X& x) {
    return x.numel() / (x.shape()[0] * x.shape()[1]);
}

template <class X, class P>
Tensor<double> ref_batch_norm(const X& x, const P* w, const P* b, const P& mean, const P& var, double eps) {
    const Index n = x.shape()[0], c = x.shape()[1], plane = plane_of(x);
    Tensor<double> y(x.shape());
    for (Index i = 0; i < n; ++i)
        for (Index ch = 0; ch < c; ++ch)
            for (Index p = 0; p < plane; ++p) {
                const Index k = (i * c + ch) * plane + p;
                double v = (static_cast<double>(x[k]) - mean.data()[ch]) / std::sqrt(var.data()[ch] + eps);
                if (w) v = v * w->data()[ch] + b->data()[ch];
                y[k] = v;
            }
    return y;
}

// Statistics per (image, group of C/groups channels) over those channels and all positions.
template <class X, class P>
Tensor<double> ref_group_norm(const X& x, Index groups, const P* w, const P* b, double eps) {
    const Index n = x.shape()[0], c = x.shape()[1], plane = plane_of(x), cg = c / groups;
    Tensor<double> y(x.shape());
    for (Index i = 0; i < n; ++i)
        for (Index g = 0; g < groups; ++g) {
            auto at = [&](Index j, Index p) { return ((i * c + g * cg + j) * plane + p); };
            double sum = 0, sq = 0;
            for (Index j = 0; j < cg; ++j)
                for (Index p = 0; p < plane; ++p) sum += static_cast<double>(x[at(j, p)]);
            const double mean = sum / static_cast<double>(cg * plane);
            for (Index j = 0; j < cg; ++j)
                for (Index p = 0; p < plane; ++p) sq += std::pow(static_cast<double>(x[at(j, p)]) - mean, 2);
            const double var = sq / static_cast<double>(cg * plane);
            for (Index j = 0; j < cg; ++j)
                for (Index p = 0; p < plane; ++p) {
                    double v = (static_cast<double>(x[at(j, p)]) - mean) / std::sqrt(var + eps);
                    if (w) v = v * w->data()[g * cg + j] + b->data()[g * cg + j];
                    y[at(j, p)] = v;
                }
        }
    return y;
}

// Statistics per (image, pixel) across the C channels.
template <class X, class P>
Tensor<double> ref_layer_norm2d(const X& x, const P* w, const P* b, double eps) {
    const Index n = x.shape()[0], c = x.shape()[1], plane = plane_of(x);
    Tensor<double> y(x.shape());
    for (Index i = 0; i < n; ++i)
        for (Index p = 0; p < plane; ++p) {
            auto at = [&](Index ch) { return (i * c + ch) * plane + p; };
            double sum = 0, sq = 0;
            for (Index ch = 0; ch < c; ++ch) sum += static_cast<double>(x[at(ch)]);
            const double mean = sum / static_cast<double>(c);
            for (Index ch = 0; ch < c; ++ch) sq += std::pow(static_cast<double>(x[at(ch)]) - mean, 2);
            const double var = sq / static_cast<double>(c);
            for (Index ch = 0; ch < c; ++ch) {
                double v = (static_cast<double>(x[at(ch)]) - mean) / std::sqrt(var + eps);
                if (w) v = v * w->data()[ch] + b->data()[ch];
                y[at(ch)] = v;
            }
        }
    return y;
}

enum class Kind { batch, group, instance, layer };

struct Case {
    Kind kind;
    Shape shape;
    bool affine;
    Index groups = 1;   // GroupNorm only
    double eps = 1e-5;
};

// Builds a one-node graph of `c.kind`, randomises its parameters, runs it on U(offset-1, offset+1)
// input and returns the error relative to the double reference on the same (rounded) input.
template <class T>
double norm_error(const Case& c, std::uint64_t seed, double offset = 0.0) {
    GraphBuilder<T> b(seed);
    auto x = b.input("x", c.shape);
    switch (c.kind) {
        case Kind::batch: b.output(nn::batch_norm2d(x, "norm", {.eps = c.eps, .affine = c.affine})); break;
        case Kind::group:
            b.output(nn::group_norm(x, "norm", {.num_groups = c.groups, .eps = c.eps, .affine = c.affine}));
            break;
        case Kind::instance: b.output(nn::instance_norm2d(x, "norm", {.eps = c.eps, .affine = c.affine})); break;
        case Kind::layer: b.output(nn::layer_norm2d(x, "norm", {.eps = c.eps, .affine = c.affine})); break;
    }
    auto g = std::move(b).build();
    test::randomize(g, seed + 1);
    auto in = test::random_tensor<T>(c.shape, seed + 2, offset - 1.0, offset + 1.0);
    auto y = test::run(g, in);
    const Parameter<T>* w = c.affine ? &g.parameter("norm.weight") : nullptr;
    const Parameter<T>* bias = c.affine ? &g.parameter("norm.bias") : nullptr;
    Tensor<double> ref;
    switch (c.kind) {
        case Kind::batch:
            ref = ref_batch_norm(in, w, bias, g.parameter("norm.running_mean"), g.parameter("norm.running_var"), c.eps);
            break;
        case Kind::group: ref = ref_group_norm(in, c.groups, w, bias, c.eps); break;
        case Kind::instance: ref = ref_group_norm(in, c.shape[1], w, bias, c.eps); break;
        case Kind::layer: ref = ref_layer_norm2d(in, w, bias, c.eps); break;
    }
    return test::max_rel_err(y, ref);
}

void check_cases(const std::vector<Case>& cases) {
    std::uint64_t seed = 10;
    for (const auto& c : cases) {
        INFO("shape=" << c.shape << " affine=" << c.affine << " groups=" << c.groups << " eps=" << c.eps);
        CHECK(norm_error<double>(c, seed += 3) < 1e-13);
        CHECK(norm_error<float>(c, seed) < 1e-5);
    }
}

}  // namespace

TEST_CASE("BatchNorm2d matches the reference with running statistics", "[norm]") {
    check_cases({
        {Kind::batch, {2, 7, 5, 3}, true},
        {Kind::batch, {1, 33, 4, 6}, false},
        {Kind::batch, {2, 3, 1, 1}, true, 1, 1e-3},
    });
}

TEST_CASE("GroupNorm matches the reference", "[norm]") {
    check_cases({
        {Kind::group, {2, 12, 5, 7}, true, 3},
        {Kind::group, {1, 33, 4, 3}, true, 11},
        {Kind::group, {2, 7, 3, 5}, true, 1},   // one group: statistics over the whole image
        {Kind::group, {2, 7, 3, 5}, false, 7},  // one channel per group: instance norm
        {Kind::group, {2, 6, 10}, true, 2},     // [N, C, L]
        {Kind::group, {3, 8}, true, 4},         // [N, C]
    });
}

TEST_CASE("InstanceNorm2d matches the reference", "[norm]") {
    check_cases({
        {Kind::instance, {2, 7, 5, 6}, false},
        {Kind::instance, {1, 3, 9, 4}, true},
    });
}

TEST_CASE("LayerNorm2d matches the reference across channels", "[norm]") {
    check_cases({
        {Kind::layer, {2, 7, 23, 19}, true, 1, 1e-6},  // 437 pixels: a full run of 256 and a partial one
        {Kind::layer, {1, 33, 4, 5}, true, 1, 1e-6},
        {Kind::layer, {2, 3, 16, 16}, false, 1, 1e-6},
        {Kind::layer, {1, 1, 3, 3}, true, 1, 1e-6},  // one channel: zero variance, the output is the bias
    });
}

TEST_CASE("Norm statistics stay accurate in float with a large mean", "[norm]") {
    // Inputs 1000 +- 1 in float: E[x^2] - E[x]^2 in float would lose every digit of the variance;
    // two shifted passes keep the error at the rounding of the data and of the mean to float
    // (ulp(1000)/2 / std(U(-1,1)) = 6.1e-5/2 / 0.577 ~ 5e-5).
    for (const auto& c : std::vector<Case>{{Kind::group, {2, 12, 9, 11}, true, 4},
                                           {Kind::instance, {1, 5, 17, 13}, false},
                                           {Kind::layer, {1, 64, 7, 9}, true, 1, 1e-6}}) {
        INFO("shape=" << c.shape);
        CHECK(norm_error<float>(c, 99, 1000.0) < 1e-4);
    }
}

TEST_CASE("BatchNorm2d starts as PyTorch initialises it", "[norm]") {
    GraphBuilder<double> b;
    auto x = b.input("x", {2, 3, 4, 4});
    b.output(nn::batch_norm2d(x, "bn"));
    auto g = std::move(b).build();
    // weight 1, bias 0, running_mean 0, running_var 1: y = x / sqrt(1 + eps)
    auto in = test::random_tensor<double>({2, 3, 4, 4}, 3);
    auto y = test::run(g, in);
    for (Index i = 0; i < in.numel(); ++i) REQUIRE(y[i] == Approx(in[i] / std::sqrt(1.0 + 1e-5)).epsilon(1e-14));
    const auto& roles = g.node(g.node_id("bn")).op->param_roles();
    REQUIRE(roles.size() == 4);
    CHECK(roles[0].name == "weight");
    CHECK(roles[2].name == "running_mean");
    CHECK(roles[3].name == "running_var");
    CHECK(roles[1].learnable);
    CHECK_FALSE(roles[2].learnable);
    CHECK_FALSE(g.parameter("bn.running_var").learnable());
}

TEST_CASE("Norm MACs and params by hand", "[norm]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {2, 6, 5, 3});
    auto h = nn::batch_norm2d(x, "bn");
    h = nn::group_norm(h, "gn", {.num_groups = 3, .affine = false});
    h = nn::instance_norm2d(h, "in", {.affine = true});
    h = nn::batch_norm2d(h, "bn_plain", {.affine = false});
    b.output(nn::layer_norm2d(h, "ln"));
    auto g = std::move(b).build();
    auto c = count(g);
    // every tensor has 2*6*5*3 = 180 elements; affine: 2 per element, otherwise 1
    REQUIRE(c.layers.size() == 5);
    CHECK(c.layers[0].macs == 360);  // bn, affine
    CHECK(c.layers[1].macs == 180);  // gn, not affine
    CHECK(c.layers[2].macs == 360);  // in, affine
    CHECK(c.layers[3].macs == 180);  // bn_plain
    CHECK(c.layers[4].macs == 360);  // ln, affine
    CHECK(c.macs == 1440);
    // learnable: bn 6 + 6 (running stats are buffers), in 6 + 6, ln 6 + 6 = 36
    CHECK(c.params == 36);
}

TEST_CASE("Norms round-trip through the registry", "[norm]") {
    auto& r = OpRegistry<float>::global();
    BatchNorm2d<float> bn({.eps = 1e-3, .momentum = 0.01, .affine = false});
    GroupNorm<float> gn({.num_groups = 8, .eps = 1e-6, .affine = true});
    InstanceNorm2d<float> in({.eps = 1e-4, .affine = true});
    LayerNorm2d<float> ln({.eps = 1e-5, .affine = false});
    for (const Op<float>* op : std::initializer_list<const Op<float>*>{&bn, &gn, &in, &ln}) {
        auto copy = r.make(op->type(), op->attributes());
        INFO(op->type());
        CHECK(copy->type() == op->type());
        CHECK(copy->attributes() == op->attributes());
        CHECK(copy->param_roles().size() == op->param_roles().size());
    }
    CHECK(r.make("BatchNorm2d", bn.attributes())->param_roles().size() == 2);  // running stats only
}

TEST_CASE("Norms reject bad channels and shapes naming the node", "[norm]") {
    SECTION("GroupNorm channels not divisible by num_groups, at build time") {
        GraphBuilder<float> b;
        auto x = b.input("x", {1, 30, 4, 4});
        CHECK_THROWS_AS(nn::group_norm(x, "gn", {.num_groups = 4}), ShapeError);
        CHECK_THROWS_WITH(nn::group_norm(x, "layer1.gn", {.num_groups = 4}),
                          Catch::Contains("layer1.gn") && Catch::Contains("30 channels") && Catch::Contains("4"));
        CHECK_THROWS_AS(GroupNorm<float>({.num_groups = 0}), ShapeError);
    }
    SECTION("GroupNorm after its producer lost channels") {
        GraphBuilder<float> b;
        auto x = b.input("x", {1, 3, 6, 6});
        auto h = nn::conv2d(x, "conv", {.out_channels = 12, .padding = 1});
        b.output(nn::group_norm(h, "gn", {.num_groups = 4, .affine = false}));
        auto g = std::move(b).build();
        g.parameter("conv.weight").shrink_to(Shape{10, 3, 3, 3});
        g.parameter("conv.bias").shrink_to(Shape{10});
        g.touch();
        Executor<float> ex(g);
        Tensor<float> in(Shape{1, 3, 6, 6});
        CHECK_THROWS_AS(ex.forward(in), ShapeError);
        CHECK_THROWS_WITH(ex.forward(in), Catch::Contains("'gn'") && Catch::Contains("10 channels"));
    }
    SECTION("BatchNorm2d running statistics of the wrong size") {
        GraphBuilder<float> b;
        auto x = b.input("x", {1, 8, 4, 4});
        b.output(nn::batch_norm2d(x, "bn1"));
        auto g = std::move(b).build();
        g.parameter("bn1.running_var").shrink_to(Shape{7});
        g.touch();
        Executor<float> ex(g);
        Tensor<float> in(Shape{1, 8, 4, 4});
        CHECK_THROWS_WITH(ex.forward(in), Catch::Contains("bn1") && Catch::Contains("running_var") && Catch::Contains("[7]"));
    }
    SECTION("wrong rank") {
        GraphBuilder<float> b;
        auto x = b.input("x", {2, 8});
        CHECK_THROWS_WITH(nn::batch_norm2d(x, "bn"), Catch::Contains("bn") && Catch::Contains("rank 4"));
        CHECK_THROWS_WITH(nn::layer_norm2d(x, "ln"), Catch::Contains("ln") && Catch::Contains("rank 4"));
        CHECK_THROWS_WITH(nn::instance_norm2d(x, "inorm"), Catch::Contains("inorm") && Catch::Contains("rank 4"));
        CHECK_THROWS_AS(BatchNorm2d<float>({.eps = -1.0}), ShapeError);
    }
}
