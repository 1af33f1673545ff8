#include "fixtures.hpp"

using namespace spade;

namespace {

// A user-defined op, written outside the library: y = a*z + b*x (two inputs).
// Registered exactly as built-in ops are.
template <class T>
class AffineMix : public OpBase<AffineMix<T>, T> {
public:
    AffineMix(double a, double b) : a_(a), b_(b) {}
    static AffineMix from_attributes(const Attributes& at) {
        return AffineMix(at.get<double>("AffineMix", "a"), at.get<double>("AffineMix", "b"));
    }
    std::string type() const override { return "AffineMix"; }
    Attributes attributes() const override { return Attributes{}.set("a", a_).set("b", b_); }
    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("AffineMix", 2);
        if (ctx.inputs[0] != ctx.inputs[1])
            fail<ShapeError>("node '", ctx.node, "' (AffineMix): shapes ", ctx.inputs[0], " and ", ctx.inputs[1], " differ");
        return {ctx.inputs[0]};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return 2 * out[0].numel(); }
    void forward(const ForwardContext<T>& ctx) const override {
        const auto &z = ctx.inputs[0], &x = ctx.inputs[1];
        for (Index i = 0; i < z.numel(); ++i)
            ctx.outputs[0].data[i] = static_cast<T>(a_) * z.data[i] + static_cast<T>(b_) * x.data[i];
    }

private:
    double a_, b_;
};

const bool affine_mix_registered = register_op<AffineMix>("AffineMix");

template <class T>
Var<T> affine_mix(Var<T> z, Var<T> x, const std::string& name, double a, double b) {
    return z.builder->apply(name, std::make_unique<AffineMix<T>>(a, b), {z, x});
}

}  // namespace

TEST_CASE("a user-defined op is built, run, counted and rebuilt through the registry", "[graph][extension]") {
    REQUIRE(affine_mix_registered);
    GraphBuilder<double> b;
    auto z = b.input("z", {1, 2, 3, 3});
    auto x = b.input("x", {1, 2, 3, 3});
    b.output(affine_mix(z, x, "mix", 0.5, 2.0));
    auto g = std::move(b).build();
    auto zt = test::random_tensor<double>({1, 2, 3, 3}, 1), xt = test::random_tensor<double>({1, 2, 3, 3}, 2);
    Executor<double> ex(g);
    auto y = ex.forward({zt.ref(), xt.ref()});
    REQUIRE(y.size() == 1);
    for (Index i = 0; i < y[0].numel(); ++i) CHECK(y[0][i] == Approx(0.5 * zt[i] + 2.0 * xt[i]));
    CHECK(count(g).macs == 36);
    auto op = OpRegistry<double>::global().make("AffineMix", g.node(0).op->attributes());
    CHECK(op->attributes() == g.node(0).op->attributes());
    CHECK_THROWS_AS(OpRegistry<double>::global().make("NoSuchOp", {}), FormatError);
    CHECK_THROWS_AS(register_op<AffineMix>("AffineMix"), GraphError);  // a name is taken once
}

TEST_CASE("graphs with several inputs and outputs; bad graphs are rejected by name", "[graph]") {
    GraphBuilder<float> b;
    auto x = b.input("image", {1, 3, 8, 8});
    auto m = b.input("measurement", {1, 3, 8, 8});
    auto y1 = nn::conv2d(x, "a", {.out_channels = 3, .padding = 1});
    auto y2 = affine_mix(y1, m, "mix", 1.0, -1.0);
    b.output(y1);
    b.output(y2);
    auto g = std::move(b).build();
    CHECK(g.inputs().size() == 2);
    CHECK(g.outputs().size() == 2);
    Executor<float> ex(g);
    auto xt = test::random_tensor<float>({1, 3, 8, 8}, 3), mt = test::random_tensor<float>({1, 3, 8, 8}, 4);
    auto out = ex.forward({xt.ref(), mt.ref()});
    for (Index i = 0; i < out[0].numel(); ++i) CHECK(out[1][i] == Approx(out[0][i] - mt[i]));
    CHECK_THROWS_WITH(ex.forward({xt.ref()}), Catch::Contains("2 input"));
    Tensor<float> wrong(Shape{1, 4, 8, 8});
    CHECK_THROWS_WITH(ex.forward({wrong.ref(), mt.ref()}), Catch::Contains("image") && Catch::Contains("[1, 4, 8, 8]"));

    GraphBuilder<float> c;
    auto v = c.input("x", {1, 3, 8, 8});
    nn::conv2d(v, "conv", {.out_channels = 4});
    CHECK_THROWS_AS(nn::conv2d(v, "conv", {.out_channels = 4}), GraphError);  // duplicate node name
    CHECK_THROWS_WITH(c.graph().value_id("nope"), Catch::Contains("nope"));
}

TEST_CASE("executor reuses activation buffers by lifetime", "[graph][exec]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 4, 16, 16});
    for (int i = 0; i < 8; ++i) x = nn::conv2d(x, "c" + std::to_string(i), {.out_channels = 4, .padding = 1});
    b.output(x);
    auto g = std::move(b).build();
    Executor<float> ex(g);
    ex.forward(test::random_tensor<float>({1, 4, 16, 16}, 1));
    // a chain needs two buffers (input of a node and its output), not eight
    CHECK(ex.plan().buffer_elements.size() == 2);
    ex.forward(test::random_tensor<float>({2, 4, 10, 12}, 1));  // new shapes: replanned
    CHECK(ex.plan().value_shapes[g.outputs()[0]] == Shape{2, 4, 10, 12});
    // profiling adds up per-node wall time over the runs that follow
    ex.set_profiling(true);
    REQUIRE(ex.node_seconds().size() == g.nodes().size());
    CHECK(std::all_of(ex.node_seconds().begin(), ex.node_seconds().end(), [](double s) { return s == 0.0; }));
    ex.forward(test::random_tensor<float>({1, 4, 16, 16}, 2));
    CHECK(std::all_of(ex.node_seconds().begin(), ex.node_seconds().end(), [](double s) { return s > 0.0; }));
}

TEST_CASE("executor reads each run's inputs and the parameters' storage of the moment", "[graph][exec]") {
    // a plan keeps what each node reads and writes; the graph input (read twice by one node
    // here) and the parameters' storage are taken afresh on every run
    GraphBuilder<double> b(2);
    auto x = b.input("x", {1, 3, 5, 4});
    auto y = nn::conv2d(x, "c", {.out_channels = 3, .padding = 1});
    b.output(nn::add(nn::add(x, x, "twice"), y, "sum"));
    auto g = std::move(b).build();
    Executor<double> ex(g);
    auto fresh = [&](const Tensor<double>& in) { return Executor<double>(g).forward(in); };
    const auto a = test::random_tensor<double>({1, 3, 5, 4}, 1), c = test::random_tensor<double>({1, 3, 5, 4}, 2);
    const auto ya = fresh(a), yc = fresh(c);
    CHECK(test::max_rel_err(ya, yc) > 0.1);
    CHECK(test::max_rel_err(ex.forward(a), ya) == 0.0);
    CHECK(test::max_rel_err(ex.forward(c), yc) == 0.0);
    // the weight replaced by new storage of the same shape: the same plan, the new values
    Parameter<double> w("c.weight", g.parameter("c.weight").shape());
    for (Index i = 0; i < w.numel(); ++i) w.data()[i] = 0.01 * static_cast<double>(i % 7) - 0.03;
    const double* old = g.parameter("c.weight").data();
    g.parameter("c.weight") = std::move(w);
    REQUIRE(g.parameter("c.weight").data() != old);
    const auto want = fresh(c);
    CHECK(test::max_rel_err(want, yc) > 0.1);
    CHECK(test::max_rel_err(ex.forward(c), want) == 0.0);
}

TEST_CASE("weight sharing: K unrolled iterations use one parameter set", "[graph][sharing]") {
    const int K = 4;
    GraphBuilder<double> b(7);
    auto x = b.input("x", {1, 2, 6, 5});
    auto z = x;
    for (int k = 0; k < K; ++k) {
        auto s = b.scope("iter" + std::to_string(k));
        auto p = b.param_scope("prior");
        z = nn::conv2d(z, "conv", {.out_channels = 2, .padding = 1});
    }
    b.output(z);
    auto g = std::move(b).build();
    CHECK(g.nodes().size() == K);
    CHECK(g.num_parameters() == 2);  // prior.conv.weight and prior.conv.bias
    CHECK(g.node(3).name == "iter3.conv");
    CHECK(g.node(0).params == g.node(3).params);
    CHECK(count(g).params == 2 * 2 * 9 + 2);  // counted once
    // same result as applying the single conv K times
    GraphBuilder<double> one;
    auto y = one.input("x", {1, 2, 6, 5});
    one.output(nn::conv2d(y, "conv", {.out_channels = 2, .padding = 1}));
    auto g1 = std::move(one).build();
    std::copy(g.parameter("prior.conv.weight").begin(), g.parameter("prior.conv.weight").end(),
              g1.parameter("conv.weight").begin());
    std::copy(g.parameter("prior.conv.bias").begin(), g.parameter("prior.conv.bias").end(),
              g1.parameter("conv.bias").begin());
    auto in = test::random_tensor<double>({1, 2, 6, 5}, 9);
    auto t = in;
    for (int k = 0; k < K; ++k) t = test::run(g1, t);
    CHECK(test::max_rel_err(test::run(g, in), t) < 1e-14);
    // a shared parameter must keep its shape
    GraphBuilder<double> bad;
    auto u = bad.input("x", {1, 2, 6, 5});
    {
        auto p = bad.param_scope("prior");
        u = nn::conv2d(u, "conv", {.out_channels = 2, .padding = 1});
    }
    auto s = bad.scope("iter1");
    auto p = bad.param_scope("prior");
    CHECK_THROWS_WITH(nn::conv2d(u, "conv", {.out_channels = 3, .padding = 1}),
                      Catch::Contains("prior.conv.weight") && Catch::Contains("[2, 2, 3, 3]"));
}

TEST_CASE("a node can take a caller-viewed parameter", "[graph]") {
    std::vector<float> w(4 * 3, 0.5f);
    Graph<float> g;
    ValueId x = g.add_input("x", {1, 3, 2, 2});
    ParamId pid = g.add_parameter(Parameter<float>::view("conv.weight", {4, 3, 1, 1}, w.data()));
    NodeId n = g.add_node("conv", std::make_unique<Conv2d<float>>(Conv2dOptions{.kernel = 1, .bias = false}), {x}, {pid});
    g.add_output(g.node(n).outputs[0]);
    CHECK_FALSE(g.parameter(pid).owns_storage());
    CHECK(g.parameter(pid).data() == w.data());
    Tensor<float> in(Shape{1, 3, 2, 2}, 1.0f);
    CHECK(test::run(g, in)[0] == Approx(1.5f));
    w[0] = 2.0f;  // the graph sees the caller's writes
    CHECK(test::run(g, in)[0] == Approx(3.0f));
    Graph<float> copy = g;
    CHECK(copy.parameter(pid).owns_storage());
    CHECK(copy.parameter(pid).data() != w.data());
    w[0] = 0.0f;
    CHECK(test::run(copy, in)[0] == Approx(3.0f));
    CHECK_THROWS_AS(Parameter<float>::view("p", {2}, nullptr), ShapeError);
    CHECK_THROWS_AS(g.add_parameter(Parameter<float>("conv.weight", {1})), GraphError);
}

TEST_CASE("FixedPoint iterates its subgraph to the analytic fixed point", "[graph][fixed_point]") {
    // body: z' = 0.5 z + 2 x  ->  z* = 4 x
    GraphBuilder<double> body;
    auto z = body.input("z", {1, 3, 4, 4});
    auto x = body.input("x", {1, 3, 4, 4});
    body.output(affine_mix(z, x, "mix", 0.5, 2.0));

    GraphBuilder<double> b;
    auto z0 = b.input("z0", {1, 3, 4, 4});
    auto xin = b.input("x", {1, 3, 4, 4});
    b.output(nn::fixed_point({z0, xin}, "deq", std::move(body).build(), {.max_iter = 200, .tol = 1e-12}));
    auto g = std::move(b).build();
    auto x0 = test::random_tensor<double>({1, 3, 4, 4}, 5);
    Tensor<double> zero(Shape{1, 3, 4, 4});
    Executor<double> ex(g);
    auto out = ex.forward({zero.ref(), x0.ref()});
    for (Index i = 0; i < x0.numel(); ++i) CHECK(out[0][i] == Approx(4 * x0[i]).margin(1e-10));
    const auto& fp = dynamic_cast<const FixedPoint<double>&>(*g.node(0).op);
    CHECK(fp.iterations() > 30);
    CHECK(fp.iterations() < 200);
    CHECK(count(g).macs == 200 * 2 * 48);  // max_iter x body MACs

    // tol = 0 runs exactly max_iter iterations: z_3 = 0.125 z0 + 2 (1 + 0.5 + 0.25) x
    Graph<double> body2 = fp.body();
    GraphBuilder<double> c;
    auto a0 = c.input("z0", {1, 3, 4, 4});
    auto a1 = c.input("x", {1, 3, 4, 4});
    c.output(nn::fixed_point({a0, a1}, "unrolled", std::move(body2), {.max_iter = 3, .tol = 0.0}));
    auto g2 = std::move(c).build();
    auto z1 = test::random_tensor<double>({1, 3, 4, 4}, 6);
    Executor<double> ex2(g2);
    auto out2 = ex2.forward({z1.ref(), x0.ref()});
    for (Index i = 0; i < x0.numel(); ++i) CHECK(out2[0][i] == Approx(0.125 * z1[i] + 3.5 * x0[i]));
    // copies carry the subgraph
    Graph<double> g3 = g2;
    Executor<double> ex3(g3);
    CHECK(test::max_rel_err(ex3.forward({z1.ref(), x0.ref()})[0], out2[0]) == 0.0);
}

TEST_CASE("a rejected node leaves the graph as it was", "[graph]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 4, 4});
    const auto params = b.graph().num_parameters();
    const auto values = b.graph().values().size();
    // a 7x7 kernel does not fit a 4x4 image: no parameter and no value may be left behind
    CHECK_THROWS_AS(nn::conv2d(x, "big", {.out_channels = 2, .kernel = 7}), ShapeError);
    CHECK(b.graph().num_parameters() == params);
    CHECK(b.graph().values().size() == values);
    CHECK_NOTHROW(nn::conv2d(x, "big", {.out_channels = 2, .kernel = 3}));  // the name is still free
    CHECK(b.graph().parameter("big.weight").shape() == Shape{2, 3, 3, 3});
}

TEST_CASE("profiling follows a graph that grew after it was switched on", "[graph][exec]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 2, 5, 5});
    auto y = nn::conv2d(x, "a", {.out_channels = 2, .padding = 1});
    b.output(y);
    auto& g = b.graph();
    Executor<float> ex(g);
    ex.set_profiling(true);
    ex.forward(test::random_tensor<float>({1, 2, 5, 5}, 3));
    nn::conv2d(y, "b", {.out_channels = 2, .padding = 1});  // one more node, plan goes stale
    ex.forward(test::random_tensor<float>({1, 2, 5, 5}, 4));
    CHECK(ex.node_seconds().size() == g.nodes().size());
}
