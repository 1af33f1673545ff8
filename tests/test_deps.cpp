// Group structure by hand: which members each coupling kind puts together and
// how their channels map to the group's units.
#include "prune_fixtures.hpp"

using namespace spade;
using test::coupling_graph;
using test::group_of;
using test::member;
using test::param_members;
using Strings = std::vector<std::string>;
using Units = std::vector<Index>;

namespace {

Units iota(Index n, Index from = 0) {
    Units u(static_cast<std::size_t>(n));
    std::iota(u.begin(), u.end(), from);
    return u;
}

std::size_t prunable_count(const std::vector<Group>& gs) {
    return static_cast<std::size_t>(std::count_if(gs.begin(), gs.end(), [](const Group& g) { return g.prunable; }));
}

}  // namespace

TEST_CASE("trace: a chain couples each conv's output with the norms that follow and the next layer's input",
          "[deps]") {
    auto g = coupling_graph("chain");
    auto gs = trace_groups(g);
    REQUIRE(gs.size() == 4);
    const auto& c1 = group_of(gs, "c1.weight", 0);
    CHECK(c1.prunable);
    CHECK(c1.units == 4);
    CHECK(param_members(c1) == Strings{"c1.weight[out]", "c1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                       "bn1.running_var", "c2.weight[in]"});
    for (const auto& m : c1.members) CHECK(m.unit == iota(4));
    const auto& c2 = group_of(gs, "c2.weight", 0);
    CHECK(c2.units == 6);
    Strings c2_members = param_members(c2);
    std::sort(c2_members.begin(), c2_members.end());
    CHECK(c2_members == Strings{"act2.weight", "c2.weight[out]", "fc.weight[in]", "gain2.weight", "in2.bias", "in2.weight"});
    CHECK(c2.root().name == "c2.weight");
    CHECK(c2.key() == "c2.weight[out]");
    const auto& in = group_of(gs, "c1.weight", 1);
    CHECK_FALSE(in.prunable);
    CHECK(in.reason.find("'x' is a graph input") != std::string::npos);
    const auto& out = group_of(gs, "fc.weight", 0);
    CHECK_FALSE(out.prunable);
    CHECK(out.reason.find("graph output") != std::string::npos);
    // describe() names members like layer.weight[out 0..n]
    const std::string text = describe(c1);
    CHECK(text.find("c1.weight[out 0..3]") != std::string::npos);
    CHECK(text.find("c2.weight[in 0..3]") != std::string::npos);
    CHECK(describe(c2, true).find("(activation)") != std::string::npos);
}

TEST_CASE("trace: Add, Sub and Mul of equal shapes make every branch one space", "[deps]") {
    auto g = coupling_graph("residual");
    auto gs = trace_groups(g);
    const auto& s = group_of(gs, "a.weight", 0);
    CHECK(s.units == 4);
    Strings ms = param_members(s);
    std::sort(ms.begin(), ms.end());
    CHECK(ms == Strings{"a.bias", "a.weight[out]", "b1.weight[in]", "b2.bias", "b2.weight[out]", "d.bias", "d.weight[in]",
                        "d.weight[out]", "head.weight[in]"});
    CHECK(&group_of(gs, "d.weight", 1) == &s);  // a conv whose input and output are the same space
    const auto& b1 = group_of(gs, "b1.weight", 0);
    CHECK(param_members(b1) == Strings{"b1.weight[out]", "b1.bias", "b2.weight[in]"});
    CHECK(prunable_count(gs) == 2);
}

TEST_CASE("trace: Concat maps parts by offset, also a tensor with itself and a concat of a concat", "[deps]") {
    auto g = coupling_graph("concat");
    auto gs = trace_groups(g);
    const auto& grp = group_of(gs, "a.weight", 0);
    CHECK(&group_of(gs, "b.weight", 0) == &grp);
    CHECK(grp.units == 5);
    CHECK(grp.root().name == "c.weight");  // the first layer that sees all five channels
    CHECK(member(grp, "a.weight", 0).unit == Units{0, 1});
    CHECK(member(grp, "b.weight", 0).unit == Units{2, 3, 4});
    CHECK(member(grp, "c.weight", 1).unit == iota(5));
    CHECK(member(grp, "d.weight", 1).unit == Units{0, 1, 0, 1});              // cat(a, a)
    CHECK(member(grp, "e.weight", 1).unit == Units{0, 1, 2, 3, 4, 2, 3, 4});  // cat(cat(a, b), b)
    CHECK(describe(grp).find("d.weight[in 0..3] (mapped)") != std::string::npos);
    CHECK(describe(grp).find("b.weight[out 0..2] = units 2..4") != std::string::npos);
}

TEST_CASE("trace: Split and Slice map their outputs by offset into the input", "[deps]") {
    auto g = coupling_graph("split");
    auto gs = trace_groups(g);
    const auto& grp = group_of(gs, "a.weight", 0);
    CHECK(grp.units == 6);
    CHECK(grp.root().name == "a.weight");
    CHECK(member(grp, "p.weight", 1).unit == Units{2, 3, 4, 5});
    CHECK(member(grp, "q.weight", 1).unit == Units{2, 3, 4, 5, 0, 1});
    CHECK(member(grp, "r.weight", 1).unit == Units{1, 2, 3});
}

TEST_CASE("trace: Flatten maps a channel to its block of features", "[deps]") {
    auto g = coupling_graph("flatten");
    auto gs = trace_groups(g);
    const auto& grp = group_of(gs, "c.weight", 0);
    CHECK(grp.units == 4);
    Units blocks;
    for (Index f = 0; f < 64; ++f) blocks.push_back(f / 16);
    CHECK(member(grp, "fc.weight", 1).unit == blocks);
    CHECK(member(grp, "bn.running_var").unit == iota(4));
    CHECK(describe(grp).find("fc.weight[in 0..63] (16 per unit) = units 0..3") != std::string::npos);
}

TEST_CASE("trace: PixelShuffle and PixelUnshuffle move channels in blocks of r^2", "[deps]") {
    auto g = coupling_graph("pixel_shuffle");
    auto gs = trace_groups(g);
    const auto& c = group_of(gs, "c.weight", 0);
    CHECK(c.units == 3);
    Units by4;
    for (Index e = 0; e < 12; ++e) by4.push_back(e / 4);
    CHECK(member(c, "c.weight", 0).unit == by4);
    CHECK(member(c, "after.weight", 1).unit == iota(3));
    const auto& after = group_of(gs, "after.weight", 0);
    CHECK(after.units == 4);
    Units by4b;
    for (Index e = 0; e < 16; ++e) by4b.push_back(e / 4);
    CHECK(member(after, "last.weight", 1).unit == by4b);
}

TEST_CASE("trace: depthwise convs join input and output; grouped convs ask for even removal", "[deps]") {
    auto g = coupling_graph("depthwise");
    auto gs = trace_groups(g);
    const auto& a = group_of(gs, "a.weight", 0);
    CHECK(a.units == 4);
    CHECK(member(a, "dw.weight", 0).unit == Units{0, 0, 1, 1, 2, 2, 3, 3});  // multiplier 2
    CHECK(member(a, "bn.weight").unit == Units{0, 0, 1, 1, 2, 2, 3, 3});
    const auto& gin = member(a, "g2.weight", 1);
    CHECK(gin.groups == 2);
    CHECK(gin.unit == Units{0, 0, 1, 1, 2, 2, 3, 3});  // 2 conv groups x 4 columns
    CHECK(a.blocks == 2);
    CHECK(a.block == Units{0, 0, 1, 1});
    const auto& g2 = group_of(gs, "g2.weight", 0);
    CHECK(g2.units == 6);
    CHECK(g2.blocks == 2);
    CHECK(g2.block == Units{0, 0, 0, 1, 1, 1});
    CHECK(param_members(g2) == Strings{"g2.weight[out]", "g2.bias", "pw.weight[in]"});
}

TEST_CASE("trace: a [N, C, 1, 1] gate couples channels, a scalar does not", "[deps]") {
    auto g = coupling_graph("gate");
    auto gs = trace_groups(g);
    const auto& a = group_of(gs, "a.weight", 0);
    CHECK(a.prunable);
    Strings ms = param_members(a);
    std::sort(ms.begin(), ms.end());
    CHECK(ms == Strings{"a.bias", "a.weight[out]", "fc1.weight[in]", "fc2.bias", "fc2.weight[out]", "head.weight[in]"});
    const auto& fc1 = group_of(gs, "fc1.weight", 0);
    CHECK(param_members(fc1) == Strings{"fc1.weight[out]", "fc1.bias", "fc2.weight[in]"});
}

TEST_CASE("trace: GroupNorm ties each norm group's channels into one unit", "[deps]") {
    auto g = coupling_graph("group_norm");
    auto gs = trace_groups(g);
    const auto& c = group_of(gs, "c.weight", 0);
    CHECK(c.units == 4);
    CHECK(member(c, "gn.weight").unit == Units{0, 0, 1, 1, 2, 2, 3, 3});
    CHECK(member(c, "head.weight", 1).unit == Units{0, 0, 1, 1, 2, 2, 3, 3});
}

TEST_CASE("trace: LayerNorm over channels follows the channels", "[deps]") {
    auto g = coupling_graph("layer_norm");
    auto gs = trace_groups(g);
    CHECK(param_members(group_of(gs, "c.weight", 0)) ==
          Strings{"c.weight[out]", "c.bias", "ln.weight", "ln.bias", "head.weight[in]"});
}

TEST_CASE("trace: ConvTranspose2d has its weight axes swapped", "[deps]") {
    auto g = coupling_graph("conv_transpose");
    auto gs = trace_groups(g);
    CHECK(param_members(group_of(gs, "a.weight", 0)) == Strings{"a.weight[out]", "a.bias", "up.weight[in]"});
    const auto& up = group_of(gs, "up.weight", 1);
    CHECK(up.root().name == "up.weight");
    CHECK(up.root().label == "out");
    Strings ms = param_members(up);
    std::sort(ms.begin(), ms.end());
    CHECK(ms == Strings{"dw.bias", "dw.weight[in]", "gt.weight[in]", "up.bias", "up.weight[out]"});
    CHECK(up.blocks == 2);  // gt has 2 conv groups
    const auto& gt = group_of(gs, "gt.weight", 1);
    CHECK(member(gt, "gt.weight", 1).groups == 2);
    CHECK(gt.units == 4);
    CHECK(gt.blocks == 2);
}

TEST_CASE("trace: a prior shared by every unrolled iteration is one set of groups", "[deps][sharing]") {
    auto g = coupling_graph("shared_prior");
    auto gs = trace_groups(g);
    std::size_t holding_c1 = 0;
    for (const auto& grp : gs)
        for (const auto& m : grp.members) holding_c1 += m.is_param() && m.name == "prior.c1.weight" && m.axis == 0;
    CHECK(holding_c1 == 1);
    const auto& hidden = group_of(gs, "prior.c1.weight", 0);
    CHECK(hidden.prunable);
    CHECK(param_members(hidden) == Strings{"prior.c1.weight[out]", "prior.c1.bias", "prior.c2.weight[in]"});
    CHECK(prunable_count(gs) == 1);  // the image channels are the input's and the output's
    CHECK_FALSE(group_of(gs, "prior.c2.weight", 0).prunable);
}

TEST_CASE("trace: a FixedPoint's body is traced through, its iterate tied to the op's input and output", "[deps]") {
    auto g = coupling_graph("fixed_point");
    auto gs = trace_groups(g);
    const auto& hidden = group_of(gs, "deq.0.c1.weight", 0);
    CHECK(hidden.prunable);
    CHECK(hidden.units == 6);
    CHECK(param_members(hidden) == Strings{"deq.0.c1.weight[out]", "deq.0.c1.bias", "deq.0.c2.weight[in]"});
    CHECK(hidden.root().graph == 1);
    const auto& image = group_of(gs, "deq.0.c2.weight", 0);
    CHECK_FALSE(image.prunable);
    CHECK(&group_of(gs, "head.weight", 1) == &image);
}

TEST_CASE("trace: ignored nodes and parameters pin their groups; unknown names are rejected", "[deps]") {
    auto g = coupling_graph("chain");
    auto gs = trace_groups(g, {.ignore = {"bn1"}});
    const auto& c1 = group_of(gs, "c1.weight", 0);
    CHECK_FALSE(c1.prunable);
    CHECK(c1.reason.find("'bn1' (BatchNorm2d) is ignored") != std::string::npos);
    CHECK(group_of(gs, "c2.weight", 0).prunable);
    auto gs2 = trace_groups(g, {.ignore = {"gain2.weight"}});
    CHECK_FALSE(group_of(gs2, "c2.weight", 0).prunable);
    CHECK(group_of(gs2, "c2.weight", 0).reason.find("'gain2.weight' is ignored") != std::string::npos);
    CHECK_THROWS_WITH(trace_groups(g, {.ignore = {"bn9"}}), Catch::Contains("no node or parameter named 'bn9'"));
}

namespace {

// A user op written in a test: y[c] = w[c] * x[c] + x[c], with its channel rule.
template <class T>
class Gain : public OpBase<Gain<T>, T> {
public:
    static Gain from_attributes(const Attributes&) { return {}; }
    std::string type() const override { return "TestGain"; }
    std::vector<ParamRole> param_roles() const override { return {{"weight"}}; }
    void channel_rule(ChannelRules& r) const override { r.per_channel(true); }
    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("TestGain", 1);
        ctx.expect_param("TestGain", 0, "weight", Shape{ctx.inputs[0][1]});
        return {ctx.inputs[0]};
    }
    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const Index c = x.shape[1], plane = x.numel() / (x.shape[0] * c);
        for (Index i = 0; i < x.numel(); ++i)
            ctx.outputs[0].data[i] = x.data[i] * (T(1) + ctx.params[0].data[(i / plane) % c]);
    }
};
const bool gain_registered = register_op<Gain>("TestGain");

// A user op with no channel rule: everything it touches is pinned.
template <class T>
class Opaque : public OpBase<Opaque<T>, T> {
public:
    static Opaque from_attributes(const Attributes&) { return {}; }
    std::string type() const override { return "TestOpaque"; }
    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override { return {ctx.inputs[0]}; }
    void forward(const ForwardContext<T>& ctx) const override {
        std::copy(ctx.inputs[0].data, ctx.inputs[0].data + ctx.inputs[0].numel(), ctx.outputs[0].data);
    }
};
const bool opaque_registered = register_op<Opaque>("TestOpaque");

}  // namespace

TEST_CASE("trace: a user-defined op joins groups through its channel rule; one without a rule pins", "[deps][extension]") {
    GraphBuilder<double> b(3);
    auto x = b.input("x", {1, 2, 5, 5});
    auto y = nn::conv2d(x, "c1", {.out_channels = 4, .kernel = 1});
    y = b.apply("gain", std::make_unique<Gain<double>>(), {y}, {{Shape{4}, Init::zeros}});
    y = nn::conv2d(y, "c2", {.out_channels = 3, .kernel = 1});
    y = b.apply("opaque", std::make_unique<Opaque<double>>(), {y});
    b.output(nn::conv2d(y, "c3", {.out_channels = 2, .kernel = 1}));
    auto g = std::move(b).build();
    test::randomize(g, 4);
    auto gs = trace_groups(g);
    const auto& c1 = group_of(gs, "c1.weight", 0);
    CHECK(c1.prunable);
    CHECK(param_members(c1) == Strings{"c1.weight[out]", "c1.bias", "gain.weight", "c2.weight[in]"});
    const auto& c2 = group_of(gs, "c2.weight", 0);
    CHECK_FALSE(c2.prunable);
    CHECK(c2.reason.find("'opaque' (TestOpaque) has no channel rule for input 0") != std::string::npos);
    // surgery goes through the user op: its weight shrinks and the graph still runs
    auto x0 = test::random_tensor<double>({1, 2, 5, 5}, 1);
    test::kill_units(g, c1, {1, 2});
    auto before = test::run(g, x0);
    remove_channels(g, c1, {1, 2});
    CHECK(g.parameter("gain.weight").shape() == Shape{2});
    CHECK(test::max_rel_err(test::run(g, x0), before) < 1e-12);
}
