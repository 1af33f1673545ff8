#include "fixtures.hpp"

using namespace spade;

namespace {

// Reference by the definition: every input pixel (n, ci, i, j) scatters x * W[ci, co, a, c] to the
// output pixel (i*s - p + a*d, j*s - p + c*d) of channel group(ci)*C_out_g + co. In double.
template <class X, class P>
Tensor<double> ref_conv_transpose2d(const X& x, const P& w, const P* b, const ConvTranspose2dOptions& o) {
    const Index n = x.shape()[0], cin = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
    const Index cout_g = w.shape()[1], kh = o.kernel.h, kw = o.kernel.w, cin_g = cin / o.groups;
    const Index cout = cout_g * o.groups;
    const Index oh = (h - 1) * o.stride.h - 2 * o.padding.h + o.dilation.h * (kh - 1) + o.output_padding.h + 1;
    const Index ow = (wd - 1) * o.stride.w - 2 * o.padding.w + o.dilation.w * (kw - 1) + o.output_padding.w + 1;
    Tensor<double> y(Shape{n, cout, oh, ow});
    auto at_y = [&](Index b0, Index c, Index i, Index j) -> double& { return y[((b0 * cout + c) * oh + i) * ow + j]; };
    auto at_w = [&](Index ci, Index co, Index a, Index c) {
        return static_cast<double>(w.data()[((ci * cout_g + co) * kh + a) * kw + c]);
    };
    for (Index b0 = 0; b0 < n; ++b0)
        for (Index c = 0; c < cout; ++c)
            for (Index i = 0; i < oh; ++i)
                for (Index j = 0; j < ow; ++j) at_y(b0, c, i, j) = b ? static_cast<double>(b->data()[c]) : 0.0;
    for (Index b0 = 0; b0 < n; ++b0)
        for (Index ci = 0; ci < cin; ++ci)
            for (Index i = 0; i < h; ++i)
                for (Index j = 0; j < wd; ++j) {
                    const double xv = static_cast<double>(x[((b0 * cin + ci) * h + i) * wd + j]);
                    const Index g = ci / cin_g;
                    for (Index co = 0; co < cout_g; ++co)
                        for (Index a = 0; a < kh; ++a)
                            for (Index c = 0; c < kw; ++c) {
                                const Index ii = i * o.stride.h - o.padding.h + a * o.dilation.h;
                                const Index jj = j * o.stride.w - o.padding.w + c * o.dilation.w;
                                if (ii < 0 || ii >= oh || jj < 0 || jj >= ow) continue;
                                at_y(b0, g * cout_g + co, ii, jj) += at_w(ci, co, a, c) * xv;
                            }
                }
    return y;
}

struct Case {
    Index n, cin, h, w;
    ConvTranspose2dOptions o;
};

template <class T>
double conv_transpose_error(const Case& c, std::uint64_t seed) {
    GraphBuilder<T> b(seed);
    auto x = b.input("x", {c.n, c.cin, c.h, c.w});
    b.output(nn::conv_transpose2d(x, "up", c.o));
    auto g = std::move(b).build();
    auto in = test::random_tensor<T>({c.n, c.cin, c.h, c.w}, seed + 100);
    auto y = test::run(g, in);
    const auto* bias = c.o.bias ? &g.parameter("up.bias") : nullptr;
    return test::max_rel_err(y, ref_conv_transpose2d(in, g.parameter("up.weight"), bias, c.o));
}

}  // namespace

TEST_CASE("ConvTranspose2d matches the scatter definition on random shapes", "[conv_transpose]") {
    std::vector<Case> cases{
        {1, 3, 5, 4, {.out_channels = 7, .kernel = 3, .padding = 1}},
        {2, 4, 6, 5, {.out_channels = 6, .kernel = 3, .stride = 2, .padding = 1, .output_padding = 1}},
        {1, 6, 5, 7, {.out_channels = 9, .kernel = 3, .stride = 2, .padding = 1, .groups = 3}},
        {2, 4, 4, 6, {.out_channels = 4, .kernel = 3, .padding = 2, .dilation = 2, .groups = 2, .bias = false}},
        {1, 5, 4, 4, {.out_channels = 3, .kernel = {2, 3}, .stride = {2, 1}, .padding = {0, 1}, .output_padding = {1, 0}}},
        {2, 7, 5, 3, {.out_channels = 33, .kernel = 1}},  // 1x1: the GEMM writes the output directly
        {1, 3, 4, 5, {.out_channels = 2, .kernel = 1, .output_padding = 1, .dilation = 2}},
        {1, 8, 3, 5, {.out_channels = 4, .kernel = 4, .stride = 2, .padding = 1, .groups = 2}},
        {2, 3, 4, 3, {.out_channels = 5, .kernel = 3, .stride = 2, .output_padding = 1, .dilation = 2}},
        {1, 4, 5, 5, {.out_channels = 8, .kernel = 3, .stride = 2, .padding = 1, .groups = 4}},  // depthwise x2
        {1, 33, 2, 2, {.out_channels = 7, .kernel = 2, .stride = 2, .bias = false}},
    };
    std::uint64_t seed = 1;
    for (const auto& c : cases) {
        INFO("cin=" << c.cin << " cout=" << c.o.out_channels << " k=" << c.o.kernel.h << "x" << c.o.kernel.w
                    << " s=" << c.o.stride.h << " groups=" << c.o.groups);
        CHECK(conv_transpose_error<double>(c, ++seed) < 1e-13);
        CHECK(conv_transpose_error<float>(c, seed) < 1e-5);
    }
}

TEST_CASE("ConvTranspose2d is the adjoint of Conv2d with the same weight", "[conv_transpose]") {
    // <conv(u), v> = <u, conv_transpose(v)> when both use the tensor W [C, K/groups, kh, kw] and no bias;
    // output_padding 1 recovers the even input size that stride 2 maps onto the same output size.
    const Index groups = 3;
    GraphBuilder<double> b(7);
    auto u = b.input("u", {2, 6, 8, 10});
    b.output(nn::conv2d(u, "conv", {.out_channels = 9, .kernel = 3, .stride = 2, .padding = 1, .groups = groups,
                                    .bias = false}));
    auto conv = std::move(b).build();
    GraphBuilder<double> bt(8);
    auto v = bt.input("v", {2, 9, 4, 5});
    bt.output(nn::conv_transpose2d(v, "up", {.out_channels = 6, .kernel = 3, .stride = 2, .padding = 1,
                                             .output_padding = 1, .groups = groups, .bias = false}));
    auto up = std::move(bt).build();
    REQUIRE(up.parameter("up.weight").shape() == conv.parameter("conv.weight").shape());
    std::copy(conv.parameter("conv.weight").begin(), conv.parameter("conv.weight").end(),
              up.parameter("up.weight").begin());
    auto ut = test::random_tensor<double>({2, 6, 8, 10}, 1), vt = test::random_tensor<double>({2, 9, 4, 5}, 2);
    auto cu = test::run(conv, ut), tv = test::run(up, vt);
    REQUIRE(cu.shape() == vt.shape());
    REQUIRE(tv.shape() == ut.shape());
    double lhs = 0, rhs = 0;
    for (Index i = 0; i < cu.numel(); ++i) lhs += cu[i] * vt[i];
    for (Index i = 0; i < ut.numel(); ++i) rhs += ut[i] * tv[i];
    CHECK(lhs == Approx(rhs).epsilon(1e-12));
}

TEST_CASE("ConvTranspose2d output size and MACs by hand", "[conv_transpose]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {2, 4, 6, 5});
    auto h = nn::conv_transpose2d(x, "up1", {.out_channels = 6, .kernel = 3, .stride = 2, .padding = 1, .output_padding = 1});
    b.output(nn::conv_transpose2d(h, "up2", {.out_channels = 9, .kernel = 2, .stride = 2, .groups = 3, .bias = false}));
    auto g = std::move(b).build();
    // up1: H = (6-1)*2 - 2*1 + 1*(3-1) + 1 + 1 = 12, W = (5-1)*2 - 2 + 2 + 1 + 1 = 10
    // up2: H = (12-1)*2 + (2-1) + 1 = 24, W = (10-1)*2 + 1 + 1 = 20
    CHECK(g.value(g.value_id("up1")).shape == Shape{2, 6, 12, 10});
    CHECK(g.value(g.value_id("up2")).shape == Shape{2, 9, 24, 20});
    auto c = count(g);
    REQUIRE(c.layers.size() == 2);
    // up1: kh*kw*C_in*C_out/groups*H_in*W_in*N = 3*3*4*6*6*5*2 = 12960, + bias C_out*H_out*W_out*N = 6*12*10*2 = 1440
    CHECK(c.layers[0].macs == 12960 + 1440);
    // up2: 2*2*6*(9/3)*12*10*2 = 17280, no bias
    CHECK(c.layers[1].macs == 17280);
    // params: up1 4*6*3*3 + 6 = 222; up2 6*3*2*2 = 72
    CHECK(c.params == 222 + 72);
}

TEST_CASE("ConvTranspose2d uses PyTorch's fan-in (weight dim 1 times kernel area)", "[conv_transpose]") {
    GraphBuilder<double> b(5);
    auto x = b.input("x", {1, 4, 3, 3});
    b.output(nn::conv_transpose2d(x, "up", {.out_channels = 8, .kernel = 3, .groups = 2}));
    auto g = std::move(b).build();
    const double bound = 1.0 / std::sqrt(4.0 * 3 * 3);  // fan_in = C_out/groups * kh * kw = 4*3*3
    double m = 0;
    for (double v : g.parameter("up.weight")) m = std::max(m, std::abs(v));
    CHECK(m <= bound);
    CHECK(m > 0.8 * bound);
}

TEST_CASE("ConvTranspose2d round-trips through the registry", "[conv_transpose]") {
    ConvTranspose2d<double> op({.out_channels = 4, .kernel = {2, 3}, .stride = 2, .output_padding = {1, 0}, .groups = 2});
    auto copy = OpRegistry<double>::global().make("ConvTranspose2d", op.attributes());
    CHECK(copy->type() == "ConvTranspose2d");
    CHECK(copy->attributes() == op.attributes());
}

TEST_CASE("ConvTranspose2d rejects bad settings and shapes naming the node", "[conv_transpose]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 6, 4, 4});
    SECTION("output_padding not smaller than stride or dilation") {
        CHECK_THROWS_AS(nn::conv_transpose2d(x, "up", {.out_channels = 4, .stride = 2, .output_padding = 2}), ShapeError);
        CHECK_THROWS_WITH(nn::conv_transpose2d(x, "dec", {.out_channels = 4, .output_padding = 1}),
                          Catch::Contains("dec") && Catch::Contains("output_padding"));
        CHECK_THROWS_AS(ConvTranspose2d<float>({.out_channels = 4, .stride = 2, .output_padding = {0, 3}}), ShapeError);
    }
    SECTION("groups that do not divide the channels") {
        CHECK_THROWS_WITH(nn::conv_transpose2d(x, "up", {.out_channels = 4, .groups = 4}),
                          Catch::Contains("up") && Catch::Contains("groups 4"));
    }
    SECTION("padding that leaves no output") {
        // H_out = (1-1)*1 - 2*1 + 1*(1-1) + 0 + 1 = -1
        auto tiny = b.input("tiny", {1, 2, 1, 1});
        CHECK_THROWS_WITH(nn::conv_transpose2d(tiny, "up", {.out_channels = 2, .kernel = 1, .padding = 1}),
                          Catch::Contains("up") && Catch::Contains("empty output"));
    }
    SECTION("input channels that no longer match the weight") {
        b.output(nn::conv_transpose2d(x, "decoder.up", {.out_channels = 3}));
        auto g = std::move(b).build();
        g.parameter("decoder.up.weight").shrink_to(Shape{5, 3, 3, 3});
        g.touch();
        Executor<float> ex(g);
        Tensor<float> in(Shape{1, 6, 4, 4});
        CHECK_THROWS_WITH(ex.forward(in), Catch::Contains("decoder.up") && Catch::Contains("weight"));
    }
}
