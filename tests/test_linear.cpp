#include "fixtures.hpp"

using namespace spade;

namespace {

// Plain-loop reference: y[n, o] = b[o] + sum_i W[o, i] x[n, i], in double.
template <class X, class P>
Tensor<double> ref_linear(const X& x, const P& w, const P* b) {
    const Index n = x.shape()[0], in = x.shape()[1], out = w.shape()[0];
    Tensor<double> y(Shape{n, out});
    for (Index r = 0; r < n; ++r)
        for (Index o = 0; o < out; ++o) {
            double s = b ? static_cast<double>(b->data()[o]) : 0.0;
            for (Index i = 0; i < in; ++i) s += static_cast<double>(w.data()[o * in + i]) * static_cast<double>(x[r * in + i]);
            y[r * out + o] = s;
        }
    return y;
}

template <class T>
double linear_error(Index n, Index in, const LinearOptions& o, std::uint64_t seed) {
    GraphBuilder<T> b(seed);
    auto x = b.input("x", {n, in});
    b.output(nn::linear(x, "fc", o));
    auto g = std::move(b).build();
    auto xin = test::random_tensor<T>({n, in}, seed + 100);
    auto y = test::run(g, xin);
    const auto* bias = o.bias ? &g.parameter("fc.bias") : nullptr;
    return test::max_rel_err(y, ref_linear(xin, g.parameter("fc.weight"), bias));
}

}  // namespace

TEST_CASE("Linear matches the reference on random shapes", "[linear]") {
    struct Case {
        Index n, in;
        LinearOptions o;
    };
    std::vector<Case> cases{
        {2, 7, {.out_features = 33}},
        {1, 33, {.out_features = 3, .bias = false}},
        {3, 1, {.out_features = 5}},
        {2, 200, {.out_features = 7}},
        {5, 64, {.out_features = 1, .bias = false}},
    };
    std::uint64_t seed = 1;
    for (const auto& c : cases) {
        INFO("n=" << c.n << " in=" << c.in << " out=" << c.o.out_features << " bias=" << c.o.bias);
        CHECK(linear_error<double>(c.n, c.in, c.o, ++seed) < 1e-13);
        CHECK(linear_error<float>(c.n, c.in, c.o, seed) < 1e-5);
    }
}

TEST_CASE("Linear runs at a batch size other than the example's", "[linear]") {
    GraphBuilder<double> b(3);
    auto x = b.input("x", {1, 9});
    b.output(nn::linear(x, "head", {.out_features = 4}));
    auto g = std::move(b).build();
    auto xin = test::random_tensor<double>({6, 9}, 4);
    auto y = test::run(g, xin);
    CHECK(y.shape() == Shape{6, 4});
    const auto& bias = g.parameter("head.bias");
    CHECK(test::max_rel_err(y, ref_linear(xin, g.parameter("head.weight"), &bias)) < 1e-13);
}

TEST_CASE("Linear counts MACs and params by hand", "[linear]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {2, 7});
    auto h = nn::linear(x, "fc1", {.out_features = 33});
    b.output(nn::linear(h, "fc2", {.out_features = 5, .bias = false}));
    auto g = std::move(b).build();
    auto c = count(g);
    // fc1: batch 2 * (7*33 weight + 33 bias) = 2 * 264 = 528; fc2: 2 * 33*5 = 330
    REQUIRE(c.layers.size() == 2);
    CHECK(c.layers[0].macs == 528);
    CHECK(c.layers[1].macs == 330);
    CHECK(c.macs == 858);
    // params: 7*33 + 33 + 33*5 = 231 + 33 + 165 = 429
    CHECK(c.params == 429);
}

TEST_CASE("Linear uses PyTorch's default initialisation", "[linear]") {
    GraphBuilder<double> b(11);
    auto x = b.input("x", {1, 16});
    b.output(nn::linear(x, "fc", {.out_features = 64}));
    auto g = std::move(b).build();
    const double bound = 1.0 / std::sqrt(16.0);  // U(-1/sqrt(in), 1/sqrt(in))
    for (const char* p : {"fc.weight", "fc.bias"}) {
        double m = 0;
        for (double v : g.parameter(p)) m = std::max(m, std::abs(v));
        INFO(p);
        CHECK(m <= bound);
        CHECK(m > 0.8 * bound);  // 64+ draws: the largest reaches near the bound
    }
}

TEST_CASE("Linear round-trips through the registry", "[linear]") {
    Linear<float> op({.out_features = 3, .bias = false});
    auto copy = OpRegistry<float>::global().make("Linear", op.attributes());
    CHECK(copy->type() == "Linear");
    CHECK(copy->attributes() == op.attributes());
    CHECK(copy->param_roles().size() == 1);
}

TEST_CASE("Linear rejects wrong in-features naming the node", "[linear]") {
    SECTION("weight that does not fit the input") {
        GraphBuilder<float> b;
        auto x = b.input("x", {2, 7});
        auto bad = [&](const std::string& name) {
            b.apply(name, std::make_unique<Linear<float>>(LinearOptions{.out_features = 5}), {x},
                    {{Shape{5, 8}}, {Shape{5}}});
        };
        CHECK_THROWS_AS(bad("fc"), ShapeError);
        CHECK_THROWS_WITH(bad("head"), Catch::Contains("head") && Catch::Contains("7 features") && Catch::Contains("[5, 8]"));
    }
    SECTION("weight shrunk by surgery without the producer") {
        GraphBuilder<float> b;
        auto x = b.input("x", {2, 7});
        b.output(nn::linear(x, "classifier", {.out_features = 4}));
        auto g = std::move(b).build();
        g.parameter("classifier.weight").shrink_to(Shape{4, 6});
        g.touch();
        Executor<float> ex(g);
        Tensor<float> in(Shape{2, 7});
        CHECK_THROWS_WITH(ex.forward(in), Catch::Contains("classifier") && Catch::Contains("expects 6"));
    }
    SECTION("rank-4 input") {
        GraphBuilder<float> b;
        auto x = b.input("x", {1, 3, 4, 4});
        CHECK_THROWS_WITH(nn::linear(x, "fc", {.out_features = 2}), Catch::Contains("fc") && Catch::Contains("rank 2"));
    }
}
