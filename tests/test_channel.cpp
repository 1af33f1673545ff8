#include "fixtures.hpp"

using namespace spade;

namespace {

// Runs a graph on several inputs and returns every output.
template <class T>
std::vector<Tensor<T>> run_all(const Graph<T>& g, const std::vector<const Tensor<T>*>& xs) {
    std::vector<TensorRef<const T>> refs;
    for (const auto* x : xs) refs.push_back(x->ref());
    Executor<T> ex(g);
    return ex.forward(std::span<const TensorRef<const T>>(refs));
}

// Element (n, c, rest) of a tensor whose axes after 1 are flattened into `rest`.
double at(const Tensor<double>& x, Index n, Index c, Index rest) {
    const Index inner = x.numel() / (x.shape()[0] * x.shape()[1]);
    return x[(n * x.shape()[1] + c) * inner + rest];
}

// Plain-loop concatenation along axis 1.
Tensor<double> ref_concat(const std::vector<const Tensor<double>*>& xs) {
    Shape s = xs[0]->shape();
    s[1] = 0;
    for (const auto* x : xs) s[1] += x->shape()[1];
    Tensor<double> y(s);
    const Index inner = xs[0]->numel() / (xs[0]->shape()[0] * xs[0]->shape()[1]);
    for (Index n = 0; n < s[0]; ++n) {
        Index c0 = 0;
        for (const auto* x : xs) {
            for (Index c = 0; c < x->shape()[1]; ++c)
                for (Index r = 0; r < inner; ++r) y[(n * s[1] + c0 + c) * inner + r] = at(*x, n, c, r);
            c0 += x->shape()[1];
        }
    }
    return y;
}

// Plain-loop channel range [start, end).
Tensor<double> ref_slice(const Tensor<double>& x, Index start, Index end) {
    Shape s = x.shape();
    s[1] = end - start;
    Tensor<double> y(s);
    const Index inner = x.numel() / (s[0] * x.shape()[1]);
    for (Index n = 0; n < s[0]; ++n)
        for (Index c = 0; c < s[1]; ++c)
            for (Index r = 0; r < inner; ++r) y[(n * s[1] + c) * inner + r] = at(x, n, start + c, r);
    return y;
}

bool same(const Tensor<double>& a, const Tensor<double>& b) { return a.shape() == b.shape() && a.values() == b.values(); }

}  // namespace

TEST_CASE("Concat joins channels of NCHW and rank-2 N x F inputs in order", "[channel]") {
    // the last base makes blocks of several 16K-element pieces, copied in one parallel loop
    for (const Shape& base : {Shape{2, 0, 5, 9}, Shape{2, 0}, Shape{1, 0, 4, 3}, Shape{2, 0, 61, 67}}) {
        std::vector<Index> chans{3, 7, 33};
        GraphBuilder<double> b;
        std::vector<Var<double>> vars;
        std::vector<Tensor<double>> data;
        for (std::size_t i = 0; i < chans.size(); ++i) {
            Shape s = base;
            s[1] = chans[i];
            vars.push_back(b.input(std::string("x").append(std::to_string(i)), s));
            data.push_back(test::random_tensor<double>(s, 10 + i));
        }
        auto cat = nn::concat(vars, "cat");
        b.output(cat);
        Shape expect = base;
        expect[1] = 43;
        CHECK(cat.shape() == expect);
        auto g = std::move(b).build();
        auto y = run_all(g, {&data[0], &data[1], &data[2]});
        INFO("base " << base);
        CHECK(same(y[0], ref_concat({&data[0], &data[1], &data[2]})));
        CHECK(count(g).macs == 0);
    }
}

TEST_CASE("Concat of a value with itself, and of a value used elsewhere", "[channel]") {
    Shape s{2, 7, 6, 11};
    GraphBuilder<double> b;
    auto x = b.input("x", s);
    auto a = nn::slice(x, "head", 0, 3);
    b.output(nn::concat({x, a, x}, "cat"));  // braced list, value repeated, DenseNet-style
    b.output(a);
    auto g = std::move(b).build();
    auto in = test::random_tensor<double>(s, 4);
    auto y = run_all(g, {&in});
    auto head = ref_slice(in, 0, 3);
    CHECK(y[0].shape() == Shape{2, 17, 6, 11});
    CHECK(same(y[0], ref_concat({&in, &head, &in})));
    CHECK(same(y[1], head));
}

TEST_CASE("Concat of one image is laid out in place: producers write into its output", "[channel]") {
    // DenseNet-style growth (every layer reads the concat of all earlier features, and
    // each concat is the next one's prefix), an inception-style concat of branches, a
    // concat of a graph input and of one value twice (both copied), a nested concat, a
    // value placed in two concats at different offsets (the later one copies), and
    // features read again after their concat; the same graph on two identical images
    // (where nothing is placed) must give the same numbers
    auto build = [](Index batch) {
        GraphBuilder<double> b(3);
        auto x = b.input("x", {batch, 3, 6, 7});
        auto stem = nn::conv2d(x, "stem", {.out_channels = 4, .kernel = 3, .padding = 1});
        std::vector<Var<double>> feats{stem};
        for (int k = 0; k < 3; ++k) {
            auto cat = nn::concat(feats, "dense" + std::to_string(k) + ".cat");
            feats.push_back(nn::conv2d(nn::relu(cat, "dense" + std::to_string(k) + ".act"),
                                       "dense" + std::to_string(k) + ".conv", {.out_channels = 2, .kernel = 3, .padding = 1}));
        }
        auto block = nn::concat(feats, "block");  // 4 + 3 * 2 = 10 channels
        auto conv = [&](const char* name, Index c) { return nn::conv2d(block, name, {.out_channels = c, .kernel = 1}); };
        auto inception = nn::concat({conv("b1", 3), conv("b2", 5)}, "inception");
        b.output(nn::concat({inception, conv("b3", 2)}, "nested"));
        auto c3 = conv("c3", 2), c4 = conv("c4", 1);
        b.output(nn::concat({c3, c4}, "p1"));  // c3 and c4 also lie in p2, the other way round
        b.output(nn::concat({c4, c3}, "p2"));
        b.output(nn::concat({x, conv("c5", 2)}, "with_input"));
        auto b6 = conv("b6", 2);
        auto twice = nn::concat({b6, b6}, "twice");
        b.output(nn::add(nn::conv2d(twice, "mix", {.out_channels = 2, .kernel = 1}), feats[1], "late"));  // feats[1] read late
        return std::move(b).build();
    };
    auto one = build(1), two = build(2);
    auto in = test::random_tensor<double>({1, 3, 6, 7}, 21);
    Tensor<double> pair(Shape{2, 3, 6, 7});
    for (Index i = 0; i < in.numel(); ++i) pair[i] = pair[in.numel() + i] = in[i];
    Executor<double> ex(one);
    auto ys = ex.forward({in.ref()});
    Executor<double> ex2(two);
    auto ys2 = ex2.forward({pair.ref()});
    for (std::size_t o = 0; o < ys.size(); ++o) {
        INFO("output " << o);
        for (Index i = 0; i < ys[o].numel(); ++i) {
            CHECK(ys[o][i] == ys2[o][i]);
            CHECK(ys[o][i] == ys2[o][ys[o].numel() + i]);
        }
    }
    // where the values lie: each dense concat is a prefix of the block, whose parts were
    // written in place; the branches lie in the inception output, which lies in the nested
    // concat; graph inputs, repeated values and a second place are copied
    const auto& p = ex.plan();
    auto where = [&](const char* node) {
        const ValueId v = one.node(one.node_id(node)).outputs[0];
        return std::pair<int, Index>{p.buffer_of[v], p.offset_of[v]};
    };
    using At = std::pair<int, Index>;
    const Index plane = 6 * 7;
    const int block = where("block").first, nested = where("nested").first, p2 = where("p2").first;
    CHECK(where("stem") == At{block, 0});
    CHECK(where("dense1.conv") == At{block, 6 * plane});
    CHECK(where("dense2.cat") == At{block, 0});
    CHECK(where("dense0.cat") == At{block, 0});
    CHECK(where("inception") == At{nested, 0});
    CHECK(where("b2") == At{nested, 3 * plane});
    CHECK(where("b3") == At{nested, 8 * plane});
    CHECK(where("c4") == At{p2, 0});
    CHECK(where("c3") == At{p2, plane});
    CHECK(where("p1").first != p2);
    CHECK(where("c5").first != where("with_input").first);
    CHECK(where("b6").first != where("twice").first);
    for (const auto* node : {"block", "nested", "p1", "p2", "with_input", "twice"}) CHECK(where(node).second == 0);
}

TEST_CASE("Split cuts channels into the given sizes", "[channel]") {
    for (const Shape& s : {Shape{2, 43, 5, 7}, Shape{2, 43}, Shape{1, 43, 9, 4}}) {
        GraphBuilder<double> b;
        auto x = b.input("x", s);
        auto parts = nn::split(x, "split", {3, 7, 33});
        REQUIRE(parts.size() == 3);
        for (auto p : parts) b.output(p);
        auto g = std::move(b).build();
        CHECK(g.value(g.outputs()[2]).name == "split:2");
        auto in = test::random_tensor<double>(s, 5);
        auto y = run_all(g, {&in});
        INFO("input " << s);
        CHECK(same(y[0], ref_slice(in, 0, 3)));
        CHECK(same(y[1], ref_slice(in, 3, 10)));
        CHECK(same(y[2], ref_slice(in, 10, 43)));
        CHECK(count(g).macs == 0);
    }
}

TEST_CASE("Split feeding Concat: in order it is the identity, reordered it permutes blocks", "[channel]") {
    Shape s{2, 33, 7, 5};
    GraphBuilder<double> b;
    auto x = b.input("x", s);
    auto p = nn::split(x, "split", {7, 3, 23});
    b.output(nn::concat(p, "same"));
    b.output(nn::concat({p[2], p[0], p[2], p[1]}, "shuffled"));
    auto g = std::move(b).build();
    auto in = test::random_tensor<double>(s, 6);
    auto y = run_all(g, {&in});
    CHECK(same(y[0], in));
    auto a = ref_slice(in, 0, 7), c = ref_slice(in, 7, 10), d = ref_slice(in, 10, 33);
    CHECK(same(y[1], ref_concat({&d, &a, &d, &c})));
}

TEST_CASE("Slice keeps a channel range", "[channel]") {
    for (const Shape& s : {Shape{2, 33, 4, 9}, Shape{2, 7}}) {
        GraphBuilder<double> b;
        auto x = b.input("x", s);
        b.output(nn::slice(x, "first", 0, 1));
        b.output(nn::slice(x, "mid", 2, 5));
        b.output(nn::slice(x, "tail", 3, s[1]));
        auto g = std::move(b).build();
        auto in = test::random_tensor<double>(s, 8);
        auto y = run_all(g, {&in});
        CHECK(same(y[0], ref_slice(in, 0, 1)));
        CHECK(same(y[1], ref_slice(in, 2, 5)));
        CHECK(same(y[2], ref_slice(in, 3, s[1])));
        CHECK(count(g).macs == 0);
    }
}

TEST_CASE("Flatten gives N x (C*H*W) in NCHW order", "[channel]") {
    Shape s{2, 7, 3, 5};
    GraphBuilder<double> b;
    auto x = b.input("x", s);
    b.output(nn::flatten(x));
    auto g = std::move(b).build();
    auto in = test::random_tensor<double>(s, 9);
    auto y = test::run(g, in);
    REQUIRE(y.shape() == Shape{2, 105});
    auto X = in.view<4>();
    auto Y = y.view<2>();
    bool ok = true;
    for (Index n = 0; n < 2; ++n)
        for (Index c = 0; c < 7; ++c)
            for (Index i = 0; i < 3; ++i)
                for (Index j = 0; j < 5; ++j) ok = ok && Y(n, (c * 3 + i) * 5 + j) == X(n, c, i, j);
    CHECK(ok);
    CHECK(count(g).macs == 0);
    // batch and spatial size may change at run time
    Tensor<double> other = test::random_tensor<double>({1, 7, 4, 2}, 3);
    CHECK(test::run(g, other).shape() == Shape{1, 56});
    // rank 2 passes through
    GraphBuilder<double> b2;
    b2.output(nn::flatten(b2.input("x", {2, 33}), "f"));
    auto g2 = std::move(b2).build();
    auto v = test::random_tensor<double>({2, 33}, 2);
    CHECK(same(test::run(g2, v), v));
}

TEST_CASE("Channel ops in float and rebuilt from attributes", "[channel]") {
    Shape s{2, 33, 3, 4};
    GraphBuilder<float> b;
    auto x = b.input("x", s);
    auto p = nn::split(x, "split", {30, 3});
    auto y = nn::concat({nn::slice(p[0], "sl", 5, 12), p[1]}, "cat");
    b.output(nn::flatten(y, "flat"));
    auto g = std::move(b).build();
    for (const auto& n : g.nodes()) {
        auto op = OpRegistry<float>::global().make(n.op->type(), n.op->attributes());
        CHECK(op->type() == n.op->type());
        CHECK(op->attributes() == n.op->attributes());
    }
    CHECK(g.nodes()[0].op->attributes().get<std::vector<std::int64_t>>("Split", "sizes") == std::vector<std::int64_t>{30, 3});
    auto in = test::random_tensor<float>(s, 1);
    auto out = test::run(g, in);
    REQUIRE(out.shape() == Shape{2, 120});
    // channel k of the result is input channel 5 + k for k < 7, then 30 + (k - 7)
    for (Index n = 0; n < 2; ++n)
        for (Index k = 0; k < 10; ++k)
            for (Index r = 0; r < 12; ++r) {
                Index src = k < 7 ? 5 + k : 23 + k;
                REQUIRE(out[n * 120 + k * 12 + r] == in[(n * 33 + src) * 12 + r]);
            }
}

TEST_CASE("Channel ops reject bad shapes naming the node", "[channel]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {2, 7, 5, 5});
    auto z = b.input("z", {2, 3, 5, 4});
    auto f = b.input("f", {2, 7});
    auto v = b.input("v", {7});
    CHECK_THROWS_WITH(nn::split(x, "bad_split", {3, 3}),
                      Catch::Contains("bad_split") && Catch::Contains("[3, 3]") && Catch::Contains("7"));
    CHECK_THROWS_AS(nn::split(x, "neg_split", {8, -1}), ShapeError);
    CHECK_THROWS_WITH(nn::split(x, "neg_split", {8, -1}), Catch::Contains("neg_split"));
    CHECK_THROWS_WITH(nn::concat({x, z}, "bad_cat"), Catch::Contains("bad_cat") && Catch::Contains("[2, 3, 5, 4]"));
    CHECK_THROWS_WITH(nn::concat({x, f}, "rank_cat"), Catch::Contains("rank_cat"));
    CHECK_THROWS_AS(nn::concat(std::vector<Var<float>>{}, "empty"), GraphError);
    CHECK_THROWS_WITH(nn::slice(x, "bad_slice", 3, 9), Catch::Contains("bad_slice") && Catch::Contains("[3, 9)"));
    CHECK_THROWS_WITH(nn::slice(x, "empty_slice", 4, 4), Catch::Contains("empty_slice"));
    CHECK_THROWS_WITH(nn::flatten(v, "flat1"), Catch::Contains("flat1") && Catch::Contains("rank"));

    // a run-time batch that differs between concat inputs
    b.output(nn::concat({x, b.input("w", {2, 3, 5, 5})}, "cat"));
    auto g = std::move(b).build();
    Executor<float> ex(g);
    Tensor<float> tx(Shape{2, 7, 5, 5}), tz(Shape{2, 3, 5, 4}), tf(Shape{2, 7}), tv(Shape{7}), tw(Shape{1, 3, 5, 5});
    std::vector<TensorRef<const float>> args{tx.ref(), tz.ref(), tf.ref(), tv.ref(), tw.ref()};
    CHECK_THROWS_WITH(ex.forward(args), Catch::Contains("'cat'") && Catch::Contains("[1, 3, 5, 5]"));
}
