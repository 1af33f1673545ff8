#include "fixtures.hpp"

#include <functional>
#include <limits>

using namespace spade;

namespace {

template <class T>
Graph<T> one_op(const Shape& s, const std::function<Var<T>(Var<T>)>& f) {
    GraphBuilder<T> b;
    auto x = b.input("x", s);
    b.output(f(x));
    return std::move(b).build();
}

// Source coordinate of output pixel `d` along one axis, PyTorch's formulas given a scale factor.
double linear_source(Index d, Index in, Index out, double scale, bool align_corners) {
    if (align_corners) return out > 1 ? static_cast<double>(d) * static_cast<double>(in - 1) / static_cast<double>(out - 1) : 0.0;
    return std::max((static_cast<double>(d) + 0.5) / scale - 0.5, 0.0);
}

// Plain-loop nearest / bilinear resize in double.
Tensor<double> ref_upsample(const Tensor<double>& x, const UpsampleOptions& o) {
    const Index n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], w = x.shape()[3];
    const Index oh = static_cast<Index>(std::floor(static_cast<double>(h) * o.scale.h));
    const Index ow = static_cast<Index>(std::floor(static_cast<double>(w) * o.scale.w));
    Tensor<double> y(Shape{n, c, oh, ow});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    for (Index b = 0; b < n; ++b)
        for (Index ch = 0; ch < c; ++ch)
            for (Index i = 0; i < oh; ++i)
                for (Index j = 0; j < ow; ++j) {
                    if (o.mode == UpsampleMode::nearest) {
                        Index si = std::min(static_cast<Index>(std::floor(static_cast<double>(i) / o.scale.h)), h - 1);
                        Index sj = std::min(static_cast<Index>(std::floor(static_cast<double>(j) / o.scale.w)), w - 1);
                        Y(b, ch, i, j) = X(b, ch, si, sj);
                        continue;
                    }
                    double fi = linear_source(i, h, oh, o.scale.h, o.align_corners);
                    double fj = linear_source(j, w, ow, o.scale.w, o.align_corners);
                    Index i0 = std::min(static_cast<Index>(std::floor(fi)), h - 1), i1 = std::min(i0 + 1, h - 1);
                    Index j0 = std::min(static_cast<Index>(std::floor(fj)), w - 1), j1 = std::min(j0 + 1, w - 1);
                    double a = std::min(fi - static_cast<double>(i0), 1.0), e = std::min(fj - static_cast<double>(j0), 1.0);
                    Y(b, ch, i, j) = (1 - a) * (1 - e) * X(b, ch, i0, j0) + (1 - a) * e * X(b, ch, i0, j1) +
                                     a * (1 - e) * X(b, ch, i1, j0) + a * e * X(b, ch, i1, j1);
                }
    return y;
}

// Plain-loop pixel shuffle: y[n, c, h r + i, w r + j] = x[n, c r^2 + i r + j, h, w].
Tensor<double> ref_pixel_shuffle(const Tensor<double>& x, Index r) {
    const Index n = x.shape()[0], c = x.shape()[1] / (r * r), h = x.shape()[2], w = x.shape()[3];
    Tensor<double> y(Shape{n, c, h * r, w * r});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    for (Index b = 0; b < n; ++b)
        for (Index ch = 0; ch < c; ++ch)
            for (Index i = 0; i < r; ++i)
                for (Index j = 0; j < r; ++j)
                    for (Index a = 0; a < h; ++a)
                        for (Index e = 0; e < w; ++e) Y(b, ch, a * r + i, e * r + j) = X(b, ch * r * r + i * r + j, a, e);
    return y;
}

bool same(const Tensor<double>& a, const Tensor<double>& b) { return a.shape() == b.shape() && a.values() == b.values(); }

}  // namespace

TEST_CASE("Upsample matches the reference for nearest and bilinear", "[resample]") {
    struct Case {
        Shape s;
        UpsampleOptions o;
    };
    std::vector<Case> cases;
    const std::vector<std::pair<Shape, Scale2>> geos{
        {{2, 3, 5, 7}, 2.0}, {{1, 7, 4, 3}, 3.0}, {{2, 33, 6, 4}, {1.5, 2.5}}, {{1, 3, 9, 10}, 0.5},
        {{1, 3, 7, 5}, 1.7}, {{2, 3, 1, 6}, {4.0, 1.0}},
    };
    for (const auto& [s, scale] : geos) {
        cases.push_back({s, {.scale = scale, .mode = UpsampleMode::nearest}});
        cases.push_back({s, {.scale = scale, .mode = UpsampleMode::bilinear, .align_corners = false}});
        cases.push_back({s, {.scale = scale, .mode = UpsampleMode::bilinear, .align_corners = true}});
    }
    std::uint64_t seed = 20;
    for (const auto& c : cases) {
        auto g = one_op<double>(c.s, [&](auto x) { return nn::upsample(x, "up", c.o); });
        auto in = test::random_tensor<double>(c.s, ++seed);
        auto y = test::run(g, in);
        auto ref = ref_upsample(in, c.o);
        INFO("input " << c.s << " scale " << c.o.scale.h << "x" << c.o.scale.w << " bilinear "
                      << (c.o.mode == UpsampleMode::bilinear) << " align_corners " << c.o.align_corners);
        REQUIRE(y.shape() == ref.shape());
        if (c.o.mode == UpsampleMode::nearest) CHECK(same(y, ref));
        else CHECK(test::max_rel_err(y, ref) < 1e-14);
        CHECK(count(g).macs == (c.o.mode == UpsampleMode::bilinear ? ref.numel() : 0));
    }
}

TEST_CASE("Upsample by hand and against torch's own numbers", "[resample]") {
    Tensor<double> ramp(Shape{1, 1, 1, 2}, std::vector<double>{0, 1});
    auto run = [&](const UpsampleOptions& o, const Tensor<double>& x) {
        return test::run(one_op<double>(x.shape(), [&](auto v) { return nn::upsample(v, "up", o); }), x);
    };
    // half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to the last pixel)
    auto y = run({.scale = {1.0, 2.0}, .mode = UpsampleMode::bilinear}, ramp);
    CHECK(y.values() == std::vector<double>{0, 0.25, 0.75, 1});
    auto z = run({.scale = {1.0, 2.0}, .mode = UpsampleMode::bilinear, .align_corners = true}, ramp);
    REQUIRE(z.shape() == Shape{1, 1, 1, 4});
    CHECK(z[1] == Approx(1.0 / 3.0).epsilon(1e-15));
    CHECK(z[2] == Approx(2.0 / 3.0).epsilon(1e-15));
    CHECK(z[3] == 1.0);
    // nn.Upsample(scale_factor=1.7) on 7 pixels reads floor(dst / 1.7), not floor(dst * 7 / 11)
    // (torch 1.13 gives exactly this row; size=11 would give ... 2, 3, 3, 4, 5, 5, 6)
    Tensor<double> idx(Shape{1, 1, 1, 7}, std::vector<double>{0, 1, 2, 3, 4, 5, 6});
    auto n = run({.scale = {1.0, 1.7}}, idx);
    CHECK(n.values() == std::vector<double>{0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5});
}

TEST_CASE("Upsample in float agrees with double", "[resample]") {
    Shape s{2, 7, 9, 6};
    auto in = test::random_tensor<double>(s, 2);
    Tensor<float> inf(s);
    for (Index i = 0; i < in.numel(); ++i) inf[i] = static_cast<float>(in[i]);
    for (bool ac : {false, true}) {
        UpsampleOptions o{.scale = {2.0, 1.5}, .mode = UpsampleMode::bilinear, .align_corners = ac};
        auto gf = one_op<float>(s, [&](auto x) { return nn::upsample(x, "up", o); });
        CHECK(test::max_rel_err(test::run(gf, inf), ref_upsample(in, o)) < 1e-5);
    }
    auto gn = one_op<float>(s, [](auto x) { return nn::upsample(x, "up", {.scale = 3.0}); });
    auto yn = test::run(gn, inf);
    Tensor<double> rounded(s);  // the float input, exactly, so nearest must match bit for bit
    for (Index i = 0; i < in.numel(); ++i) rounded[i] = inf[i];
    CHECK(test::max_rel_err(yn, ref_upsample(rounded, {.scale = 3.0})) == 0.0);
}

TEST_CASE("PixelShuffle and PixelUnshuffle match the reference and invert each other", "[resample]") {
    struct Case {
        Shape s;
        Index r;
    };
    for (const auto& c : std::vector<Case>{{{2, 12, 5, 7}, 2}, {{1, 63, 3, 4}, 3}, {{2, 7, 6, 9}, 1}, {{1, 32, 2, 3}, 4}}) {
        auto g = one_op<double>(c.s, [&](auto x) { return nn::pixel_shuffle(x, "ps", c.r); });
        auto in = test::random_tensor<double>(c.s, static_cast<std::uint64_t>(c.r * 100 + c.s[1]));
        auto y = test::run(g, in);
        INFO("input " << c.s << " r " << c.r);
        CHECK(same(y, ref_pixel_shuffle(in, c.r)));
        CHECK(count(g).macs == 0);
        // unshuffle undoes it exactly, and shuffle undoes unshuffle
        auto back = one_op<double>(y.shape(), [&](auto x) { return nn::pixel_unshuffle(x, "pu", c.r); });
        CHECK(same(test::run(back, y), in));
        auto round = one_op<double>(y.shape(), [&](auto x) {
            return nn::pixel_shuffle(nn::pixel_unshuffle(x, "pu", c.r), "ps", c.r);
        });
        CHECK(same(test::run(round, y), y));
    }
}

TEST_CASE("Resample ops rebuild from their attributes", "[resample]") {
    auto g = one_op<double>({1, 8, 4, 6}, [](auto x) {
        x = nn::upsample(x, "near", {.scale = {2.0, 1.5}});
        x = nn::upsample(x, "bil", {.scale = 0.5, .mode = UpsampleMode::bilinear, .align_corners = true});
        x = nn::pixel_unshuffle(x, "pu", 2);
        return nn::pixel_shuffle(x, "ps", 2);
    });
    for (const auto& n : g.nodes()) {
        auto op = OpRegistry<double>::global().make(n.op->type(), n.op->attributes());
        CHECK(op->type() == n.op->type());
        CHECK(op->attributes() == n.op->attributes());
    }
    CHECK(g.value(g.outputs()[0]).shape == Shape{1, 8, 4, 4});
    Attributes bad{{"scale_h", 2.0}, {"scale_w", 2.0}, {"mode", std::string("cubic")}, {"align_corners", false}};
    CHECK_THROWS_AS(OpRegistry<double>::global().make("Upsample", bad), FormatError);
}

TEST_CASE("Resample ops reject bad factors and shapes naming the node", "[resample]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {2, 7, 5, 6});
    CHECK_THROWS_WITH(nn::pixel_shuffle(x, "ps_odd", 2), Catch::Contains("ps_odd") && Catch::Contains("7"));
    CHECK_THROWS_WITH(nn::pixel_unshuffle(x, "pu_odd", 2), Catch::Contains("pu_odd") && Catch::Contains("5x6"));
    CHECK_THROWS_WITH(nn::pixel_shuffle(x, "ps_zero", 0), Catch::Contains("ps_zero"));
    CHECK_THROWS_WITH(nn::upsample(x, "up_zero", {.scale = 0.0}), Catch::Contains("up_zero"));
    CHECK_THROWS_WITH(nn::upsample(x, "up_tiny", {.scale = 0.1}), Catch::Contains("up_tiny") && Catch::Contains("empty"));
    CHECK_THROWS_WITH(nn::upsample(x, "up_ac", {.scale = 2.0, .mode = UpsampleMode::nearest, .align_corners = true}),
                      Catch::Contains("up_ac") && Catch::Contains("align_corners"));
    auto f = b.input("f", {2, 12});
    CHECK_THROWS_WITH(nn::pixel_shuffle(f, "ps_rank", 2), Catch::Contains("ps_rank") && Catch::Contains("rank"));

    // shapes checked again at run time, where spatial size may change
    GraphBuilder<float> b2;
    b2.output(nn::pixel_unshuffle(b2.input("x", {1, 3, 4, 4}), "down", 2));
    auto g = std::move(b2).build();
    Executor<float> ex(g);
    CHECK_THROWS_WITH(ex.forward(Tensor<float>(Shape{1, 3, 6, 5})), Catch::Contains("down") && Catch::Contains("6x5"));
}
