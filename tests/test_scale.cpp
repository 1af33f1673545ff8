#include "fixtures.hpp"

using namespace spade;

namespace {

// Odd channels, non-square, rank 2, batch 2, and one shape above the threading threshold.
const std::vector<Shape> shapes{{2, 3, 9, 7}, {1, 7, 5, 12}, {2, 33, 4, 3}, {2, 33}, {3, 7}, {2, 7, 64, 65}};

}  // namespace

TEST_CASE("Scale matches a double reference, per channel and scalar", "[scale]") {
    std::uint64_t seed = 30;
    for (bool per_channel : {true, false}) {
        for (const auto& s : shapes) {
            INFO("per_channel=" << per_channel << " shape " << s);
            GraphBuilder<double> b;
            auto x = b.input("x", s);
            b.output(nn::scale(x, "gain", {.per_channel = per_channel}));
            auto g = std::move(b).build();
            const auto& w = g.parameter("gain.weight");
            REQUIRE(w.shape() == Shape{per_channel ? s[1] : 1});
            for (double v : w) CHECK(v == 1.0);
            test::randomize(g, ++seed, -2.0, 2.0);

            auto in = test::random_tensor<double>(s, ++seed);
            Tensor<double> ref(s);
            Index plane = 1;
            for (int d = 2; d < s.rank(); ++d) plane *= s[d];
            for (Index i = 0; i < s.numel(); ++i)
                ref[i] = in[i] * (per_channel ? w.data()[(i / plane) % s[1]] : w.data()[0]);
            CHECK(test::max_rel_err(test::run(g, in), ref) < 1e-15);
            CHECK(test::node_macs(g, "gain") == s.numel());
        }
    }
}

TEST_CASE("Scale in float, on a rank-1 input with a scalar weight, and its init", "[scale]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {5});
    b.output(nn::scale(x, "s", {.per_channel = false, .init = -0.5}));
    auto g = std::move(b).build();
    REQUIRE(g.parameter("s.weight").shape() == Shape{1});
    CHECK(g.parameter("s.weight").data()[0] == -0.5f);
    Tensor<float> in(Shape{5}, std::vector<float>{1, -2, 3, 0, 8});
    auto y = test::run(g, in);
    CHECK(std::vector<float>(y.begin(), y.end()) == std::vector<float>{-0.5f, 1.f, -1.5f, -0.f, -4.f});

    GraphBuilder<float> b2;
    auto x2 = b2.input("x", {2, 3, 2, 2});
    b2.output(nn::scale(x2, "s", {.init = 0.5}));
    auto g2 = std::move(b2).build();
    for (float v : g2.parameter("s.weight")) CHECK(v == 0.5f);
    auto in2 = test::random_tensor<float>({2, 3, 2, 2}, 4);
    auto y2 = test::run(g2, in2);
    for (Index i = 0; i < in2.numel(); ++i) CHECK(y2[i] == 0.5f * in2[i]);

    auto re = OpRegistry<float>::global().make("Scale", Scale<float>(false).attributes());
    CHECK(re->type() == "Scale");
    CHECK_FALSE(dynamic_cast<Scale<float>&>(*re).per_channel());
}

TEST_CASE("Scale rejects a weight of the wrong size naming the node", "[scale]") {
    GraphBuilder<double> b;
    auto x = b.input("x", {2, 33, 4, 4});
    b.output(nn::scale(x, "layer1.0.gain"));
    auto g = std::move(b).build();
    g.parameter("layer1.0.gain.weight").shrink_to(Shape{32});
    g.touch();
    Executor<double> ex(g);
    auto in = test::random_tensor<double>({2, 33, 4, 4}, 5);
    CHECK_THROWS_AS(ex.forward(in), ShapeError);
    CHECK_THROWS_WITH(ex.forward(in),
                      Catch::Contains("layer1.0.gain") && Catch::Contains("[32]") && Catch::Contains("[33]"));

    GraphBuilder<double> b1;
    auto flat = b1.input("flat", {5});
    CHECK_THROWS_WITH(nn::scale(flat, "head.gain"), Catch::Contains("head.gain") && Catch::Contains("rank"));
}

TEST_CASE("Dropout and Identity copy their input and cost no MACs", "[scale][identity]") {
    std::uint64_t seed = 40;
    for (const auto& s : shapes) {
        INFO(s);
        GraphBuilder<double> b;
        auto x = b.input("x", s);
        auto y = nn::dropout(x, "drop", 0.2);
        b.output(nn::identity(y, "id"));
        auto g = std::move(b).build();
        auto in = test::random_tensor<double>(s, ++seed);
        auto out = test::run(g, in);
        REQUIRE(out.shape() == s);
        CHECK(std::equal(in.begin(), in.end(), out.begin()));
        CHECK(test::node_macs(g, "drop") == 0);
        CHECK(test::node_macs(g, "id") == 0);
        CHECK(g.node(0).op->type() == "Dropout");
        CHECK(g.node(1).op->type() == "Identity");
    }
}

TEST_CASE("Dropout keeps p, round-trips it and auto-names nodes", "[scale][identity]") {
    GraphBuilder<float> b;
    auto x = b.input("x", {1, 3, 4, 4});
    auto y = nn::dropout(nn::dropout(x), "", 0.0);
    b.output(nn::identity(y));
    auto g = std::move(b).build();
    REQUIRE(g.nodes().size() == 3);
    CHECK(g.nodes()[0].name.rfind("dropout", 0) == 0);
    CHECK(g.nodes()[1].name.rfind("dropout", 0) == 0);
    CHECK(g.nodes()[0].name != g.nodes()[1].name);
    CHECK(g.nodes()[2].name.rfind("identity", 0) == 0);
    CHECK(dynamic_cast<const Dropout<float>&>(*g.nodes()[0].op).p() == 0.5);
    CHECK(dynamic_cast<const Dropout<float>&>(*g.nodes()[1].op).p() == 0.0);

    auto& reg = OpRegistry<float>::global();
    auto re = reg.make("Dropout", Dropout<float>(0.3).attributes());
    CHECK(dynamic_cast<Dropout<float>&>(*re).p() == 0.3);
    CHECK(dynamic_cast<Dropout<float>&>(*reg.make("Dropout", {})).p() == 0.5);
    CHECK(reg.make("Identity", {})->type() == "Identity");
}

TEST_CASE("Dropout rejects p outside 0 <= p < 1 naming the node", "[scale][identity]") {
    for (double p : {1.0, 1.5, -0.1, std::nan("")}) {
        INFO("p = " << p);
        GraphBuilder<double> b;
        auto x = b.input("x", {2, 7, 3, 3});
        auto s = b.scope("classifier");
        CHECK_THROWS_AS(nn::dropout(x, "drop0", p), ShapeError);
        CHECK_THROWS_WITH(nn::dropout(x, "drop1", p), Catch::Contains("classifier.drop1") && Catch::Contains("p must"));
    }
    // a graph file with a bad p fails when the node is added, also naming it
    Graph<double> g;
    auto v = g.add_input("x", {2, 7});
    auto op = OpRegistry<double>::global().make("Dropout", {{"p", 2.0}});
    CHECK_THROWS_WITH(g.add_node("head.dropout", std::move(op), {v}, {}),
                      Catch::Contains("head.dropout") && Catch::Contains("2"));
}
