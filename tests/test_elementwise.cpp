#include "fixtures.hpp"

#include <functional>

using namespace spade;

namespace {

// General NumPy-style broadcast in double (ranks aligned at the right, extent 1
// repeats; the output shape is given, so a single element of higher rank counts
// as a scalar): more than the op accepts, so it checks the op's indexing independently.
Tensor<double> ref_broadcast(const Tensor<double>& a, const Tensor<double>& b, const Shape& out,
                             const std::function<double(double, double)>& f) {
    const int r = out.rank();
    auto strides = [r](const Shape& s) {
        std::vector<Index> st(static_cast<std::size_t>(r), 0);
        Index k = 1;
        for (int d = s.rank() - 1; d >= 0; --d) {
            const int od = d + r - s.rank();
            if (od < 0) continue;  // a leading extent 1 beyond the output's rank (single-element operand)
            st[static_cast<std::size_t>(od)] = s[d] == 1 ? 0 : k;
            k *= s[d];
        }
        return st;
    };
    const auto sa = strides(a.shape()), sb = strides(b.shape());
    Tensor<double> y(out);
    std::vector<Index> idx(static_cast<std::size_t>(r), 0);
    for (Index i = 0; i < out.numel(); ++i) {
        Index rem = i, ia = 0, ib = 0;
        for (int d = r - 1; d >= 0; --d) {
            const Index c = rem % out[d];
            rem /= out[d];
            ia += c * sa[static_cast<std::size_t>(d)];
            ib += c * sb[static_cast<std::size_t>(d)];
        }
        y[i] = f(a[ia], b[ib]);
    }
    return y;
}

struct Arith {
    std::string type;
    std::function<Var<double>(Var<double>, Var<double>)> build;
    std::function<double(double, double)> f;
};

std::vector<Arith> ops() {
    return {{"Add", [](auto a, auto b) { return nn::add(a, b, "op"); }, [](double a, double b) { return a + b; }},
            {"Sub", [](auto a, auto b) { return nn::sub(a, b, "op"); }, [](double a, double b) { return a - b; }},
            {"Mul", [](auto a, auto b) { return nn::mul(a, b, "op"); }, [](double a, double b) { return a * b; }}};
}

template <class T, class F>
Graph<T> two_inputs(const Shape& a, const Shape& b, F build) {
    GraphBuilder<T> g;
    auto x = g.input("a", a);
    auto y = g.input("b", b);
    g.output(build(x, y));
    return std::move(g).build();
}

}  // namespace

TEST_CASE("Add, Sub, Mul match a broadcasting reference", "[elementwise]") {
    struct Case {
        Shape a, b, out;
    };
    const std::vector<Case> cases{
        // equal shapes: residual connections, rank 2, and one large enough for the threaded path
        {{2, 3, 9, 7}, {2, 3, 9, 7}, {2, 3, 9, 7}},
        {{2, 33}, {2, 33}, {2, 33}},
        {{2, 7, 64, 65}, {2, 7, 64, 65}, {2, 7, 64, 65}},
        // per-channel gate on either side, batch N or 1
        {{2, 7, 5, 6}, {2, 7, 1, 1}, {2, 7, 5, 6}},
        {{2, 7, 1, 1}, {2, 7, 5, 6}, {2, 7, 5, 6}},
        {{2, 33, 4, 9}, {1, 33, 1, 1}, {2, 33, 4, 9}},
        {{1, 3, 1, 1}, {2, 3, 12, 5}, {2, 3, 12, 5}},
        {{2, 7, 64, 65}, {2, 7, 1, 1}, {2, 7, 64, 65}},
        {{1, 33, 1, 1}, {2, 33, 40, 31}, {2, 33, 40, 31}},
        // [N, C, 1, 1] against [1, C, 1, 1]: planes of one element
        {{2, 33, 1, 1}, {1, 33, 1, 1}, {2, 33, 1, 1}},
        {{1, 33, 1, 1}, {2, 33, 1, 1}, {2, 33, 1, 1}},
        // a single element on either side, any rank
        {{2, 3, 9, 7}, {1}, {2, 3, 9, 7}},
        {{1}, {2, 3, 9, 7}, {2, 3, 9, 7}},
        {{1, 1, 1, 1}, {2, 33}, {2, 33}},
        {{3, 7}, {1, 1}, {3, 7}},
        {{1}, {1, 1, 1, 1}, {1, 1, 1, 1}},
        {{2, 7, 64, 65}, {1}, {2, 7, 64, 65}},
    };
    std::uint64_t seed = 20;
    for (const auto& op : ops()) {
        for (const auto& c : cases) {
            INFO(op.type << ": " << c.a << " and " << c.b);
            auto g = two_inputs<double>(c.a, c.b, op.build);
            REQUIRE(g.value(g.outputs()[0]).shape == c.out);
            CHECK(g.node(0).op->type() == op.type);
            CHECK(test::node_macs(g, "op") == c.out.numel());
            auto a = test::random_tensor<double>(c.a, ++seed);
            auto b = test::random_tensor<double>(c.b, ++seed);
            Executor<double> ex(g);
            auto y = ex.forward({a.ref(), b.ref()});
            REQUIRE(y.size() == 1);
            CHECK(test::max_rel_err(y[0], ref_broadcast(a, b, c.out, op.f)) < 1e-15);
        }
    }
}

TEST_CASE("Elementwise ops in float agree with the double reference", "[elementwise]") {
    const Shape big{2, 7, 10, 13}, gate{1, 7, 1, 1};
    auto a = test::random_tensor<double>(big, 1), b = test::random_tensor<double>(gate, 2);
    Tensor<float> af(big), bf(gate);
    std::copy(a.begin(), a.end(), af.begin());
    std::copy(b.begin(), b.end(), bf.begin());
    auto g = two_inputs<float>(gate, big, [](auto x, auto y) { return nn::sub(x, y, "op"); });
    Executor<float> ex(g);
    auto y = ex.forward({bf.ref(), af.ref()});
    CHECK(test::max_rel_err(y[0], ref_broadcast(b, a, big, [](double p, double q) { return p - q; })) < 1e-6);
}

TEST_CASE("Elementwise builders name nodes automatically and registry rebuilds them", "[elementwise]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 4, 4});
    auto y = nn::add(x, x);
    y = nn::mul(y, nn::sub(y, x));
    b.output(y);
    auto g = std::move(b).build();
    REQUIRE(g.nodes().size() == 3);
    CHECK(g.nodes()[0].name.rfind("add", 0) == 0);
    CHECK(g.nodes()[1].name.rfind("sub", 0) == 0);
    CHECK(g.nodes()[2].name.rfind("mul", 0) == 0);
    for (const char* t : {"Add", "Sub", "Mul"}) CHECK(OpRegistry<float>::global().make(t, {})->type() == t);
}

TEST_CASE("Elementwise ops reject unsupported broadcasts naming the node and shapes", "[elementwise]") {
    struct Bad {
        Shape a, b;
        std::string a_str, b_str;
    };
    const std::vector<Bad> bad{
        {{2, 3, 4, 5}, {2, 4, 4, 5}, "[2, 3, 4, 5]", "[2, 4, 4, 5]"},  // channels differ
        {{2, 3, 4, 5}, {2, 3, 4, 1}, "[2, 3, 4, 5]", "[2, 3, 4, 1]"},  // partial spatial broadcast
        {{2, 3, 1, 1}, {3, 3, 4, 5}, "[2, 3, 1, 1]", "[3, 3, 4, 5]"},  // batch 2 against 3
        {{2, 3, 1, 1}, {1, 3, 4, 5}, "[2, 3, 1, 1]", "[1, 3, 4, 5]"},  // both sides would broadcast
        {{2, 3}, {2, 3, 4, 5}, "[2, 3]", "[2, 3, 4, 5]"},              // ranks differ
        {{3}, {2, 3}, "[3]", "[2, 3]"},
    };
    for (const auto& c : bad) {
        INFO(c.a << " and " << c.b);
        GraphBuilder<double> b;
        auto x = b.input("a", c.a);
        auto y = b.input("b", c.b);
        auto s = b.scope("block3");
        CHECK_THROWS_AS(nn::add(x, y, "fuse"), ShapeError);
        CHECK_THROWS_WITH(nn::mul(x, y, "gate"), Catch::Contains("block3.gate") && Catch::Contains("Mul") &&
                                                     Catch::Contains(c.a_str) && Catch::Contains(c.b_str));
    }
}

TEST_CASE("Elementwise ops re-check broadcasting at run time", "[elementwise]") {
    auto g = two_inputs<double>({2, 3, 4, 5}, {2, 3, 1, 1}, [](auto x, auto y) { return nn::mul(x, y, "se.scale"); });
    Executor<double> ex(g);
    auto a = test::random_tensor<double>({2, 3, 4, 5}, 1);
    auto ok = test::random_tensor<double>({2, 3, 1, 1}, 2);
    CHECK(ex.forward({a.ref(), ok.ref()})[0].shape() == Shape{2, 3, 4, 5});
    auto wrong = test::random_tensor<double>({2, 3, 4, 4}, 3);
    CHECK_THROWS_WITH(ex.forward({a.ref(), wrong.ref()}),
                      Catch::Contains("se.scale") && Catch::Contains("[2, 3, 4, 5]") && Catch::Contains("[2, 3, 4, 4]"));
}
