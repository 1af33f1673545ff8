#include "fixtures.hpp"

#include <functional>
#include <limits>

using namespace spade;

namespace {

// PyTorch's pooled extent along one axis, counted window by window: windows
// start at o*s - p; without ceil_mode a window must fit in the padded input;
// with it, a window counts while the one before it fell short of the padded
// end, provided it starts inside the input or the left padding.
Index ref_extent(Index in, Index k, Index s, Index p, Index d, bool ceil_mode) {
    const Index reach = d * (k - 1) + 1;  // span of one window
    Index out = 0;
    for (Index start = -p;; start += s, ++out) {
        const bool counts = ceil_mode ? (start - s + reach < in + p && start < in) : (start + reach <= in + p);
        if (!counts) return out;
    }
}

// Plain-loop max / average pooling in double, PyTorch's rules.
Tensor<double> ref_pool(const Tensor<double>& x, const PoolOptions& o0, bool max) {
    PoolOptions o = o0;
    if (o.stride.h == 0) o.stride.h = o.kernel.h;
    if (o.stride.w == 0) o.stride.w = o.kernel.w;
    const Index n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], w = x.shape()[3];
    const Index oh = ref_extent(h, o.kernel.h, o.stride.h, o.padding.h, o.dilation.h, o.ceil_mode);
    const Index ow = ref_extent(w, o.kernel.w, o.stride.w, o.padding.w, o.dilation.w, o.ceil_mode);
    Tensor<double> y(Shape{n, c, oh, ow});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    for (Index b = 0; b < n; ++b)
        for (Index ch = 0; ch < c; ++ch)
            for (Index i = 0; i < oh; ++i)
                for (Index j = 0; j < ow; ++j) {
                    double best = -std::numeric_limits<double>::infinity(), sum = 0;
                    Index inside = 0;
                    for (Index a = 0; a < o.kernel.h; ++a)
                        for (Index e = 0; e < o.kernel.w; ++e) {
                            Index ii = i * o.stride.h - o.padding.h + a * o.dilation.h;
                            Index jj = j * o.stride.w - o.padding.w + e * o.dilation.w;
                            if (ii < 0 || ii >= h || jj < 0 || jj >= w) continue;
                            best = std::max(best, X(b, ch, ii, jj));
                            sum += X(b, ch, ii, jj);
                            ++inside;
                        }
                    if (max) {
                        Y(b, ch, i, j) = best;
                        continue;
                    }
                    // PyTorch's divisor: the window cut at the padded edge, counting padding or not
                    Index h0 = i * o.stride.h - o.padding.h, w0 = j * o.stride.w - o.padding.w;
                    Index h1 = std::min(h0 + o.kernel.h, h + o.padding.h), w1 = std::min(w0 + o.kernel.w, w + o.padding.w);
                    Index div = o.count_include_pad ? (h1 - h0) * (w1 - w0) : inside;
                    Y(b, ch, i, j) = sum / static_cast<double>(div);
                }
    return y;
}

Tensor<double> ref_adaptive(const Tensor<double>& x, Index oh, Index ow) {
    const Index n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], w = x.shape()[3];
    Tensor<double> y(Shape{n, c, oh, ow});
    auto X = x.view<4>();
    auto Y = y.view<4>();
    for (Index b = 0; b < n; ++b)
        for (Index ch = 0; ch < c; ++ch)
            for (Index i = 0; i < oh; ++i)
                for (Index j = 0; j < ow; ++j) {
                    Index h0 = static_cast<Index>(std::floor(double(i * h) / double(oh)));
                    Index h1 = static_cast<Index>(std::ceil(double((i + 1) * h) / double(oh)));
                    Index w0 = static_cast<Index>(std::floor(double(j * w) / double(ow)));
                    Index w1 = static_cast<Index>(std::ceil(double((j + 1) * w) / double(ow)));
                    double s = 0;
                    for (Index a = h0; a < h1; ++a)
                        for (Index e = w0; e < w1; ++e) s += X(b, ch, a, e);
                    Y(b, ch, i, j) = s / static_cast<double>((h1 - h0) * (w1 - w0));
                }
    return y;
}

template <class T>
Graph<T> one_op(const Shape& s, const std::function<Var<T>(Var<T>)>& f) {
    GraphBuilder<T> b;
    auto x = b.input("x", s);
    b.output(f(x));
    return std::move(b).build();
}

struct Case {
    Shape s;
    PoolOptions o;
};

// Shapes and settings covering odd channels, non-square images, batch 2,
// stride 2, dilation 2, ceil_mode and padding, plus the torchvision layers.
std::vector<Case> cases() {
    return {
        {{2, 3, 112, 112}, {.kernel = 3, .stride = 2, .padding = 1}},          // ResNet stem
        {{1, 7, 112, 112}, {.kernel = 3, .stride = 2, .ceil_mode = true}},     // GoogLeNet
        {{2, 33, 9, 13}, {.kernel = 2, .stride = 2}},                          // DenseNet transition
        {{2, 7, 9, 13}, {.kernel = 2, .ceil_mode = true}},
        {{2, 3, 10, 7}, {.kernel = 3, .stride = 2, .padding = 1, .ceil_mode = true}},
        {{1, 3, 8, 8}, {.kernel = 3, .stride = 3, .padding = 1, .ceil_mode = true}},  // last-window rule bites
        {{1, 7, 11, 9}, {.kernel = {3, 2}, .stride = {2, 1}, .padding = {1, 0}}},
        {{1, 3, 13, 10}, {.kernel = 5, .stride = 3, .padding = 2, .ceil_mode = true}},
        {{2, 3, 2, 2}, {.kernel = 3, .stride = 2, .ceil_mode = true}},  // window larger than the image
        {{1, 33, 7, 7}, {.kernel = 3, .stride = 1, .padding = 1}},
        // rows narrower than a vector, a whole vector, and with a shifted last vector
        {{1, 2, 5, 3}, {.kernel = 3, .stride = 1, .padding = 1}},
        {{1, 2, 4, 5}, {.kernel = 3, .stride = 2, .ceil_mode = true}},
        {{1, 3, 14, 14}, {.kernel = 3, .stride = 1, .padding = 1, .ceil_mode = true}},
        {{1, 2, 9, 37}, {.kernel = 2, .stride = 2}},
    };
}

}  // namespace

TEST_CASE("Pooled extents follow PyTorch's rules", "[pool]") {
    using kernels::pool_out_extent;
    CHECK(pool_out_extent(112, 3, 2, 1, 1, false) == 56);  // ResNet stem
    CHECK(pool_out_extent(112, 3, 2, 0, 1, true) == 56);   // GoogLeNet: floor would give 55
    CHECK(pool_out_extent(112, 3, 2, 0, 1, false) == 55);
    CHECK(pool_out_extent(56, 3, 2, 0, 1, true) == 28);
    CHECK(pool_out_extent(14, 2, 2, 0, 1, true) == 7);
    CHECK(pool_out_extent(13, 2, 2, 0, 1, true) == 7);
    CHECK(pool_out_extent(8, 3, 3, 1, 1, true) == 3);  // a 4th window would start in the right padding
    CHECK(pool_out_extent(2, 3, 2, 0, 1, true) == 1);  // one partial window
    CHECK(pool_out_extent(2, 3, 2, 0, 1, false) == 0);
    CHECK(pool_out_extent(9, 3, 2, 1, 2, true) == 4);
    for (Index in = 1; in < 20; ++in)
        for (Index k = 1; k <= 5; ++k)
            for (Index s = 1; s <= 3; ++s)
                for (Index p = 0; p <= k / 2; ++p)
                    for (Index d = 1; d <= 2; ++d)
                        for (bool c : {false, true}) {
                            INFO("in " << in << " k " << k << " s " << s << " p " << p << " d " << d << " ceil " << c);
                            CHECK(std::max<Index>(pool_out_extent(in, k, s, p, d, c), 0) == ref_extent(in, k, s, p, d, c));
                        }
}

TEST_CASE("MaxPool2d matches the reference", "[pool]") {
    auto all = cases();
    all.push_back({{2, 3, 9, 12}, {.kernel = 3, .stride = 2, .padding = 1, .dilation = 2}});
    all.push_back({{1, 7, 10, 11}, {.kernel = 3, .stride = 2, .padding = 1, .dilation = 2, .ceil_mode = true}});
    all.push_back({{1, 3, 9, 10}, {.kernel = {3, 2}, .stride = 1, .dilation = {2, 3}}});
    std::uint64_t seed = 10;
    for (const auto& c : all) {
        auto g = one_op<double>(c.s, [&](auto x) { return nn::max_pool2d(x, "pool", c.o); });
        auto in = test::random_tensor<double>(c.s, ++seed);
        auto y = test::run(g, in);
        INFO("input " << c.s << " kernel " << c.o.kernel.h << "x" << c.o.kernel.w << " ceil " << c.o.ceil_mode);
        auto ref = ref_pool(in, c.o, true);
        REQUIRE(y.shape() == ref.shape());
        CHECK(test::max_rel_err(y, ref) == 0.0);
        CHECK(count(g).macs == ref.numel());
    }
}

TEST_CASE("AvgPool2d matches the reference with and without counting padding", "[pool]") {
    std::uint64_t seed = 50;
    for (bool include : {true, false})
        for (auto c : cases()) {
            c.o.count_include_pad = include;
            auto g = one_op<double>(c.s, [&](auto x) { return nn::avg_pool2d(x, "pool", c.o); });
            auto in = test::random_tensor<double>(c.s, ++seed);
            auto y = test::run(g, in);
            INFO("input " << c.s << " kernel " << c.o.kernel.h << "x" << c.o.kernel.w << " ceil " << c.o.ceil_mode
                          << " include_pad " << include);
            auto ref = ref_pool(in, c.o, false);
            REQUIRE(y.shape() == ref.shape());
            CHECK(test::max_rel_err(y, ref) < 1e-14);
            CHECK(count(g).macs == ref.numel());
        }
}

TEST_CASE("AvgPool2d divisors at padded and ceil-mode edges, by hand", "[pool]") {
    // [1, 2, 3, 4], kernel 3, stride 2, ceil_mode, no padding: the last window [2, 5) runs
    // past the edge and PyTorch divides by the 2 pixels it covers: (3 + 4) / 2, not / 3
    Tensor<double> ramp(Shape{1, 1, 1, 4}, std::vector<double>{1, 2, 3, 4});
    auto past = one_op<double>({1, 1, 1, 4}, [](auto x) {
        return nn::avg_pool2d(x, "p", {.kernel = {1, 3}, .stride = {1, 2}, .ceil_mode = true});
    });
    auto q = test::run(past, ramp);
    REQUIRE(q.shape() == Shape{1, 1, 1, 2});
    CHECK(q[0] == 2.0);
    CHECK(q[1] == 3.5);
    // ones, kernel 3, stride 2, padding 1, ceil_mode: windows [-1, 2), [1, 4), [3, 6) cut at
    // in + pad = 5, so counting padding divides by 3, 3, 2: 2/3, 1, 1/2 (checked with torch 1.13)
    Tensor<double> ones(Shape{1, 1, 1, 4}, 1.0);
    for (bool include : {true, false}) {
        auto g = one_op<double>({1, 1, 1, 4}, [&](auto x) {
            return nn::avg_pool2d(
                x, "p", {.kernel = {1, 3}, .stride = {1, 2}, .padding = {0, 1}, .ceil_mode = true, .count_include_pad = include});
        });
        auto y = test::run(g, ones);
        REQUIRE(y.shape() == Shape{1, 1, 1, 3});
        CHECK(y[0] == Approx(include ? 2.0 / 3.0 : 1.0).epsilon(1e-15));
        CHECK(y[1] == 1.0);
        CHECK(y[2] == (include ? 0.5 : 1.0));
    }
}

TEST_CASE("MaxPool2d propagates NaN and ignores padding", "[pool]") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    Tensor<double> x(Shape{1, 1, 2, 3}, std::vector<double>{-5, nan, -1, -4, -3, -2});
    auto g = one_op<double>({1, 1, 2, 3}, [](auto v) { return nn::max_pool2d(v, "p", {.kernel = 3, .stride = 1, .padding = 1}); });
    auto y = test::run(g, x);
    REQUIRE(y.shape() == Shape{1, 1, 2, 3});
    for (Index i = 0; i < 6; ++i) CHECK(std::isnan(y[i]));  // every window sees the NaN
    Tensor<double> neg(Shape{1, 1, 2, 3}, std::vector<double>{-5, -6, -1, -4, -3, -2});
    auto z = test::run(g, neg);
    CHECK(z[0] == -3.0);  // padding is not a zero that wins over negatives
    CHECK(z[2] == -1.0);
    // rows of whole vectors: a NaN at column 11 reaches the outputs whose windows hold it
    for (Index stride : {1, 2}) {
        auto wide = one_op<double>({1, 1, 3, 40}, [&](auto v) {
            return nn::max_pool2d(v, "p", {.kernel = 3, .stride = stride, .padding = 1});
        });
        Tensor<double> in(Shape{1, 1, 3, 40});
        for (Index i = 0; i < in.numel(); ++i) in[i] = -1.0 - static_cast<double>(i % 7);
        in[40 + 11] = nan;
        auto out = test::run(wide, in);
        const Index ow = out.shape()[3];
        for (Index r = 0; r < out.shape()[2]; ++r)
            for (Index c = 0; c < ow; ++c) {
                const Index lo = c * stride - 1;  // the window's first input column
                INFO("stride " << stride << " output " << r << ", " << c);
                CHECK(std::isnan(out[r * ow + c]) == (lo <= 11 && 11 <= lo + 2));
            }
    }
}

TEST_CASE("AdaptiveAvgPool2d and global_avg_pool match the reference", "[pool]") {
    struct A {
        Shape s;
        Index oh, ow;
    };
    std::vector<A> all{{{2, 3, 7, 10}, 3, 4}, {{1, 7, 6, 9}, 4, 5}, {{2, 33, 5, 7}, 1, 1}, {{1, 3, 7, 7}, 7, 7},
                       {{1, 3, 5, 4}, 8, 6},  {{2, 7, 13, 9}, 1, 3}};
    std::uint64_t seed = 90;
    for (const auto& c : all) {
        auto g = one_op<double>(c.s, [&](auto x) { return nn::adaptive_avg_pool2d(x, "pool", {c.oh, c.ow}); });
        auto in = test::random_tensor<double>(c.s, ++seed);
        auto y = test::run(g, in);
        INFO("input " << c.s << " to " << c.oh << "x" << c.ow);
        CHECK(test::max_rel_err(y, ref_adaptive(in, c.oh, c.ow)) < 1e-14);
        CHECK(count(g).macs == c.s[0] * c.s[1] * c.oh * c.ow);
    }
    // the global fast path over a big plane, float
    Shape s{2, 33, 31, 29};
    auto g = one_op<float>(s, [](auto x) { return nn::global_avg_pool(x); });
    CHECK(g.nodes()[0].op->type() == "AdaptiveAvgPool2d");
    auto in = test::random_tensor<float>(s, 7);
    auto y = test::run(g, in);
    REQUIRE(y.shape() == Shape{2, 33, 1, 1});
    Tensor<double> ind(s);
    for (Index i = 0; i < in.numel(); ++i) ind[i] = in[i];
    CHECK(test::max_rel_err(y, ref_adaptive(ind, 1, 1)) < 1e-6);
}

TEST_CASE("Pooling in float agrees with double", "[pool]") {
    Shape s{2, 7, 15, 12};
    auto in = test::random_tensor<double>(s, 3);
    Tensor<float> inf(s);
    for (Index i = 0; i < in.numel(); ++i) inf[i] = static_cast<float>(in[i]);
    PoolOptions o{.kernel = 3, .stride = 2, .padding = 1, .ceil_mode = true, .count_include_pad = false};
    auto gf = one_op<float>(s, [&](auto x) { return nn::avg_pool2d(nn::max_pool2d(x, "m", {.kernel = 2, .stride = 1}), "a", o); });
    auto gd = one_op<double>(s, [&](auto x) { return nn::avg_pool2d(nn::max_pool2d(x, "m", {.kernel = 2, .stride = 1}), "a", o); });
    CHECK(test::max_rel_err(test::run(gf, inf), test::run(gd, in)) < 1e-6);
}

TEST_CASE("Pooling ops rebuild from their attributes", "[pool]") {
    auto g = one_op<double>({1, 3, 9, 9}, [](auto x) {
        x = nn::max_pool2d(x, "m", {.kernel = {3, 2}, .stride = 2, .padding = 1, .dilation = 2, .ceil_mode = true});
        x = nn::avg_pool2d(x, "a", {.kernel = 2, .padding = 1, .count_include_pad = false});
        return nn::adaptive_avg_pool2d(x, "ad", {2, 3});
    });
    for (const auto& n : g.nodes()) {
        auto op = OpRegistry<double>::global().make(n.op->type(), n.op->attributes());
        CHECK(op->type() == n.op->type());
        CHECK(op->attributes() == n.op->attributes());
    }
    // stride 0 was resolved to the kernel and is stored as such
    CHECK(g.nodes()[1].op->attributes().get<std::vector<std::int64_t>>("AvgPool2d", "stride") == std::vector<std::int64_t>{2, 2});
}

TEST_CASE("Pooling rejects bad settings and inputs naming the node", "[pool]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 8, 8});
    CHECK_THROWS_WITH(nn::max_pool2d(x, "wide_pad", {.kernel = 3, .padding = 2}),
                      Catch::Contains("wide_pad") && Catch::Contains("padding"));
    CHECK_THROWS_AS(nn::avg_pool2d(x, "no_kernel", {}), ShapeError);
    CHECK_THROWS_WITH(nn::avg_pool2d(x, "dilated", {.kernel = 2, .dilation = 2}),
                      Catch::Contains("dilated") && Catch::Contains("dilation"));
    CHECK_THROWS_WITH(nn::max_pool2d(x, "huge", {.kernel = 9}), Catch::Contains("huge") && Catch::Contains("too small"));
    CHECK_THROWS_WITH(nn::adaptive_avg_pool2d(x, "zero", {0, 2}), Catch::Contains("zero"));
    auto flat = b.input("flat", {1, 12});
    CHECK_THROWS_WITH(nn::max_pool2d(flat, "rank", {.kernel = 2}), Catch::Contains("rank") && Catch::Contains("[1, 12]"));


    GraphBuilder<float> b2;
    b2.output(nn::max_pool2d(b2.input("x", {1, 3, 8, 8}), "stem_pool", {.kernel = 3, .stride = 2}));
    auto g = std::move(b2).build();
    Executor<float> ex(g);
    CHECK_THROWS_WITH(ex.forward(Tensor<float>(Shape{1, 3, 2, 2})), Catch::Contains("stem_pool") && Catch::Contains("too small"));
}

TEST_CASE("3x3 stride-1 max pooling matches the reference on flat and row planes, NaN kept to its window",
          "[pool]") {
    // Calls the kernel itself, in float and double: planes up to 32 wide with padding 1 take the
    // flat path (a 2 x 2 plane in float and padding 0 do not). A NaN at the end of one input row
    // and the start of another must reach exactly the outputs whose windows hold it, not the
    // neighbouring row that a flat column one off wraps onto.
    auto check = []<class T>(T) {
        struct Case {
            Index h, w, pad;
        };
        for (const auto& c : {Case{7, 7, 1}, Case{14, 14, 1}, Case{3, 32, 1}, Case{5, 33, 1}, Case{9, 1, 1},
                              Case{1, 9, 1}, Case{2, 2, 1}, Case{6, 5, 1}, Case{8, 9, 0}}) {
            kernels::ConvGeometry g{.in_h = c.h, .in_w = c.w, .kernel_h = 3, .kernel_w = 3, .stride_h = 1,
                                    .stride_w = 1, .pad_h = c.pad, .pad_w = c.pad};
            g.out_h = c.h + 2 * c.pad - 2, g.out_w = c.w + 2 * c.pad - 2;
            const Index planes = 3, in_n = c.h * c.w, out_n = g.out_h * g.out_w;
            auto x = test::random_tensor<T>({planes, c.h, c.w}, 5 * c.h + c.w);
            const T nan = std::numeric_limits<T>::quiet_NaN();
            x[std::min<Index>(1, c.h - 1) * c.w + c.w - 1] = nan;          // plane 0: a row's end
            x[2 * in_n + std::min<Index>(3, c.h - 1) * c.w] = nan;         // plane 2: a row's start
            Tensor<T> y(Shape{planes, g.out_h, g.out_w});
            kernels::max_pool2d(x.data(), planes, g, y.data());
            for (Index p = 0; p < planes; ++p)
                for (Index r = 0; r < g.out_h; ++r)
                    for (Index q = 0; q < g.out_w; ++q) {
                        T want = -std::numeric_limits<T>::infinity();
                        for (Index i = r - c.pad; i < r - c.pad + 3; ++i)
                            for (Index j = q - c.pad; j < q - c.pad + 3; ++j)
                                if (i >= 0 && i < c.h && j >= 0 && j < c.w) {
                                    const T v = x[p * in_n + i * c.w + j];
                                    if (want == want && (v != v || v > want)) want = v;  // NaN wins
                                }
                        const T got = y[p * out_n + r * g.out_w + q];
                        INFO((sizeof(T) == 4 ? "float" : "double") << " plane " << c.h << " x " << c.w << " pad "
                                                                    << c.pad << " output " << p << ", " << r << ", " << q);
                        REQUIRE(std::isnan(got) == std::isnan(want));
                        if (!std::isnan(want)) REQUIRE(got == want);
                    }
        }
    };
    check(0.0f);
    check(0.0);
}
