// Pruning every zoo model and every coupling graph: removing dead channels does
// not change the output, and random pruning always leaves a graph that runs,
// keeps its output shapes, and counts as the report says.
#include "prune_fixtures.hpp"

using namespace spade;

namespace {

// Kills about 30% of each prunable group's units, removes exactly those, and
// checks the output is unchanged.
void check_dead_channels(Graph<double> g, const std::string& name) {
    INFO(name);
    std::mt19937_64 rng(std::hash<std::string>{}(name));
    const auto inputs = example_input_shapes(g);
    std::vector<Tensor<double>> xs;
    for (std::size_t i = 0; i < inputs.size(); ++i) xs.push_back(test::random_tensor<double>(inputs[i], 100 + i));
    const auto groups = trace_groups(g);
    std::vector<GroupCut> cuts;
    for (const auto& grp : groups) {
        auto units = test::random_units(grp, 0.3, rng);
        if (units.empty()) continue;
        test::kill_units(g, grp, units);
        cuts.push_back({&grp, std::move(units)});
    }
    REQUIRE(!cuts.empty());
    std::vector<TensorRef<const double>> refs;
    for (const auto& x : xs) refs.push_back(x.ref());
    Executor<double> ex(g);
    const auto before = ex.forward(refs);
    const Index macs = total_macs(g, inputs);
    remove_channels(g, std::span<const GroupCut>(cuts));
    CHECK(total_macs(g, inputs) < macs);
    const auto after = ex.forward(refs);  // the executor replans after surgery
    REQUIRE(after.size() == before.size());
    for (std::size_t k = 0; k < after.size(); ++k) {
        REQUIRE(after[k].shape() == before[k].shape());
        CHECK(test::max_rel_err(after[k], before[k]) <= 1e-6);
    }
}

// Scores units at random: a criterion for fuzzing.
struct RandomCriterion {
    std::uint64_t seed = 1;
    template <Scalar T>
    std::vector<double> member_scores(const Graph<T>&, const Group& grp, const GroupMember& m) const {
        if (!m.is_param()) return {};
        std::mt19937_64 rng(seed * 1000003 + grp.id * 31 + static_cast<std::uint64_t>(m.id));
        std::uniform_real_distribution<double> d(0.0, 1.0);
        std::vector<double> s(static_cast<std::size_t>(grp.units));
        for (auto& x : s) x = d(rng);
        return s;
    }
};

// Prunes `g` again and again with random settings; after each round the graph runs
// with unchanged output shapes and MACs / params recounted from a rebuilt copy match the report.
void fuzz(Graph<double> g, const std::string& name, int rounds) {
    INFO(name);
    std::mt19937_64 rng(std::hash<std::string>{}(name) + 7);
    const auto inputs = example_input_shapes(g);
    std::vector<Tensor<double>> xs;
    for (std::size_t i = 0; i < inputs.size(); ++i) xs.push_back(test::random_tensor<double>(inputs[i], 200 + i));
    std::vector<TensorRef<const double>> refs;
    for (const auto& x : xs) refs.push_back(x.ref());
    Executor<double> ex(g);
    std::vector<Shape> out_shapes;
    for (const auto& y : ex.forward(refs)) out_shapes.push_back(y.shape());
    for (int round = 0; round < rounds; ++round) {
        INFO("round " << round);
        const double ratio = std::uniform_real_distribution<double>(0.05, 0.6)(rng);
        PruneOptions o{.ratio = ratio,
                       .round_to = std::vector<Index>{1, 1, 2, 4}[rng() % 4],
                       .global = rng() % 2 == 0,
                       .max_ratio = 0.9,
                       .steps = static_cast<int>(1 + rng() % 2)};
        PruneReport rep;
        switch (rng() % 3) {
            case 0: rep = prune_groups(g, RandomCriterion{rng()}, o); break;
            case 1: rep = prune_groups(g, GroupImportance<Magnitude<1>, MaxReduce, LampNormalize>{}, o); break;
            default: rep = prune_groups(g, GroupImportance<Magnitude<2>, SumReduce, StandardNormalize>{}, o); break;
        }
        const auto ys = ex.forward(refs);
        REQUIRE(ys.size() == out_shapes.size());
        for (std::size_t k = 0; k < ys.size(); ++k) {
            CHECK(ys[k].shape() == out_shapes[k]);
            for (Index i = 0; i < ys[k].numel(); ++i) REQUIRE(std::isfinite(ys[k][i]));
        }
        // a copy rebuilt from the saved architecture counts as the report says
        const auto copy = graph_from_json<double>(graph_to_json(g), name);
        CHECK(total_macs(copy, inputs) == rep.macs_after);
        CHECK(count_params(copy) == rep.params_after);
        CHECK(rep.macs_after <= rep.macs_before);
        for (const auto& gr : rep.groups) CHECK(gr.after <= gr.before);
    }
}

}  // namespace

TEST_CASE("dead channels removed from the coupling graphs leave the output unchanged", "[prune][dead]") {
    for (const auto& name : test::dead_channel_names()) check_dead_channels(test::coupling_graph(name), name);
}

TEST_CASE("dead channels removed from every zoo model leave the output unchanged", "[prune][dead][zoo]") {
    for (const auto& name : test::zoo_names()) check_dead_channels(test::zoo_model(name), name);
}

TEST_CASE("random pruning of the coupling graphs keeps them running and counted", "[prune][fuzz]") {
    for (const auto& name : test::coupling_names()) fuzz(test::coupling_graph(name), name, 25);
}

TEST_CASE("random pruning of every zoo model keeps it running and counted", "[prune][fuzz][zoo]") {
    for (const auto& name : test::zoo_names()) fuzz(test::zoo_model(name), name, name == "vgg16_bn" ? 3 : 6);
}
