// Channel surgery: in place over the caller's buffers, states follow, op
// attributes follow, strong exception guarantee, history save / load / replay.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "prune_fixtures.hpp"

using namespace spade;
using test::group_of;

namespace {

// Every parameter's shape and bytes, every value's shape, and the graph version.
template <class T>
struct Snapshot {
    std::vector<Shape> shapes, values;
    std::vector<std::vector<T>> data;
    std::uint64_t version;
    explicit Snapshot(const Graph<T>& g) : version(g.version()) {
        for (std::size_t i = 0; i < g.num_parameters(); ++i) {
            const auto& p = g.parameter(static_cast<ParamId>(i));
            shapes.push_back(p.shape());
            data.emplace_back(p.begin(), p.end());
        }
        for (const auto& v : g.values()) values.push_back(v.shape);
    }
    bool operator==(const Snapshot&) const = default;
};

// Bit-for-bit equality of two graphs' parameters.
template <class T>
bool same_bits(const Graph<T>& a, const Graph<T>& b) {
    if (a.num_parameters() != b.num_parameters()) return false;
    for (std::size_t i = 0; i < a.num_parameters(); ++i) {
        const auto& p = a.parameter(static_cast<ParamId>(i));
        const auto& q = b.parameter(p.name());
        if (p.shape() != q.shape() || std::memcmp(p.data(), q.data(), sizeof(T) * static_cast<std::size_t>(p.numel())) != 0)
            return false;
    }
    return true;
}

// Removes `units` of `grp` from a copy with those channels killed and from `g`
// itself, and checks both give the same output (the channels were dead).
void check_dead_removal(Graph<double>& g, const Group& grp, const std::vector<Index>& units, const Tensor<double>& x) {
    test::kill_units(g, grp, units);
    const auto before = test::run(g, x);
    remove_channels(g, grp, units);
    const auto after = test::run(g, x);
    REQUIRE(after.shape() == before.shape());
    CHECK(test::max_rel_err(after, before) < 1e-12);
}

}  // namespace

TEST_CASE("surgery rewrites caller-owned buffers in place; states follow the weights", "[surgery]") {
    std::vector<double> w1(4 * 2), b1{10, 11, 12, 13}, w2(3 * 4), grad(8);
    std::iota(w1.begin(), w1.end(), 0.0);
    std::iota(w2.begin(), w2.end(), 100.0);
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] = 1000.0 + static_cast<double>(i);
    Graph<double> g;
    const ValueId x = g.add_input("x", {1, 2, 3, 3});
    const ParamId pw1 = g.add_parameter(Parameter<double>::view("c1.weight", {4, 2, 1, 1}, w1.data()));
    const ParamId pb1 = g.add_parameter(Parameter<double>::view("c1.bias", {4}, b1.data()));
    const ParamId pw2 = g.add_parameter(Parameter<double>::view("c2.weight", {3, 4, 1, 1}, w2.data()));
    const NodeId n1 = g.add_node("c1", std::make_unique<Conv2d<double>>(Conv2dOptions{.out_channels = 4, .kernel = 1}),
                                 {x}, {pw1, pb1});
    const NodeId n2 = g.add_node(
        "c2", std::make_unique<Conv2d<double>>(Conv2dOptions{.out_channels = 3, .kernel = 1, .bias = false}),
        {g.node(n1).outputs[0]}, {pw2});
    g.add_output(g.node(n2).outputs[0]);
    g.parameter(pw1).attach_state("grad", grad.data());
    double* moment = g.parameter(pw1).add_state("moment");
    std::iota(moment, moment + 8, 0.0);

    Graph<double> dense = g;  // owns copies of everything, states included
    const auto groups = trace_groups(g);
    const auto& grp = group_of(groups, "c1.weight", 0);
    const auto x0 = test::random_tensor<double>({1, 2, 3, 3}, 5);
    test::kill_units(dense, group_of(trace_groups(dense), "c1.weight", 0), {1, 3});
    remove_channels(g, grp, {3, 1});

    CHECK(g.parameter(pw1).data() == w1.data());  // same buffer, leading elements hold the pruned tensor
    CHECK(g.parameter(pw1).shape() == Shape{2, 2, 1, 1});
    CHECK(std::vector<double>(w1.begin(), w1.begin() + 4) == std::vector<double>{0, 1, 4, 5});
    CHECK(std::vector<double>(b1.begin(), b1.begin() + 2) == std::vector<double>{10, 12});
    CHECK(g.parameter(pw2).shape() == Shape{3, 2, 1, 1});
    CHECK(std::vector<double>(w2.begin(), w2.begin() + 6) == std::vector<double>{100, 102, 104, 106, 108, 110});
    CHECK(std::vector<double>(grad.begin(), grad.begin() + 4) == std::vector<double>{1000, 1001, 1004, 1005});
    const double* m = g.parameter(pw1).state("moment");
    CHECK(std::vector<double>(m, m + 4) == std::vector<double>{0, 1, 4, 5});
    CHECK(g.value(g.node(n1).outputs[0]).shape == Shape{1, 2, 3, 3});
    CHECK(test::max_rel_err(test::run(g, x0), test::run(dense, x0)) < 1e-14);
}

TEST_CASE("surgery updates the attributes that count channels", "[surgery]") {
    const auto x_split = test::random_tensor<double>({1, 2, 6, 6}, 1);
    SECTION("Split sizes and Slice bounds") {
        auto g = test::coupling_graph("split");
        auto gs = trace_groups(g);
        check_dead_removal(g, group_of(gs, "a.weight", 0), {0, 3}, x_split);
        CHECK(g.node(g.node_id("sp")).op->attributes().get<std::vector<std::int64_t>>("Split", "sizes") ==
              std::vector<std::int64_t>{1, 3});
        const auto slice = g.node(g.node_id("mid")).op->attributes();
        CHECK(slice.get<Index>("Slice", "start") == 0);  // [1, 4) lost channel 3: now [0, 2)
        CHECK(slice.get<Index>("Slice", "end") == 2);
    }
    SECTION("depthwise groups follow the channels; grouped convs lose evenly") {
        auto g = test::coupling_graph("depthwise");
        auto gs = trace_groups(g);
        const auto x = test::random_tensor<double>({1, 3, 6, 6}, 2);
        check_dead_removal(g, group_of(gs, "a.weight", 0), {1, 3}, x);
        CHECK(g.node(g.node_id("dw")).op->attributes().get<Index>("Conv2d", "groups") == 2);
        CHECK(g.parameter("dw.weight").shape() == Shape{4, 1, 3, 3});
        CHECK(g.parameter("g2.weight").shape() == Shape{6, 2, 3, 3});
        auto gs2 = trace_groups(g);
        const auto& g2 = group_of(gs2, "g2.weight", 0);
        CHECK_THROWS_WITH(remove_channels(g, g2, {0, 1}), Catch::Contains("must lose equally many units"));
        check_dead_removal(g, g2, {0, 5}, x);
        CHECK(g.parameter("g2.weight").shape() == Shape{4, 2, 3, 3});
        CHECK(g.node(g.node_id("g2")).op->attributes().get<Index>("Conv2d", "groups") == 2);
    }
    SECTION("GroupNorm loses whole groups") {
        auto g = test::coupling_graph("group_norm");
        auto gs = trace_groups(g);
        check_dead_removal(g, group_of(gs, "c.weight", 0), {2}, test::random_tensor<double>({1, 3, 6, 6}, 3));
        CHECK(g.node(g.node_id("gn")).op->attributes().get<Index>("GroupNorm", "num_groups") == 3);
        CHECK(g.parameter("c.weight").shape()[0] == 6);
    }
    SECTION("transposed convs, plain and depthwise") {
        auto g = test::coupling_graph("conv_transpose");
        auto gs = trace_groups(g);
        const auto x = test::random_tensor<double>({1, 3, 5, 5}, 4);
        check_dead_removal(g, group_of(gs, "up.weight", 1), {0, 5}, x);
        CHECK(g.parameter("up.weight").shape() == Shape{4, 4, 2, 2});
        CHECK(g.node(g.node_id("dw")).op->attributes().get<Index>("ConvTranspose2d", "groups") == 4);
        auto gs2 = trace_groups(g);
        check_dead_removal(g, group_of(gs2, "gt.weight", 1), {1, 2}, x);
        CHECK(g.parameter("gt.weight").shape() == Shape{4, 1, 3, 3});
    }
}

namespace {

// A user op that accepts exactly 4 channels although its rule says it is per channel.
template <class T>
class Fussy : public OpBase<Fussy<T>, T> {
public:
    static Fussy from_attributes(const Attributes&) { return {}; }
    std::string type() const override { return "TestFussy"; }
    void channel_rule(ChannelRules& r) const override { r.per_channel(); }
    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        if (ctx.inputs[0][1] != 4) fail<ShapeError>("node '", ctx.node, "' (TestFussy): needs 4 channels, got ", ctx.inputs[0][1]);
        return {ctx.inputs[0]};
    }
    void forward(const ForwardContext<T>& ctx) const override {
        std::copy(ctx.inputs[0].data, ctx.inputs[0].data + ctx.inputs[0].numel(), ctx.outputs[0].data);
    }
};
const bool fussy_registered = register_op<Fussy>("TestFussy");

}  // namespace

TEST_CASE("surgery validates everything first: a failure leaves the graph exactly as it was", "[surgery]") {
    GraphBuilder<double> b(5);
    auto x = b.input("x", {1, 2, 4, 4});
    auto y = nn::batch_norm2d(nn::conv2d(x, "c1", {.out_channels = 4, .kernel = 3, .padding = 1}), "bn");
    y = b.apply("fussy", std::make_unique<Fussy<double>>(), {y});
    auto z = nn::conv2d(x, "c3", {.out_channels = 3, .kernel = 1});
    b.output(nn::conv2d(y, "c2", {.out_channels = 3, .kernel = 1}));
    b.output(nn::conv2d(z, "c4", {.out_channels = 2, .kernel = 1}));
    auto g = std::move(b).build();
    test::randomize(g, 6);
    const Snapshot<double> before(g);
    auto gs = trace_groups(g);
    const auto& c1 = group_of(gs, "c1.weight", 0);
    const auto& c3 = group_of(gs, "c3.weight", 0);

    // the op rejects its new shape only after the cheap checks passed, with c3 cut in the same call
    std::vector<GroupCut> cuts{{&c3, {0}}, {&c1, {2}}};
    CHECK_THROWS_WITH(remove_channels(g, std::span<const GroupCut>(cuts)),
                      Catch::Contains("channel surgery would break node 'fussy'") && Catch::Contains("needs 4 channels, got 3"));
    CHECK(Snapshot<double>(g) == before);
    CHECK_THROWS_WITH(remove_channels(g, c3, {0, 1, 2}), Catch::Contains("would leave 'c3.weight' with 0 channels"));
    CHECK_THROWS_WITH(remove_channels(g, c3, {3}), Catch::Contains("unit 3 is out of range [0, 3)"));
    CHECK_THROWS_WITH(remove_channels(g, c3, {1, 1}), Catch::Contains("unit 1 is listed twice"));
    const auto& pinned = group_of(gs, "c2.weight", 0);
    CHECK_THROWS_WITH(remove_channels(g, pinned, {0}), Catch::Contains("is not prunable") && Catch::Contains("graph output"));
    std::vector<GroupCut> twice{{&c3, {0}}, {&c3, {1}}};
    CHECK_THROWS_WITH(remove_channels(g, std::span<const GroupCut>(twice)), Catch::Contains("appears in two cuts"));
    CHECK(Snapshot<double>(g) == before);

    remove_channels(g, c3, {1});  // a good cut goes through
    CHECK(g.parameter("c3.weight").shape() == Shape{2, 2, 1, 1});
    CHECK(g.version() > before.version);
    CHECK_THROWS_WITH(remove_channels(g, c3, {0}), Catch::Contains("trace again"));  // stale group
}

TEST_CASE("pruning history saves, loads and replays to the same weights bit for bit", "[surgery][history]") {
    auto make = [] { return models::resnet18<float>({.num_classes = 10, .image_size = 32, .seed = 9}); };
    auto g = make();
    auto rep = prune_groups(g, Magnitude<1>{}, {.ratio = 0.4, .round_to = 4, .steps = 2});
    REQUIRE(rep.history.steps.size() == 2);
    const auto path = std::filesystem::temp_directory_path() / "spade_test_history.json";
    rep.history.save(path);
    const auto loaded = PruningHistory::load(path);
    CHECK(loaded == rep.history);

    auto fresh = make();
    CHECK_FALSE(same_bits(fresh, g));
    replay(fresh, loaded);
    CHECK(same_bits(fresh, g));
    for (std::size_t i = 0; i < g.nodes().size(); ++i)
        CHECK(g.node(static_cast<NodeId>(i)).op->attributes() == fresh.node(static_cast<NodeId>(i)).op->attributes());

    // a history does not replay onto another model, nor twice
    auto other = models::resnet34<float>({.num_classes = 10, .image_size = 32});
    CHECK_NOTHROW(replay(other, PruningHistory{}));
    auto wrong = loaded;
    wrong.steps[0][0].units += 1;
    auto again = make();
    CHECK_THROWS_WITH(replay(again, wrong), Catch::Contains("the history says"));
    wrong.steps[0][0].group = "nothing.weight[out]";
    CHECK_THROWS_WITH(replay(again, wrong), Catch::Contains("no group 'nothing.weight[out]'"));

    // malformed files name the file and the entry
    {
        std::ofstream os(path);
        os << R"({"format": "spade-pruning-history", "version": 1, "steps": [[{"group": "a", "units": 4, "removed": [2, 1]}]]})";
    }
    CHECK_THROWS_AS(PruningHistory::load(path), FormatError);
    CHECK_THROWS_WITH(PruningHistory::load(path), Catch::Contains("step 0, cut 0") && Catch::Contains("ascending"));
    {
        std::ofstream os(path);
        os << "{not json";
    }
    CHECK_THROWS_WITH(PruningHistory::load(path), Catch::Contains("is not valid JSON"));
    std::filesystem::remove(path);
}

TEST_CASE("surgery refuses a group traced on another graph; a state may not alias its weights", "[surgery]") {
    auto make = [](Index n) {
        GraphBuilder<double> b(1);
        auto x = b.input("x", {1, 2, 4, 4});
        b.output(nn::conv2d(nn::conv2d(x, "c1", {.out_channels = n, .kernel = 1}), "c2", {.out_channels = 3, .kernel = 1}));
        return std::move(b).build();
    };
    auto narrow = make(4), wide = make(6);
    REQUIRE(narrow.version() == wide.version());
    const auto groups = trace_groups(narrow);
    const Snapshot<double> before(wide);
    CHECK_THROWS_WITH(remove_channels(wide, group_of(groups, "c1.weight", 0), {0}),
                      Catch::Contains("'c1.weight' (4 channels) does not match the graph"));
    CHECK(Snapshot<double>(wide) == before);
    auto& w = wide.parameter("c1.weight");
    CHECK_THROWS_WITH(w.attach_state("grad", w.data() + 1), Catch::Contains("overlaps the parameter"));
    std::vector<double> grad(static_cast<std::size_t>(w.numel()));
    w.attach_state("grad", grad.data());
    CHECK_THROWS_WITH(w.attach_state("grad", grad.data()), Catch::Contains("already exists"));
}
