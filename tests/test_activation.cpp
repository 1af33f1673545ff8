#include "fixtures.hpp"

#include <functional>

using namespace spade;

namespace {

// Shapes every activation is checked on: odd channels, non-square, rank 2, batch 2,
// and one large enough (> 32768 elements) to take the multi-threaded path.
const std::vector<Shape> shapes{{2, 3, 9, 7}, {1, 7, 5, 12}, {2, 33, 4, 3}, {2, 33}, {3, 7}, {2, 7, 64, 65}};

struct Reference {
    std::string type;
    std::function<Var<double>(Var<double>)> build_d;
    std::function<Var<float>(Var<float>)> build_f;
    std::function<double(double)> f;
};

double erf_gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double tanh_gelu(double x) {
    const double pi = 3.14159265358979323846;
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

std::vector<Reference> references() {
    return {
        {"ReLU", [](auto x) { return nn::relu(x, "act"); }, [](auto x) { return nn::relu(x, "act"); },
         [](double x) { return x > 0 ? x : 0.0; }},
        {"ReLU6", [](auto x) { return nn::relu6(x, "act"); }, [](auto x) { return nn::relu6(x, "act"); },
         [](double x) { return x < 0 ? 0.0 : (x > 6 ? 6.0 : x); }},
        {"LeakyReLU", [](auto x) { return nn::leaky_relu(x, "act"); }, [](auto x) { return nn::leaky_relu(x, "act"); },
         [](double x) { return x >= 0 ? x : 0.01 * x; }},
        {"LeakyReLU", [](auto x) { return nn::leaky_relu(x, "act", 0.2); },
         [](auto x) { return nn::leaky_relu(x, "act", 0.2); }, [](double x) { return x >= 0 ? x : 0.2 * x; }},
        {"Sigmoid", [](auto x) { return nn::sigmoid(x, "act"); }, [](auto x) { return nn::sigmoid(x, "act"); },
         [](double x) { return 1.0 / (1.0 + std::exp(-x)); }},
        {"Tanh", [](auto x) { return nn::tanh(x, "act"); }, [](auto x) { return nn::tanh(x, "act"); },
         [](double x) { return std::tanh(x); }},
        {"SiLU", [](auto x) { return nn::silu(x, "act"); }, [](auto x) { return nn::silu(x, "act"); },
         [](double x) { return x / (1.0 + std::exp(-x)); }},
        {"GELU", [](auto x) { return nn::gelu(x, "act"); }, [](auto x) { return nn::gelu(x, "act"); }, erf_gelu},
        {"GELU", [](auto x) { return nn::gelu(x, "act", true); }, [](auto x) { return nn::gelu(x, "act", true); },
         tanh_gelu},
    };
}

template <class T>
Graph<T> one_op(const Shape& s, const std::function<Var<T>(Var<T>)>& build) {
    GraphBuilder<T> b;
    auto x = b.input("x", s);
    b.output(build(x));
    return std::move(b).build();
}

}  // namespace

TEST_CASE("Activations match a double reference on random shapes", "[activation]") {
    std::uint64_t seed = 10;
    for (const auto& r : references()) {
        for (const auto& s : shapes) {
            INFO(r.type << " on " << s);
            // [-8, 8] reaches ReLU6's cap and the sigmoid tails
            auto xd = test::random_tensor<double>(s, ++seed, -8.0, 8.0);
            Tensor<double> ref(s);
            for (Index i = 0; i < s.numel(); ++i) ref[i] = r.f(xd[i]);

            auto gd = one_op<double>(s, r.build_d);
            CHECK(gd.node(0).op->type() == r.type);
            CHECK(test::max_rel_err(test::run(gd, xd), ref) < 1e-14);
            CHECK(test::node_macs(gd, "act") == s.numel());

            auto gf = one_op<float>(s, r.build_f);
            Tensor<float> xf(s);
            for (Index i = 0; i < s.numel(); ++i) xf[i] = static_cast<float>(xd[i]);
            Tensor<double> reff(s);  // reference on the float-rounded input
            for (Index i = 0; i < s.numel(); ++i) reff[i] = r.f(static_cast<double>(xf[i]));
            CHECK(test::max_rel_err(test::run(gf, xf), reff) < 1e-5);
        }
    }
}

TEST_CASE("Activations saturate without NaN at extreme inputs", "[activation]") {
    Tensor<float> x(Shape{1, 6}, std::vector<float>{-1e30f, -200.f, -0.f, 0.f, 200.f, 1e30f});
    for (const auto& r : references()) {
        INFO(r.type);
        auto y = test::run(one_op<float>(x.shape(), r.build_f), x);
        for (Index i = 0; i < x.numel(); ++i) CHECK(std::isfinite(y[i]));
    }
    auto sig = test::run(one_op<float>(x.shape(), {[](auto v) { return nn::sigmoid(v); }}), x);
    CHECK(sig[0] == 0.0f);
    CHECK(sig[5] == 1.0f);
    auto r6 = test::run(one_op<float>(x.shape(), {[](auto v) { return nn::relu6(v); }}), x);
    CHECK(r6[0] == 0.0f);
    CHECK(r6[5] == 6.0f);
}

TEST_CASE("ReLU passes NaN through like PyTorch", "[activation]") {
    Tensor<double> x(Shape{3}, std::vector<double>{std::nan(""), -1.0, 2.0});
    auto y = test::run(one_op<double>(x.shape(), {[](auto v) { return nn::relu(v); }}), x);
    CHECK(std::isnan(y[0]));
    CHECK(y[1] == 0.0);
    CHECK(y[2] == 2.0);
}

TEST_CASE("Fused ReLUs pass NaN through as the ReLU op they replace does", "[activation]") {
    std::vector<double> v{std::nan(""), -1.0, 2.0};
    apply_fused(FusedActivation::relu, v.data(), 3);
    CHECK(std::isnan(v[0]));
    CHECK(v[1] == 0.0);
    CHECK(v[2] == 2.0);
    CHECK(std::isnan(arithmetic_fn::AddRelu{}(std::nan(""), 1.0)));
    CHECK(arithmetic_fn::AddRelu{}(-3.0, 1.0) == 0.0);
}

TEST_CASE("Activation attributes round-trip through the registry", "[activation]") {
    auto& reg = OpRegistry<double>::global();
    for (const char* t : {"ReLU", "ReLU6", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "GELU", "PReLU"}) {
        INFO(t);
        REQUIRE(reg.has(t));
        CHECK(reg.make(t, {})->type() == t);
    }
    LeakyReLU<double> leaky(activation_fn::LeakyReLU{0.3});
    auto leaky2 = reg.make("LeakyReLU", leaky.attributes());
    CHECK(leaky2->attributes() == leaky.attributes());
    CHECK(dynamic_cast<LeakyReLU<double>&>(*leaky2).function().negative_slope == 0.3);
    CHECK(dynamic_cast<LeakyReLU<double>&>(*reg.make("LeakyReLU", {})).function().negative_slope == 0.01);

    GELU<double> gelu(activation_fn::GELU{true});
    CHECK(gelu.attributes() == Attributes{{"approximate", std::string("tanh")}});
    CHECK(dynamic_cast<GELU<double>&>(*reg.make("GELU", gelu.attributes())).function().tanh_approx);
    CHECK_FALSE(dynamic_cast<GELU<double>&>(*reg.make("GELU", {})).function().tanh_approx);
    CHECK_THROWS_WITH(reg.make("GELU", {{"approximate", std::string("fast")}}),
                      Catch::Contains("GELU") && Catch::Contains("fast"));

    PReLU<double> scalar(false);
    CHECK_FALSE(dynamic_cast<PReLU<double>&>(*reg.make("PReLU", scalar.attributes())).per_channel());
}

TEST_CASE("Activation builders name nodes automatically when the name is empty", "[activation]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 4, 4});
    auto y = nn::relu(nn::relu(x));
    b.output(nn::gelu(y));
    auto g = std::move(b).build();
    REQUIRE(g.nodes().size() == 3);
    CHECK(g.nodes()[0].name != g.nodes()[1].name);
    CHECK(g.nodes()[0].name.rfind("relu", 0) == 0);
    CHECK(g.nodes()[2].name.rfind("gelu", 0) == 0);
}

TEST_CASE("PReLU matches a double reference, per channel and scalar", "[activation][prelu]") {
    std::uint64_t seed = 100;
    for (bool per_channel : {true, false}) {
        for (const auto& s : shapes) {
            INFO("per_channel=" << per_channel << " shape " << s);
            GraphBuilder<double> b;
            auto x = b.input("x", s);
            b.output(nn::prelu(x, "act", {.per_channel = per_channel}));
            auto g = std::move(b).build();
            const auto& w = g.parameter("act.weight");
            REQUIRE(w.shape() == Shape{per_channel ? s[1] : 1});
            for (double v : w) CHECK(v == 0.25);
            test::randomize(g, ++seed, -1.0, 1.0);

            auto in = test::random_tensor<double>(s, ++seed);
            Tensor<double> ref(s);
            Index plane = 1;
            for (int d = 2; d < s.rank(); ++d) plane *= s[d];
            for (Index i = 0; i < s.numel(); ++i) {
                const Index c = (i / plane) % s[1];
                const double slope = per_channel ? w.data()[c] : w.data()[0];
                ref[i] = in[i] >= 0 ? in[i] : slope * in[i];
            }
            CHECK(test::max_rel_err(test::run(g, in), ref) < 1e-15);
            CHECK(test::node_macs(g, "act") == s.numel());
        }
    }
}

TEST_CASE("PReLU init and weight sharing", "[activation][prelu]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 7, 3, 5});
    Var<float> y = x;
    for (int k = 0; k < 2; ++k) {  // two unrolled iterations sharing one slope
        auto it = b.scope("iter" + std::to_string(k));
        auto share = b.param_scope("prior");
        y = nn::prelu(y, "act", {.per_channel = true, .init = 0.1});
        for (float v : b.graph().parameter("prior.act.weight")) CHECK(v == (k == 0 ? 0.1f : 0.7f));
        for (auto& v : b.graph().parameter("prior.act.weight")) v = 0.7f;  // trained in between, say
    }
    auto z = nn::prelu(y, "b", {.per_channel = false, .init = 0.5});
    b.output(z);
    auto g = std::move(b).build();
    CHECK(g.num_parameters() == 2);
    CHECK(g.node(1).params == g.node(0).params);
    REQUIRE(g.parameter("b.weight").shape() == Shape{1});
    CHECK(g.parameter("b.weight").data()[0] == 0.5f);
}

TEST_CASE("PReLU rejects a weight of the wrong size naming the node", "[activation][prelu]") {
    GraphBuilder<double> b;
    auto x = b.input("x", {2, 7, 4, 4});
    b.output(nn::prelu(x, "stage2.act"));
    auto g = std::move(b).build();
    // a botched channel surgery: the slope shrinks but the input keeps 7 channels
    g.parameter("stage2.act.weight").shrink_to(Shape{5});
    g.touch();
    Executor<double> ex(g);
    auto in = test::random_tensor<double>({2, 7, 4, 4}, 3);
    CHECK_THROWS_AS(ex.forward(in), ShapeError);
    CHECK_THROWS_WITH(ex.forward(in),
                      Catch::Contains("stage2.act") && Catch::Contains("[5]") && Catch::Contains("[7]"));

    Graph<double> h;
    auto v = h.add_input("x", {2, 7, 4, 4});
    auto p = h.add_parameter(Parameter<double>("p.weight", Shape{7}));
    CHECK_THROWS_WITH(h.add_node("p", std::make_unique<PReLU<double>>(false), {v}, {p}),
                      Catch::Contains("'p'") && Catch::Contains("[7]") && Catch::Contains("[1]"));

    GraphBuilder<double> b1;
    auto flat = b1.input("flat", {5});
    CHECK_THROWS_WITH(nn::prelu(flat, "head.act"), Catch::Contains("head.act") && Catch::Contains("rank"));
}
