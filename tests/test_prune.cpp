// prune_groups: keep counts, round_to, max_ratio, local vs global, per-layer
// ratios, iterative steps, hand-counted MACs and params; importance policies
// (criteria, reductions, normalizers, a user's own) by hand.
#include "prune_fixtures.hpp"

using namespace spade;
using test::group_of;

namespace {

// x [1, 2, 4, 4] -> c1 (n channels, 3x3) -> ReLU -> c2 (3 channels, 1x1, no bias)
Graph<double> two_convs(Index n, std::uint64_t seed = 1) {
    GraphBuilder<double> b(seed);
    auto x = b.input("x", {1, 2, 4, 4});
    auto y = nn::relu(nn::conv2d(x, "c1", {.out_channels = n, .kernel = 3, .padding = 1}), "r");
    b.output(nn::conv2d(y, "c2", {.out_channels = 3, .kernel = 1, .bias = false}));
    return std::move(b).build();
}

// x -> c1 (8) -> ReLU -> c2 (8) -> ReLU -> c3 (2): two prunable groups
Graph<double> three_convs() {
    GraphBuilder<double> b(2);
    auto x = b.input("x", {1, 2, 4, 4});
    auto y = nn::relu(nn::conv2d(x, "c1", {.out_channels = 8, .kernel = 1}), "r1");
    y = nn::relu(nn::conv2d(y, "c2", {.out_channels = 8, .kernel = 1}), "r2");
    b.output(nn::conv2d(y, "c3", {.out_channels = 2, .kernel = 1}));
    return std::move(b).build();
}

// An importance written in a test: fixed scores per group root, read from a table.
struct TableImportance {
    std::map<std::string, std::vector<double>> table;
    template <Scalar T>
    std::vector<double> scores(const Graph<T>&, const Group& grp) {
        return table.at(grp.root().name);
    }
};

// A criterion written in a test: a member scores unit u as u for even units, 100 + u for odd ones.
struct OddIsBetter {
    template <Scalar T>
    std::vector<double> member_scores(const Graph<T>&, const Group& grp, const GroupMember& m) const {
        if (!m.is_param()) return {};
        std::vector<double> s(static_cast<std::size_t>(grp.units));
        for (Index u = 0; u < grp.units; ++u) s[u] = u % 2 ? 100.0 + static_cast<double>(u) : static_cast<double>(u);
        return s;
    }
};

// A normalizer written in a test: reverses the order of importance.
struct Negate {
    void operator()(std::span<double> s) const {
        for (double& x : s) x = -x;
    }
};

static_assert(Criterion<Magnitude<2>, float> && Criterion<OddIsBetter, double>);
static_assert(!Criterion<int, double> && !Criterion<TableImportance, double>);
static_assert(Importance<L2Importance, double> && Importance<TableImportance, float>);
static_assert(Reduction<MeanReduce> && Reduction<FirstReduce> && Normalizer<LampNormalize> && Normalizer<Negate>);

Index units_of(const Graph<double>& g, const std::string& param) { return g.parameter(param).shape()[0]; }

}  // namespace

TEST_CASE("prune_groups: MACs and params before and after against a hand count", "[prune]") {
    auto g = two_convs(8);
    auto rep = prune_groups(g, Magnitude<2>{}, {.ratio = 0.5});
    // conv 3x3: (2*9 + 1) MACs per output element; ReLU 1; conv 1x1 no bias: C_in per output element
    CHECK(rep.macs_before == (2 * 9 + 1) * 8 * 16 + 8 * 16 + 8 * 3 * 16);
    CHECK(rep.macs_after == (2 * 9 + 1) * 4 * 16 + 4 * 16 + 4 * 3 * 16);
    CHECK(rep.params_before == 8 * 18 + 8 + 3 * 8);
    CHECK(rep.params_after == 4 * 18 + 4 + 3 * 4);
    CHECK(rep.macs_after == total_macs(g, example_input_shapes(g)));
    CHECK(rep.params_after == count_params(g));
    REQUIRE(rep.groups.size() == 1);
    CHECK(rep.groups[0].key == "c1.weight[out]");
    CHECK(rep.groups[0].before == 8);
    CHECK(rep.groups[0].after == 4);
    CHECK(rep.table().find("c1.weight[out]") != std::string::npos);
    CHECK(test::run(g, test::random_tensor<double>({1, 2, 4, 4}, 1)).shape() == Shape{1, 3, 4, 4});
}

TEST_CASE("prune_groups: floor(n (1 - r)) units kept, then max_ratio, then round_to", "[prune]") {
    auto kept = [](PruneOptions o) {
        auto g = two_convs(10);
        prune_groups(g, Magnitude<2>{}, o);
        return units_of(g, "c1.weight");
    };
    CHECK(kept({.ratio = 0.3}) == 7);
    CHECK(kept({.ratio = 0.35}) == 6);  // floor(6.5)
    CHECK(kept({.ratio = 0.3, .round_to = 4}) == 8);
    CHECK(kept({.ratio = 0.5, .round_to = 3}) == 6);
    CHECK(kept({.ratio = 0.1, .round_to = 4}) == 10);  // 12 would exceed the 10 there are
    CHECK(kept({.ratio = 0.9, .max_ratio = 0.5}) == 5);
    CHECK(kept({.ratio = 0.99}) == 1);  // never zero
    CHECK(kept({.ratio = 0.0}) == 10);
}

TEST_CASE("prune_groups removes the least important units (L2, mean over members)", "[prune]") {
    auto g = two_convs(6);
    // row u of c1 and column u of c2 scaled by u + 1: unit u's importance grows with u
    auto& w1 = g.parameter("c1.weight");
    auto& w2 = g.parameter("c2.weight");
    for (Index u = 0; u < 6; ++u) {
        for (Index k = 0; k < 18; ++k) w1.data()[u * 18 + k] = 0.1 * static_cast<double>(u + 1);
        for (Index o = 0; o < 3; ++o) w2.data()[o * 6 + u] = 0.2 * static_cast<double>(u + 1);
    }
    const std::vector<double> bias(g.parameter("c1.bias").begin(), g.parameter("c1.bias").end());
    prune_groups(g, Magnitude<2>{}, {.ratio = 0.5});
    CHECK(g.parameter("c1.bias").shape() == Shape{3});
    CHECK(std::vector<double>(g.parameter("c1.bias").begin(), g.parameter("c1.bias").end()) ==
          std::vector<double>{bias[3], bias[4], bias[5]});
    CHECK(g.parameter("c1.weight").data()[0] == Approx(0.4));
    CHECK(g.parameter("c2.weight").data()[0] == Approx(0.8));
}

TEST_CASE("prune_groups: local pruning cuts each group by its ratio, global by one threshold", "[prune]") {
    TableImportance table{{{"c1.weight", {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}},
                           {"c2.weight", {8, 1, 7, 2, 6, 3, 5, 4}}}};
    SECTION("local") {
        auto g = three_convs();
        auto rep = prune_groups(g, table, {.ratio = 0.5});
        CHECK(units_of(g, "c1.weight") == 4);
        CHECK(units_of(g, "c2.weight") == 4);
        CHECK(rep.groups.size() == 2);
    }
    SECTION("global: the eight lowest scores overall, within max_ratio") {
        auto g = three_convs();
        const std::vector<double> c2_bias(g.parameter("c2.bias").begin(), g.parameter("c2.bias").end());
        prune_groups(g, table, {.ratio = 0.5, .global = true, .max_ratio = 0.75});
        CHECK(units_of(g, "c1.weight") == 2);  // six of the 0.1..0.8 go, max_ratio keeps two
        CHECK(units_of(g, "c2.weight") == 6);  // then the two lowest of c2: units 1 (1) and 3 (2)
        CHECK(std::vector<double>(g.parameter("c2.bias").begin(), g.parameter("c2.bias").end()) ==
              std::vector<double>{c2_bias[0], c2_bias[2], c2_bias[4], c2_bias[5], c2_bias[6], c2_bias[7]});
    }
    SECTION("per-layer and per-group ratios") {
        auto g = three_convs();
        prune_groups(g, table, {.ratio = 0.5, .layer_ratios = {{"c2", 0.25}}});
        CHECK(units_of(g, "c1.weight") == 4);
        CHECK(units_of(g, "c2.weight") == 6);
        auto g2 = three_convs();
        const auto groups = trace_groups(g2);
        const std::size_t c2_id = group_of(groups, "c2.weight", 0).id;
        prune_groups(g2, table, {.ratio = 0.5, .layer_ratios = {{"c2", 0.25}}, .group_ratios = {{c2_id, 0.75}}});
        CHECK(units_of(g2, "c2.weight") == 2);
    }
    SECTION("ignored layers keep their channels") {
        auto g = three_convs();
        auto rep = prune_groups(g, table, {.ratio = 0.5, .ignore = {"c2"}});
        CHECK(rep.groups.empty());
        CHECK(units_of(g, "c1.weight") == 8);
        CHECK(units_of(g, "c2.weight") == 8);
    }
}

TEST_CASE("prune_groups: iterative steps follow a linear schedule", "[prune]") {
    auto g = two_convs(10);
    std::vector<Index> seen;
    auto rep = prune_groups(g, Magnitude<1>{},
                            {.ratio = 0.6, .steps = 3, .after_step = [&](int) { seen.push_back(units_of(g, "c1.weight")); }});
    CHECK(seen == std::vector<Index>{8, 6, 4});
    CHECK(rep.history.steps.size() == 3);
    CHECK(rep.groups[0].before == 10);
    CHECK(rep.groups[0].after == 4);
}

TEST_CASE("prune_groups rejects bad options by name", "[prune]") {
    auto g = three_convs();
    const auto before = g.version();
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.ratio = 1.0}), Catch::Contains("ratio must be in [0, 1), got 1"));
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.round_to = 0}), Catch::Contains("round_to must be >= 1"));
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.steps = 0}), Catch::Contains("steps must be >= 1"));
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.global = true, .layer_ratios = {{"c1", 0.1}}}),
                      Catch::Contains("apply to local pruning"));
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.layer_ratios = {{"conv9", 0.1}}}),
                      Catch::Contains("no parameter is named 'conv9'"));
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.group_ratios = {{99, 0.1}}}), Catch::Contains("no group 99"));
    CHECK_THROWS_WITH(prune_groups(g, Magnitude<2>{}, {.layer_ratios = {{"c1", -0.5}}}),
                      Catch::Contains("layer_ratios['c1'] must be in [0, 1)"));
    CHECK(g.version() == before);
}

TEST_CASE("reductions and normalizers by hand", "[importance]") {
    const std::vector<double> v{2, 6, 4};
    CHECK(MeanReduce{}(v) == 4);
    CHECK(MaxReduce{}(v) == 6);
    CHECK(SumReduce{}(v) == 12);
    CHECK(ProdReduce{}(v) == 48);
    CHECK(FirstReduce{}(v) == 2);
    auto norm = [](auto n, std::vector<double> s) {
        n(std::span<double>(s));
        return s;
    };
    CHECK(norm(NoNormalize{}, {1, 3}) == std::vector<double>{1, 3});
    CHECK(norm(MeanNormalize{}, {1, 3}) == std::vector<double>{0.5, 1.5});
    CHECK(norm(MaxNormalize{}, {1, 4}) == std::vector<double>{0.25, 1});
    CHECK(norm(SumNormalize{}, {1, 3}) == std::vector<double>{0.25, 0.75});
    const auto z = norm(StandardNormalize{}, {1, 3, 5});
    CHECK(z[0] == Approx(-std::sqrt(1.5)));
    CHECK(z[1] == Approx(0).margin(1e-15));
    CHECK(z[2] == Approx(std::sqrt(1.5)));
    const auto lamp = norm(LampNormalize{}, {1, 3, 2, 4});  // s / (sum of the scores at least as large)
    CHECK(lamp[0] == Approx(1.0 / 10));
    CHECK(lamp[1] == Approx(3.0 / 7));
    CHECK(lamp[2] == Approx(2.0 / 9));
    CHECK(lamp[3] == Approx(1.0));
    CHECK(norm(MeanNormalize{}, {0, 0}) == std::vector<double>{0, 0});  // nothing to divide by: unchanged
}

TEST_CASE("magnitude scores each member's channel slices, output and input side", "[importance]") {
    GraphBuilder<double> b(3);
    auto x = b.input("x", {1, 1, 3, 3});
    auto y = nn::conv2d(x, "c1", {.out_channels = 2, .kernel = 1, .bias = false});
    b.output(nn::conv2d(y, "c2", {.out_channels = 2, .kernel = 1, .bias = false}));
    auto g = std::move(b).build();
    std::vector<double> w1{-1, 2}, w2{3, -4, 5, 6};  // c1 rows; c2 [out, in]
    std::copy(w1.begin(), w1.end(), g.parameter("c1.weight").begin());
    std::copy(w2.begin(), w2.end(), g.parameter("c2.weight").begin());
    const auto gs = trace_groups(g);
    const auto& grp = group_of(gs, "c1.weight", 0);
    Magnitude<1> l1;
    CHECK(l1.member_scores(g, grp, test::member(grp, "c1.weight", 0)) == std::vector<double>{1, 2});
    CHECK(l1.member_scores(g, grp, test::member(grp, "c2.weight", 1)) == std::vector<double>{8, 10});
    Magnitude<2> l2;
    l2.prepare(g, std::span<const Group>(gs));  // cached sums give the same numbers
    CHECK(l2.member_scores(g, grp, test::member(grp, "c2.weight", 1)) == std::vector<double>{9 + 25, 16 + 36});
    Magnitude<2> out_only(Side::output);
    CHECK(out_only.member_scores(g, grp, test::member(grp, "c2.weight", 1)).empty());
    GroupImportance<Magnitude<1>, SumReduce, NoNormalize> sum;
    CHECK(sum.scores(g, grp) == std::vector<double>{9, 12});
    GroupImportance<Magnitude<1>, MaxReduce, MaxNormalize> max;
    CHECK(max.scores(g, grp) == std::vector<double>{0.8, 1.0});
    GroupImportance<Magnitude<1>, FirstReduce, NoNormalize> first;
    CHECK(first.scores(g, grp) == std::vector<double>{1, 2});
}

TEST_CASE("a user's own criterion and normalizer plug into prune_groups", "[importance][extension]") {
    auto g = two_convs(6);
    const std::vector<double> bias(g.parameter("c1.bias").begin(), g.parameter("c1.bias").end());
    prune_groups(g, OddIsBetter{}, {.ratio = 0.5});  // a bare criterion: mean reduction, mean normalization
    CHECK(std::vector<double>(g.parameter("c1.bias").begin(), g.parameter("c1.bias").end()) ==
          std::vector<double>{bias[1], bias[3], bias[5]});
    auto g2 = two_convs(6);
    GroupImportance<OddIsBetter, MeanReduce, Negate> reversed;
    prune_groups(g2, reversed, {.ratio = 0.5});
    CHECK(std::vector<double>(g2.parameter("c1.bias").begin(), g2.parameter("c1.bias").end()) ==
          std::vector<double>{bias[0], bias[2], bias[4]});
}
