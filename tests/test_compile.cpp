// The inference compile step: folded and fused copies compute what the
// training graph computes, and a compiled model never runs a stale copy.
#include "io_fixtures.hpp"
#include "prune_fixtures.hpp"

using namespace spade;

namespace {

std::size_t count_type(const Graph<double>& g, const std::string& type) {
    return static_cast<std::size_t>(
        std::count_if(g.nodes().begin(), g.nodes().end(), [&](const auto& n) { return n.op->type() == type; }));
}

std::vector<Tensor<double>> inputs_for(const Graph<double>& g) {
    std::vector<Tensor<double>> xs;
    const auto shapes = example_input_shapes(g);
    for (std::size_t i = 0; i < shapes.size(); ++i) xs.push_back(test::random_tensor<double>(shapes[i], 40 + i));
    return xs;
}

std::vector<Tensor<double>> run_all(const Graph<double>& g, const std::vector<Tensor<double>>& xs) {
    std::vector<TensorRef<const double>> refs;
    for (const auto& x : xs) refs.push_back(x.ref());
    Executor<double> ex(g);
    return ex.forward(refs);
}

void check_same(const Graph<double>& a, const Graph<double>& b, double tol) {
    const auto xs = inputs_for(a);
    const auto ya = run_all(a, xs), yb = run_all(b, xs);
    REQUIRE(ya.size() == yb.size());
    for (std::size_t k = 0; k < ya.size(); ++k) {
        INFO("output " << k);
        CHECK(test::max_rel_err(yb[k], ya[k]) < tol);
    }
}

// Graph k with `units` of the channel group of axis 0 of parameter `param` cut out, killed first
// so that its outputs on xs stay the same (checked)
Graph<double> cut_channels(const Graph<double>& k, const std::string& param, const std::vector<Index>& units,
                           const std::vector<Tensor<double>>& xs) {
    auto cut = k;
    const auto groups = trace_groups(cut);
    const auto& grp = test::group_of(groups, param, 0);
    test::kill_units(cut, grp, units);
    const auto before = run_all(cut, xs);
    remove_channels(cut, grp, units);
    const auto after = run_all(cut, xs);
    for (std::size_t i = 0; i < after.size(); ++i) CHECK(test::max_rel_err(after[i], before[i]) < 1e-12);
    return cut;
}

// A 1x1 conv of `out` channels without a bias, its BatchNorm and ReLU6 (an inverted residual's expansion)
Var<double> expand(Var<double> v, const std::string& name, Index out) {
    return nn::relu6(nn::batch_norm2d(nn::conv2d(v, name, {.out_channels = out, .kernel = 1, .bias = false}), name + "_bn"),
                     name + "_act");
}

// A k x k depthwise conv of `mult` outputs per channel without a bias, its BatchNorm and ReLU6
Var<double> dw(Var<double> v, const std::string& name, Index stride, Index k = 3, Index mult = 1) {
    const Index c = v.channels();
    return nn::relu6(nn::batch_norm2d(nn::conv2d(v, name, {.out_channels = c * mult, .kernel = k, .stride = stride,
                                                           .padding = k / 2, .groups = c, .bias = false}),
                                      name + "_bn"),
                     name + "_act");
}

// Compiled graph k of h computes what h computes through executors on each of `thread_counts`,
// with and without pre-packed weights; saved and loaded, its node `fused` keeps its attributes
// and it computes the same; compiled again, it stays as it is.
void check_compiled(const Graph<double>& h, const Graph<double>& k, std::initializer_list<int> thread_counts,
                    const std::string& fused) {
    const auto xs = inputs_for(h);
    const auto want = run_all(h, xs);
    std::vector<TensorRef<const double>> refs;
    for (const auto& t : xs) refs.push_back(t.ref());
    for (const int threads : thread_counts) {
        const ThreadCountScope scope(threads);
        for (const bool prepack : {false, true}) {
            INFO("threads " << threads << " prepack " << prepack);
            Executor<double> ex(k);
            ex.set_prepack(prepack);
            const auto got = ex.forward(refs);
            for (std::size_t i = 0; i < got.size(); ++i) CHECK(test::max_rel_err(got[i], want[i]) < 1e-12);
        }
    }
    const test::TempDir dir;
    save_graph(k, dir / "k.json", dir / "k.safetensors");
    const auto again = load_graph<double>(dir / "k.json", dir / "k.safetensors");
    CHECK(again.node(again.node_id(fused)).op->attributes() == k.node(k.node_id(fused)).op->attributes());
    check_same(k, again, 1e-15);
    const auto twice = compile_for_inference(k);
    CHECK(twice.nodes().size() == k.nodes().size());
    check_same(k, twice, 1e-12);
}

}  // namespace

TEST_CASE("compile: folded and fused zoo models compute what the originals compute", "[compile][zoo]") {
    for (const auto& name : test::zoo_names()) {
        INFO(name);
        const auto g = test::zoo_model(name);
        const auto c = compile_for_inference(g);
        check_same(g, c, 1e-10);
        CHECK(total_macs(c, example_input_shapes(c)) <= total_macs(g, example_input_shapes(g)));
    }
    const auto r = test::zoo_model("resnet50");
    const auto c = compile_for_inference(r);
    CHECK(count_type(r, "BatchNorm2d") == 53);
    CHECK(count_type(c, "BatchNorm2d") == 0);  // every BN follows a conv
    CHECK(count_type(c, "ReLU") == 0);         // after a conv, or after the residual Add
    CHECK(count_type(c, "AddReLU") == 0);      // every residual Add and its ReLU join a conv
    CHECK(count_type(c, "Add") == 0);
    CHECK(count_type(c, "Conv2d") == 53);
    const auto& conv1 = static_cast<const Conv2d<double>&>(*c.node(c.node_id("conv1")).op);
    CHECK(conv1.options().activation == FusedActivation::relu);
    CHECK(conv1.options().bias);
    // the training graph is untouched
    CHECK(count_type(r, "BatchNorm2d") == 53);
    CHECK_FALSE(r.has_parameter("conv1.bias"));
}

TEST_CASE("compile: Scale and BN chains fold, ReLU6 fuses, shared readers block folding", "[compile]") {
    GraphBuilder<double> b(3);
    auto x = b.input("x", {1, 3, 6, 6});
    auto a = nn::conv2d(x, "a", {.out_channels = 4, .kernel = 3, .padding = 1, .bias = false});
    a = nn::relu6(nn::scale(nn::batch_norm2d(a, "bn_a"), "gain"), "act");
    auto c = nn::conv2d(a, "c", {.out_channels = 4, .kernel = 1});
    auto bn_c = nn::batch_norm2d(c, "bn_c");
    auto d = nn::conv2d(bn_c, "d", {.out_channels = 4, .kernel = 1});
    auto e = nn::conv2d(bn_c, "e", {.out_channels = 4, .kernel = 1});  // bn_c has two readers
    auto sum = nn::relu(nn::add(d, e, "sum"), "out_act");
    b.output(sum);
    b.output(c);  // c is also a graph output: bn_c cannot fold into it
    auto g = std::move(b).build();
    test::randomize(g, 8);
    const auto k = compile_for_inference(g);
    check_same(g, k, 1e-12);
    CHECK(count_type(k, "Scale") == 0);
    CHECK(count_type(k, "ReLU6") == 0);
    CHECK(count_type(k, "BatchNorm2d") == 1);  // bn_c stays
    // d + e then ReLU: the sum and the ReLU join d's output pass; d now runs after e, its residual
    CHECK(count_type(k, "Add") + count_type(k, "AddReLU") == 0);
    const auto& fused = static_cast<const Conv2d<double>&>(*k.node(k.node_id("d")).op).options();
    CHECK(fused.residual);
    CHECK(fused.activation == FusedActivation::relu);
    CHECK(k.node_id("d") > k.node_id("e"));
    const auto no_residual = compile_for_inference(g, {.fuse_residuals = false});
    check_same(g, no_residual, 1e-12);
    CHECK(count_type(no_residual, "AddReLU") == 1);
    CHECK(static_cast<const Conv2d<double>&>(*k.node(k.node_id("a")).op).options().activation == FusedActivation::relu6);
    // the compiled graph saves and loads with its fused activations
    const auto again = graph_from_json<double>(graph_to_json(k), "compiled");
    CHECK(again.node(again.node_id("a")).op->attributes() == k.node(k.node_id("a")).op->attributes());
    CHECK(again.node(again.node_id("d")).op->attributes() == k.node(k.node_id("d")).op->attributes());
    CHECK(compile_for_inference(g, {.fold_norms = false, .fuse_activations = false, .fuse_residuals = false}).nodes().size() ==
          g.nodes().size());
}

TEST_CASE("compile: a BatchNorm2d that cannot fold takes the ReLU after it (DenseNet)", "[compile]") {
    const auto g = test::zoo_model("densenet121");
    // outputs checked against g with the other zoo models (there with the norms in the convs' input)
    const auto k = compile_for_inference(g, {.fuse_input_norms = false});
    CHECK(count_type(g, "ReLU") == 121);
    CHECK(count_type(k, "ReLU") == 0);
    CHECK(count_type(k, "BatchNorm2d") == 62);  // norm1 of 58 layers, 3 transitions, norm5
    for (const auto& node : k.nodes())
        if (node.op->type() == "BatchNorm2d")
            CHECK(static_cast<const BatchNorm2d<double>&>(*node.op).options().activation == FusedActivation::relu);
    const auto again = graph_from_json<double>(graph_to_json(k), "compiled densenet");
    const NodeId bn = k.node_id("features.norm5");
    CHECK(again.node(again.node_id("features.norm5")).op->attributes() == k.node(bn).op->attributes());
    // a graph input's BatchNorm2d with ReLU6, by hand
    GraphBuilder<double> b(4);
    auto x = b.input("x", {2, 3, 5, 4});
    b.output(nn::conv2d(nn::relu6(nn::batch_norm2d(x, "bn"), "act"), "c", {.out_channels = 2, .kernel = 1}));
    auto h = std::move(b).build();
    test::randomize(h, 6);
    const auto hk = compile_for_inference(h, {.fuse_input_norms = false});
    check_same(h, hk, 1e-12);
    CHECK(count_type(hk, "ReLU6") == 0);
    CHECK(static_cast<const BatchNorm2d<double>&>(*hk.node(hk.node_id("bn")).op).options().activation ==
          FusedActivation::relu6);
}

TEST_CASE("compile: a BatchNorm2d and its ReLU before a 1x1 conv go into the conv's input pass", "[compile]") {
    // DenseNet: every dense layer's norm1 + relu1 joins its conv1; the transitions keep theirs
    // (their conv runs after the pooling) and so does norm5 (read by the classifier's ReLU)
    const auto g = test::zoo_model("densenet121");
    const auto k = compile_for_inference(g);
    CHECK(count_type(k, "BatchNorm2d") == 4);
    const std::string layer = "features.denseblock2.denselayer5.";
    CHECK_FALSE(k.has_node(layer + "norm1"));
    const auto& conv1 = k.node(k.node_id(layer + "conv1"));
    const auto& co = static_cast<const Conv2d<double>&>(*conv1.op).options();
    CHECK(co.input_norm);
    CHECK(co.input_activation == FusedActivation::relu);
    CHECK(co.activation == FusedActivation::relu);  // norm2 folded, relu2 fused, as before
    CHECK(conv1.params.size() == 4);                // weight, bias (norm2), input scale and shift
    CHECK(k.parameter(conv1.params[2]).shape() == Shape{128 + 4 * 32});
    CHECK_FALSE(static_cast<const Conv2d<double>&>(*k.node(k.node_id("features.transition2.conv")).op).options().input_norm);
    // the compiled graph saves and loads with its fused convs, and computes the same
    const test::TempDir dir;
    save_graph(k, dir / "k.json", dir / "k.safetensors");
    const auto again = load_graph<double>(dir / "k.json", dir / "k.safetensors");
    CHECK(again.node(again.node_id(layer + "conv1")).op->attributes() == conv1.op->attributes());
    check_same(k, again, 1e-15);  // the same weights through the same kernels
    // compiled again: convs that map their input keep the map, and keep their pooling after them
    // (DenseNet's transitions, whose norms join the convs when the pooling stays last)
    const auto kept = compile_for_inference(g, {.pool_first = false});
    CHECK(static_cast<const Conv2d<double>&>(*kept.node(kept.node_id("features.transition2.conv")).op).options().input_norm);
    const auto twice = compile_for_inference(kept);
    CHECK(twice.node_id("features.transition2.pool") > twice.node_id("features.transition2.conv"));
    check_same(kept, twice, 1e-10);

    // by hand (the executor without packed weights: the whole input mapped first, then the GEMM):
    // ReLU6, none and ReLU, an affine and a plain norm, with and without the conv's bias; a second
    // reader, a 3x3 or grouped conv, or a pooling run first keep the norm apart
    GraphBuilder<double> b(5);
    auto x = b.input("x", {2, 6, 7, 9});
    auto fused_relu6 = nn::conv2d(nn::relu6(nn::batch_norm2d(x, "n1"), "a1"), "c1", {.out_channels = 5, .kernel = 1});
    auto fused_none = nn::conv2d(nn::batch_norm2d(x, "n2", {.affine = false}), "c2", {.out_channels = 3, .kernel = 1, .bias = false});
    auto norm3 = nn::relu(nn::batch_norm2d(x, "n3"), "a3");
    auto read_twice = nn::add(nn::conv2d(norm3, "c3", {.out_channels = 6, .kernel = 1}), norm3, "sum3");
    auto three = nn::conv2d(nn::relu(nn::batch_norm2d(x, "n4"), "a4"), "c4", {.out_channels = 3, .kernel = 3, .padding = 1});
    auto grouped = nn::conv2d(nn::relu(nn::batch_norm2d(x, "n5"), "a5"), "c5", {.out_channels = 4, .kernel = 1, .groups = 2});
    auto pooled = nn::avg_pool2d(nn::conv2d(nn::relu(nn::batch_norm2d(x, "n6"), "a6"), "c6", {.out_channels = 3, .kernel = 1}),
                                 "p6", PoolOptions{.kernel = 2});
    auto fused_relu = nn::conv2d(nn::relu(nn::batch_norm2d(x, "n7"), "a7"), "c7", {.out_channels = 2, .kernel = 1});
    for (auto v : {fused_relu6, fused_none, read_twice, three, grouped, pooled, fused_relu}) b.output(v);
    auto h = std::move(b).build();
    test::randomize(h, 11);
    const auto hk = compile_for_inference(h);
    check_same(h, hk, 1e-12);
    for (const auto& [c, act] : std::vector<std::pair<std::string, FusedActivation>>{
             {"c1", FusedActivation::relu6}, {"c2", FusedActivation::none}, {"c7", FusedActivation::relu}}) {
        INFO(c);
        const auto& node = hk.node(hk.node_id(c));
        CHECK(static_cast<const Conv2d<double>&>(*node.op).options().input_norm);
        CHECK(static_cast<const Conv2d<double>&>(*node.op).options().input_activation == act);
        CHECK(node.inputs[0] == hk.inputs()[0]);
    }
    for (const std::string n : {"n1", "n2", "n7"}) CHECK_FALSE(hk.has_node(n));
    for (const std::string n : {"n3", "n4", "n5", "n6"}) CHECK(hk.has_node(n));
    const auto off = compile_for_inference(h, {.fuse_input_norms = false});
    CHECK(count_type(off, "BatchNorm2d") == 7);
    // a norm after such a conv, folded in a second compile: the conv keeps its input map
    GraphBuilder<double> fb(7);
    auto fx = fb.input("x", {1, 5, 6, 6});
    fb.output(nn::batch_norm2d(nn::conv2d(nn::relu(nn::batch_norm2d(fx, "n"), "a"), "c", {.out_channels = 4, .kernel = 1}),
                               "after"));
    auto fg = std::move(fb).build();
    test::randomize(fg, 13);
    const auto first = compile_for_inference(fg, {.fold_norms = false});
    CHECK(first.has_node("after"));
    const auto second = compile_for_inference(first);
    CHECK_FALSE(second.has_node("after"));
    CHECK(static_cast<const Conv2d<double>&>(*second.node(second.node_id("c")).op).options().input_norm);
    check_same(fg, second, 1e-12);

    // the pointwise kernel on packed weights (InferenceModel): a large plane, where each job maps
    // its own block of pixels, and a 7 x 7 one, where the jobs share blocks and the input is mapped
    // whole first; odd channel counts leave a partial panel of weights and a partial last step
    const ThreadCountScope two(2);  // so that the large plane has a block per job
    for (const Shape& shape : {Shape{1, 61, 40, 43}, Shape{2, 37, 7, 7}}) {
        INFO(shape);
        GraphBuilder<double> pb(6);
        auto px = pb.input("x", shape);
        pb.output(nn::conv2d(nn::relu(nn::batch_norm2d(px, "n"), "a"), "c", {.out_channels = 19, .kernel = 1}));
        auto pg = std::move(pb).build();
        test::randomize(pg, 12);
        const auto xs = inputs_for(pg);
        const auto want = run_all(pg, xs);
        InferenceModel<double> model(pg);
        CHECK(model.compiled().has_node("n") == false);
        CHECK(test::max_rel_err(model.forward(xs[0]), want[0]) < 1e-12);
    }

    // set by hand, a norm on a conv that is not 1x1 is refused with the node's name
    Graph<double> bad;
    const ValueId bx = bad.add_input("x", {1, 4, 6, 6});
    const ParamId w = bad.add_parameter(Parameter<double>("w", Shape{2, 4, 3, 3}));
    const ParamId sc = bad.add_parameter(Parameter<double>("s", Shape{4}));
    const ParamId sh = bad.add_parameter(Parameter<double>("t", Shape{4}));
    CHECK_THROWS_WITH(bad.add_node("conv3", std::make_unique<Conv2d<double>>(Conv2dOptions{.kernel = 3, .bias = false, .input_norm = true}),
                                   {bx}, {w, sc, sh}),
                      Catch::Contains("conv3") && Catch::Contains("input_norm needs a 1x1 conv"));
    CHECK_THROWS_WITH(bad.add_node("act", std::make_unique<Conv2d<double>>(Conv2dOptions{.kernel = 3, .bias = false,
                                                                                          .input_activation = FusedActivation::relu}),
                                   {bx}, {w}),
                      Catch::Contains("act") && Catch::Contains("input_activation is set without input_norm"));
    GraphBuilder<double> nb(1);
    auto nx = nb.input("x", {1, 4, 6, 6});
    CHECK_THROWS_AS(nn::conv2d(nx, "c", {.out_channels = 2, .kernel = 1, .input_norm = true}), GraphError);
}

TEST_CASE("compile: a 1x1 expansion goes into the depthwise conv that alone reads it (MobileNet-v2)", "[compile]") {
    // Built by hand: expansions with their norm and ReLU6 (or bare, without a bias) before a
    // depthwise 3x3 of stride 1 and 2 on planes of 14 rows and more fuse, also where a residual
    // Add joins the depthwise conv; a second reader of the expansion (a node or the graph's
    // output), a 5x5 or a two-output depthwise conv, a 7 x 2 plane, or the option off keep the
    // two apart. The fused graph computes what the original computes: through the executor with
    // and without pre-packed weights, on one thread and two, saved and loaded, compiled again,
    // and after channels are cut from a fused conv (surgery on the compiled graph).
    GraphBuilder<double> b(9);
    auto x = b.input("x", {2, 5, 58, 17});
    auto s1 = dw(expand(x, "e1", 13), "d1", 1);                                          // fused, bands of rows
    auto s2 = dw(expand(x, "e2", 11), "d2", 2);                                          // fused, stride 2
    auto bare = nn::conv2d(nn::conv2d(x, "e3", {.out_channels = 9, .kernel = 1, .bias = false}), "d3",
                           {.out_channels = 9, .kernel = 3, .padding = 1, .groups = 9});  // fused: no norm, no activation
    auto shared = expand(x, "e4", 6);
    auto twice = nn::add(dw(shared, "d4", 1), shared, "sum4");                           // a second reader
    auto five = dw(expand(x, "e5", 4), "d5", 1, 5);                                      // 5x5
    auto doubled = dw(expand(x, "e6", 3), "d6", 1, 3, 2);                                // two outputs per channel
    auto small = dw(expand(nn::max_pool2d(x, "p7", {.kernel = 8}), "e7", 8), "d7", 1);   // 7 x 2
    auto e8 = expand(x, "e8", 5);
    auto residual = nn::add(nn::batch_norm2d(nn::conv2d(e8, "d8", {.out_channels = 5, .kernel = 3, .padding = 1, .groups = 5,
                                                                   .bias = false}),
                                             "d8_bn"),
                            x, "sum8");                                                  // fused, with the residual
    auto e9 = expand(x, "e9", 4);                                                        // also the graph's output
    for (auto v : {s1, s2, bare, twice, five, doubled, small, residual, e9, dw(e9, "d9", 1)}) b.output(v);
    auto h = std::move(b).build();
    test::randomize(h, 21);
    const auto k = compile_for_inference(h);
    check_same(h, k, 1e-12);
    const bool fits = kernels::expand_depthwise_fits(
        kernels::ConvGeometry{.in_h = 58, .in_w = 17, .kernel_h = 3, .kernel_w = 3, .pad_h = 1, .pad_w = 1});
    for (const auto& [d, act] : std::vector<std::pair<std::string, FusedActivation>>{{"d1", FusedActivation::relu6},
                                                                                   {"d2", FusedActivation::relu6},
                                                                                   {"d3", FusedActivation::none},
                                                                                   {"d8", FusedActivation::relu6}}) {
        INFO(d);
        const auto& node = k.node(k.node_id(d));
        const auto& co = static_cast<const Conv2d<double>&>(*node.op).options();
        CHECK(co.expand_input == fits);
        if (!fits) continue;
        CHECK(co.expand_activation == act);
        CHECK(node.inputs[0] == k.inputs()[0]);
        CHECK(node.params.size() == 4u);  // weight, bias, expansion weight and bias (zero for e3)
        CHECK(static_cast<const Conv2d<double>&>(*node.op).options().residual == (d == "d8"));
        CHECK(k.parameter(node.params[2]).shape()[1] == 5);
        CHECK_FALSE(k.has_node("e" + d.substr(1)));
    }
    for (const std::string d : {"d4", "d5", "d6", "d7", "d9"}) {
        INFO(d);
        CHECK_FALSE(static_cast<const Conv2d<double>&>(*k.node(k.node_id(d)).op).options().expand_input);
        CHECK(k.has_node("e" + d.substr(1)));
    }
    CHECK(total_macs(k, example_input_shapes(k)) <= total_macs(h, example_input_shapes(h)));
    const auto off = compile_for_inference(h, {.fuse_expansions = false});
    CHECK(off.has_node("e1"));
    // the same count, but for the zero bias e3 gets to fuse: one per expanded output
    CHECK(total_macs(k, example_input_shapes(k)) ==
          total_macs(off, example_input_shapes(off)) + (fits ? 2 * 9 * 58 * 17 : 0));

    check_compiled(h, k, {1, 2}, "d1");
    // channels cut from a compiled graph: a fused conv's expanded channels (its weight, bias and
    // the expansion's rows, the projection's columns), and the input channels its expansion reads;
    // killed first, so that the output stays the same
    GraphBuilder<double> cb(10);
    auto cx = cb.input("x", {1, 6, 56, 15});
    auto stem = nn::conv2d(cx, "stem", {.out_channels = 5, .kernel = 1});
    for (const Index s : {1, 2})
        cb.output(nn::conv2d(dw(expand(stem, "ce" + std::to_string(s), 13), "cd" + std::to_string(s), s),
                             "cp" + std::to_string(s), {.out_channels = 4, .kernel = 1}));
    auto cg = std::move(cb).build();
    test::randomize(cg, 23);
    const auto ck = compile_for_inference(cg);
    const auto cxs = inputs_for(ck);
    struct Cut {
        std::string param;
        std::vector<Index> units;
        Index expanded, inputs;  // left after the cut
    };
    for (const auto& c : {Cut{"cd1.weight", {0, 5, 12}, 10, 5}, Cut{"ce2.weight", {3}, 12, 5}, Cut{"stem.weight", {1, 4}, 13, 3}}) {
        INFO(c.param);
        if (!fits) break;
        const auto cut = cut_channels(ck, c.param, c.units, cxs);
        const auto& node = cut.node(cut.node_id(c.param == "cd1.weight" ? "cd1" : "cd2"));
        const auto& co = static_cast<const Conv2d<double>&>(*node.op).options();
        CHECK(co.expand_input);
        CHECK(co.groups == c.expanded);
        CHECK(cut.parameter(node.params[2]).shape() == Shape{c.expanded, c.inputs, 1, 1});
    }

    // set by hand: on a 7 x 7 plane the conv expands into its workspace and runs the depthwise
    // conv over it (no fused kernel there without a projection to take in too: the compile step
    // leaves the two apart), computing the same; a conv that is not depthwise with one output per
    // group is refused with the node's name
    GraphBuilder<double> sb(4);
    auto sx = sb.input("x", {1, 3, 7, 7});
    sb.output(dw(expand(sx, "e", 10), "d", 1));
    auto sg = std::move(sb).build();
    test::randomize(sg, 22);
    const auto sk = compile_for_inference(sg, {.fold_norms = true});
    REQUIRE(sk.has_node("e"));  // not fused by the compile step
    const auto& e_node = sk.node(sk.node_id("e"));
    const auto& d_node = sk.node(sk.node_id("d"));
    Graph<double> manual;
    const ValueId mx = manual.add_input("x", {1, 3, 7, 7});
    const ParamId dwt = manual.add_parameter(Parameter<double>(sk.parameter(d_node.params[0])));
    const ParamId dbt = manual.add_parameter(Parameter<double>(sk.parameter(d_node.params[1])));
    const ParamId ewt = manual.add_parameter(Parameter<double>(sk.parameter(e_node.params[0])));
    const ParamId ebt = manual.add_parameter(Parameter<double>(sk.parameter(e_node.params[1])));
    auto mo = static_cast<const Conv2d<double>&>(*d_node.op).options();
    mo.expand_input = true;
    mo.expand_activation = FusedActivation::relu6;
    const NodeId md = manual.add_node("d", std::make_unique<Conv2d<double>>(mo), {mx}, {dwt, dbt, ewt, ebt});
    manual.add_output(manual.node(md).outputs[0]);
    check_same(sg, manual, 1e-12);
    auto bad = mo;
    bad.groups = 5;
    CHECK_THROWS_WITH(manual.add_node("bad", std::make_unique<Conv2d<double>>(bad), {mx}, {dwt, dbt, ewt, ebt}),
                      Catch::Contains("bad") && Catch::Contains("expand_input needs a depthwise conv"));
    auto no_expand = mo;
    no_expand.expand_input = false;
    CHECK_THROWS_WITH(manual.add_node("act", std::make_unique<Conv2d<double>>(no_expand), {mx}, {dwt, dbt}),
                      Catch::Contains("act") && Catch::Contains("expand_activation is set without expand_input"));
}

TEST_CASE("compile: the 1x1 projection after a depthwise conv with its expansion goes into that conv too", "[compile]") {
    // Inverted residual blocks built by hand: the projection (with its norm, its ReLU or the
    // residual Add; or bare, without a bias) of a fused depthwise conv whose output it alone
    // reads, on outputs of up to 56 rows, joins the conv (project_output), on a 7 x 7 plane
    // with the expansion it alone takes in. A second reader of the depthwise conv's output (at
    // 7 x 7 the expansion stays apart too), a 3x3 "projection", a 4 x 5 plane, a depthwise conv
    // with a residual of its own, or the option off keep it apart. The fused graph computes what the
    // original computes: on one, two and three threads, with and without pre-packed weights,
    // saved and loaded, compiled again, and after channels are cut from it.
    GraphBuilder<double> b(11);
    auto x = b.input("x", {2, 6, 28, 30});
    auto project = [&](Var<double> v, const std::string& name, Index out, Index k = 1) {
        return nn::batch_norm2d(nn::conv2d(v, name, {.out_channels = out, .kernel = k, .padding = k / 2, .bias = false}),
                                name + "_bn");
    };
    auto y1 = nn::add(project(dw(expand(x, "e1", 13), "d1", 1), "p1", 6), x, "sum1");               // with the residual
    auto y2 = nn::relu(project(dw(expand(y1, "e2", 11), "d2", 2), "p2", 9), "p2_act");             // stride 2, ReLU
    auto bare = nn::conv2d(nn::conv2d(nn::conv2d(y1, "e3", {.out_channels = 10, .kernel = 1, .bias = false}), "d3",
                                      {.out_channels = 10, .kernel = 3, .padding = 1, .groups = 10}),
                           "p3", {.out_channels = 4, .kernel = 1, .bias = false});                 // no norms, no bias
    auto d4 = dw(expand(y1, "e4", 7), "d4", 1);                                                    // also the graph's output
    auto y5 = project(dw(expand(y1, "e5", 5), "d5", 1), "p5", 3, 3);                               // 3x3
    auto y6 = project(dw(expand(nn::max_pool2d(y1, "pool6", {.kernel = 4}), "e6", 8), "d6", 1), "p6", 5);  // 7 x 7
    auto y8 = project(dw(expand(nn::max_pool2d(y1, "pool8", {.kernel = 6}), "e8", 8), "d8", 1), "p8", 5);  // 4 x 5
    auto d9 = dw(expand(nn::max_pool2d(y1, "pool9", {.kernel = 4}), "e9", 5), "d9", 1);  // 7 x 7, the graph's output too
    auto e7 = expand(y1, "e7", 6);
    auto d7 = nn::add(nn::batch_norm2d(nn::conv2d(e7, "d7", {.out_channels = 6, .kernel = 3, .padding = 1, .groups = 6,
                                                             .bias = false}),
                                       "d7_bn"),
                      y1, "sum7");                                                                 // the dw's own residual
    auto tail = nn::conv2d(bare, "tail", {.out_channels = 3, .kernel = 1});  // reads the block's output channels
    for (auto v : {y2, tail, project(d4, "p4", 3), d4, y5, y6, project(d7, "p7", 2), y8, project(d9, "p9", 3), d9})
        b.output(v);
    auto h = std::move(b).build();
    test::randomize(h, 31);
    const auto k = compile_for_inference(h);
    check_same(h, k, 1e-12);
    const bool fits = kernels::inverted_residual_fits(
        kernels::ConvGeometry{.in_h = 28, .in_w = 30, .out_h = 28, .out_w = 30, .kernel_h = 3, .kernel_w = 3, .pad_h = 1, .pad_w = 1});
    struct Fused {
        std::string conv;
        FusedActivation act;
        bool residual;
        Index in, expanded, out;
    };
    for (const auto& f : {Fused{"d1", FusedActivation::none, true, 6, 13, 6}, Fused{"d2", FusedActivation::relu, false, 6, 11, 9},
                          Fused{"d3", FusedActivation::none, false, 6, 10, 4}, Fused{"d6", FusedActivation::none, false, 6, 8, 5}}) {
        INFO(f.conv);
        const auto& node = k.node(k.node_id(f.conv));
        const auto& co = static_cast<const Conv2d<double>&>(*node.op).options();
        CHECK(co.project_output == fits);
        if (!fits) continue;
        CHECK(co.expand_input);
        CHECK(co.project_activation == f.act);
        CHECK(co.residual == f.residual);
        CHECK(node.inputs.size() == (f.residual ? 2u : 1u));
        REQUIRE(node.params.size() == 6u);  // weight, bias, expansion and projection weight and bias (zero for p3)
        CHECK(k.parameter(node.params[2]).shape() == Shape{f.expanded, f.in, 1, 1});
        CHECK(k.parameter(node.params[4]).shape() == Shape{f.out, f.expanded, 1, 1});
        CHECK(k.parameter(node.params[5]).shape() == Shape{f.out});
        CHECK(k.value(node.outputs[0]).shape[1] == f.out);
        CHECK_FALSE(k.has_node("p" + f.conv.substr(1)));
    }
    for (const std::string d : {"d4", "d5", "d7", "d8", "d9"}) {
        INFO(d);
        CHECK_FALSE(static_cast<const Conv2d<double>&>(*k.node(k.node_id(d)).op).options().project_output);
        CHECK(k.has_node("p" + d.substr(1)));
    }
    CHECK(k.has_node("e8"));
    CHECK(k.has_node("e9"));  // fused at 7 x 7 only with the projection
    CHECK(static_cast<const Conv2d<double>&>(*k.node(k.node_id("d5")).op).options().expand_input == fits);
    const auto off = compile_for_inference(h, {.fuse_projections = false});
    CHECK(off.has_node("p1"));
    CHECK(off.has_node("e6"));  // at 7 x 7 the expansion goes in only with the projection
    check_same(h, off, 1e-12);
    // the same count, but for the zero bias p3 gets: one per projected output
    CHECK(total_macs(k, example_input_shapes(k)) == total_macs(off, example_input_shapes(off)) + (fits ? 2 * 4 * 28 * 30 : 0));

    check_compiled(h, k, {1, 2, 3}, "d2");
    const auto xs = inputs_for(h);

    // channels cut from the compiled graph: a fused block's expanded channels (the conv's weight
    // and bias, the expansion's rows, the projection's columns) and its projected outputs (the
    // projection's rows and bias); killed first, so that the outputs stay the same
    struct Cut {
        std::string param;
        std::vector<Index> units;
        Index expanded, out;  // of d3, left after the cut
    };
    for (const auto& c : {Cut{"d3.weight", {0, 4, 9}, 7, 4}, Cut{"p3.weight", {1, 2}, 10, 2}}) {
        INFO(c.param);
        if (!fits) break;
        const auto cut = cut_channels(k, c.param, c.units, xs);
        const auto& node = cut.node(cut.node_id("d3"));
        const auto& co = static_cast<const Conv2d<double>&>(*node.op).options();
        CHECK(co.project_output);
        CHECK(co.groups == c.expanded);
        CHECK(cut.parameter(node.params[4]).shape() == Shape{c.out, c.expanded, 1, 1});
    }

    // compiled again after a compile that left a norm and a ReLU after a fused block, whose
    // depthwise conv has no activation of its own: they stay apart (they act on the projection)
    GraphBuilder<double> rb(5);
    auto rx = rb.input("x", {1, 4, 14, 14});
    auto rd = nn::conv2d(nn::conv2d(rx, "e", {.out_channels = 12, .kernel = 1}), "d",
                         {.out_channels = 12, .kernel = 3, .padding = 1, .groups = 12});
    rb.output(nn::relu(nn::batch_norm2d(nn::conv2d(rd, "p", {.out_channels = 5, .kernel = 1}), "p_bn"), "p_act"));
    auto rg = std::move(rb).build();
    test::randomize(rg, 33);
    const auto first = compile_for_inference(rg, {.fold_norms = false, .fuse_activations = false});
    CHECK(static_cast<const Conv2d<double>&>(*first.node(first.node_id("d")).op).options().project_output == fits);
    const auto second = compile_for_inference(first);
    CHECK(second.has_node("p_bn"));
    check_same(rg, second, 1e-12);

    // set by hand where the fused kernel does not take the block (5 x 5 outputs, under a step
    // of pixels, and 58 x 58, over 56 rows): the conv runs its expansion and depthwise conv into
    // the workspace (at 58 x 58 the fused expansion kernel does that step) and the projection
    // over it, computing the same; inconsistent settings are refused with the node's name
    for (const Index side : {5, 58}) {
        INFO(side);
        GraphBuilder<double> sb(4);
        auto sx = sb.input("x", {1, 3, side, side});
        sb.output(nn::relu(project(dw(expand(sx, "e", 10), "d", 1), "p", 4), "p_act"));
        auto sg = std::move(sb).build();
        test::randomize(sg, 32);
        const auto sk = compile_for_inference(sg);
        REQUIRE(sk.has_node("p"));
        Graph<double> manual;
        const ValueId mx = manual.add_input("x", {1, 3, side, side});
        std::vector<ParamId> mp;
        for (const std::string node : {"d", "e", "p"}) {
            if (!sk.has_node(node)) continue;  // the expansion, fused into d
            for (ParamId q : sk.node(sk.node_id(node)).params) mp.push_back(manual.add_parameter(Parameter<double>(sk.parameter(q))));
        }
        REQUIRE(mp.size() == 6u);
        auto mo = static_cast<const Conv2d<double>&>(*sk.node(sk.node_id("d")).op).options();
        mo.expand_input = true;
        mo.expand_activation = FusedActivation::relu6;
        mo.project_output = true;
        mo.project_activation = FusedActivation::relu;
        const NodeId md = manual.add_node("d", std::make_unique<Conv2d<double>>(mo), {mx}, mp);
        manual.add_output(manual.node(md).outputs[0]);
        check_same(sg, manual, 1e-12);
        if (side == 58) continue;
        auto no_expand = mo;
        no_expand.expand_input = false;
        no_expand.expand_activation = FusedActivation::none;
        CHECK_THROWS_WITH(manual.add_node("bad", std::make_unique<Conv2d<double>>(no_expand), {mx}, {mp[0], mp[1], mp[4], mp[5]}),
                          Catch::Contains("bad") && Catch::Contains("project_output needs expand_input"));
        auto no_project = mo;
        no_project.project_output = false;
        CHECK_THROWS_WITH(manual.add_node("act", std::make_unique<Conv2d<double>>(no_project), {mx}, {mp[0], mp[1], mp[2], mp[3]}),
                          Catch::Contains("act") && Catch::Contains("project_activation is set without project_output"));
        CHECK_THROWS_WITH(manual.add_node("short", std::make_unique<Conv2d<double>>(mo), {mx}, {mp[0], mp[1], mp[2], mp[3]}),
                          Catch::Contains("short") && Catch::Contains("takes 6 parameter(s), got 4"));
        CHECK_THROWS_WITH(manual.add_node("shape", std::make_unique<Conv2d<double>>(mo), {mx}, {mp[0], mp[1], mp[2], mp[3], mp[2], mp[5]}),
                          Catch::Contains("shape") && Catch::Contains("project_weight"));
    }
}

TEST_CASE("compile: a stem, the depthwise conv that alone reads it and its projection run as one conv", "[compile]") {
    // MobileNet-v2's first three layers built by hand: a 3x3 stem of stride 2 (with its norm and
    // ReLU6) over an image of 3 channels, the depthwise 3x3 after it and the 1x1 projection go into
    // one conv (expand_kernel 3, expand_stride 2, expand_padding 1, project_output), also with a
    // residual Add after the projection. An image of 5 channels, a depthwise conv of stride 2, a
    // stem or depthwise conv with a second reader, a stem of stride 1, or the projections off
    // keep the three apart. The fused graph computes what the original computes: on one, two and
    // three threads, with and without pre-packed weights, saved and loaded, compiled again, and
    // after channels are cut from it.
    GraphBuilder<double> b(12);
    const Shape image5{2, 5, 160, 160};  // 80 x 80 stem outputs: im2col over blocks of pixels in parallel
    auto x = b.input("x", {2, 3, 40, 46});
    auto x5 = b.input("x5", image5);
    auto stem = [&](Var<double> v, const std::string& name, Index out, Index stride = 2) {
        return nn::relu6(nn::batch_norm2d(nn::conv2d(v, name, {.out_channels = out, .kernel = 3, .stride = stride,
                                                               .padding = 1, .bias = false}),
                                          name + "_bn"),
                         name + "_act");
    };
    auto project = [&](Var<double> v, const std::string& name, Index out) {
        return nn::batch_norm2d(nn::conv2d(v, name, {.out_channels = out, .kernel = 1, .bias = false}), name + "_bn");
    };
    auto y1 = project(dw(stem(x, "s1", 12), "d1", 1), "p1", 7);       // fused
    auto y2 = project(dw(stem(x5, "s2", 8), "d2", 1), "p2", 4);       // 5 channels
    auto y3 = project(dw(stem(x, "s3", 6), "d3", 2), "p3", 4);        // a depthwise conv of stride 2
    auto s4 = stem(x, "s4", 5);
    auto y4 = nn::add(dw(s4, "d4", 1), s4, "sum4");                   // a second reader of the stem
    auto d5 = dw(stem(x, "s5", 9), "d5", 1);                          // the depthwise conv is the graph's output too
    auto y6 = project(dw(stem(x, "s6", 4, 1), "d6", 1), "p6", 3);     // a stem of stride 1
    auto y7 = nn::add(project(dw(stem(x, "s7", 10), "d7", 1), "p7", 7), y1, "sum7");  // fused, with the residual
    for (auto v : {y1, y2, y3, y4, project(d5, "p5", 2), d5, y6, y7}) b.output(v);
    auto h = std::move(b).build();
    test::randomize(h, 41);
    const auto k = compile_for_inference(h);
    check_same(h, k, 1e-12);
    const bool fits = kernels::stem_block_fits(3, kernels::ConvGeometry{.in_h = 40, .in_w = 46, .out_h = 20, .out_w = 23,
                                                                        .kernel_h = 3, .kernel_w = 3, .stride_h = 2,
                                                                        .stride_w = 2, .pad_h = 1, .pad_w = 1},
                                               kernels::ConvGeometry{.in_h = 20, .in_w = 23, .out_h = 20, .out_w = 23,
                                                                     .kernel_h = 3, .kernel_w = 3, .pad_h = 1, .pad_w = 1});
    for (const std::string d : {"d1", "d7"}) {
        INFO(d);
        const auto& node = k.node(k.node_id(d));
        const auto& co = static_cast<const Conv2d<double>&>(*node.op).options();
        const bool residual = d == "d7";
        CHECK(co.project_output == fits);
        CHECK(co.expand_input == fits);
        CHECK(k.has_node("s" + d.substr(1)) != fits);
        CHECK(k.has_node("p" + d.substr(1)) != fits);
        if (fits) {
            CHECK(co.residual == residual);
            CHECK(node.inputs.size() == (residual ? 2u : 1u));
            CHECK(co.expand_kernel == Pair2{3});
            CHECK(co.expand_stride == Pair2{2});
            CHECK(co.expand_padding == Pair2{1});
            CHECK(co.expand_activation == FusedActivation::relu6);
            CHECK(co.activation == FusedActivation::relu6);
            CHECK(co.project_activation == FusedActivation::none);
            REQUIRE(node.params.size() == 6u);
            const Index c = residual ? 10 : 12;
            CHECK(k.parameter(node.params[2]).shape() == Shape{c, 3, 3, 3});
            CHECK(k.parameter(node.params[4]).shape() == Shape{7, c, 1, 1});
            CHECK(k.value(node.inputs[0]).shape == Shape{2, 3, 40, 46});
            CHECK(k.value(node.outputs[0]).shape == Shape{2, 7, 20, 23});
        }
    }
    for (const std::string s : {"s2", "s3", "s4", "s5", "s6"}) {
        INFO(s);
        CHECK(k.has_node(s));
        CHECK_FALSE(static_cast<const Conv2d<double>&>(*k.node(k.node_id("d" + s.substr(1))).op).options().expand_input);
    }
    const auto off = compile_for_inference(h, {.fuse_projections = false});
    CHECK(off.has_node("s1"));
    CHECK(off.has_node("p1"));
    check_same(h, off, 1e-12);
    CHECK(total_macs(k, example_input_shapes(k)) == total_macs(off, example_input_shapes(off)));

    check_compiled(h, k, {1, 2, 3}, "d1");
    if (fits) {
        // the stem's channels cut from the compiled graph (the depthwise conv's weight and bias,
        // the stem's rows, the projection's columns), killed first so that the outputs stay the same
        const auto cut = cut_channels(k, "d1.weight", {0, 5, 11}, inputs_for(h));
        const auto& node = cut.node(cut.node_id("d1"));
        CHECK(static_cast<const Conv2d<double>&>(*node.op).options().groups == 9);
        CHECK(cut.parameter(node.params[2]).shape() == Shape{9, 3, 3, 3});
        CHECK(cut.parameter(node.params[4]).shape() == Shape{7, 9, 1, 1});
    }

    // set by hand where the fused kernel does not take the three (5 input channels), and with the
    // stem but no projection: the stem runs through im2col into the workspace (two threads taking
    // blocks of its pixels), the depthwise conv over it (and the projection after), computing the
    // same for both images; a stem window without expand_input, or a stem weight of the wrong
    // shape, is refused with the node's name
    const ThreadCountScope two(2);
    const auto parts = compile_for_inference(h, {.fuse_expansions = false});
    for (const bool with_projection : {true, false}) {
        INFO("projection " << with_projection);
        Graph<double> manual;
        const ValueId mx = manual.add_input("x5", image5);
        std::vector<ParamId> mp;
        for (const std::string n : {"d2", "s2", "p2"}) {
            if (n == "p2" && !with_projection) break;
            for (ParamId q : parts.node(parts.node_id(n)).params) mp.push_back(manual.add_parameter(Parameter<double>(parts.parameter(q))));
        }
        auto mo = static_cast<const Conv2d<double>&>(*parts.node(parts.node_id("d2")).op).options();
        mo.expand_input = true;
        mo.expand_activation = FusedActivation::relu6;
        mo.expand_kernel = 3, mo.expand_stride = 2, mo.expand_padding = 1;
        mo.project_output = with_projection;
        const NodeId md = manual.add_node("d2", std::make_unique<Conv2d<double>>(mo), {mx}, mp);
        manual.add_output(manual.node(md).outputs[0]);
        Executor<double> m(manual);
        const auto x5s = test::random_tensor<double>(image5, 44);
        const auto got = m.forward(x5s);
        // with the projection: the original's output y2 (its second) on the same image; without,
        // the stem and the depthwise conv run apart
        if (with_projection) {
            const auto x3s = test::random_tensor<double>({2, 3, 40, 46}, 45);
            Executor<double> a(h);
            CHECK(test::max_rel_err(got, a.forward({x3s.ref(), x5s.ref()})[1]) < 1e-12);
        } else {
            Graph<double> apart;
            const ValueId ax = apart.add_input("x5", image5);
            ValueId v = ax;
            for (const std::string n : {"s2", "d2"}) {
                const auto& pn = parts.node(parts.node_id(n));
                std::vector<ParamId> ps;
                for (ParamId q : pn.params) ps.push_back(apart.add_parameter(Parameter<double>(parts.parameter(q))));
                v = apart.node(apart.add_node(n, pn.op->clone(), {v}, ps)).outputs[0];
            }
            apart.add_output(v);
            Executor<double> e(apart);
            CHECK(test::max_rel_err(got, e.forward(x5s)) < 1e-12);
        }
    }
    auto bad = static_cast<const Conv2d<double>&>(*parts.node(parts.node_id("d2")).op).options();
    bad.expand_kernel = 3;
    Graph<double> refused;
    const ValueId rx = refused.add_input("x", {1, 8, 10, 12});
    std::vector<ParamId> rp;
    for (ParamId q : parts.node(parts.node_id("d2")).params) rp.push_back(refused.add_parameter(Parameter<double>(parts.parameter(q))));
    CHECK_THROWS_WITH(refused.add_node("window", std::make_unique<Conv2d<double>>(bad), {rx}, rp),
                      Catch::Contains("window") && Catch::Contains("expand_kernel, expand_stride or expand_padding is set without expand_input"));
    bad.expand_input = true;
    bad.expand_stride = 2, bad.expand_padding = 1;
    const ParamId sw = refused.add_parameter(Parameter<double>("sw", Shape{8, 8, 1, 1}));
    const ParamId sb = refused.add_parameter(Parameter<double>("sb", Shape{8}));
    rp.insert(rp.end(), {sw, sb});
    CHECK_THROWS_WITH(refused.add_node("weight", std::make_unique<Conv2d<double>>(bad), {rx}, rp),
                      Catch::Contains("weight") && Catch::Contains("expand_weight"));
}

TEST_CASE("compile: a 1x1 conv runs after the average pooling that follows it (DenseNet's transitions)", "[compile]") {
    // DenseNet: BN + ReLU -> 1x1 conv -> 2x2 average pooling in each of its 3 transitions
    const auto g = test::zoo_model("densenet121");
    const auto k = compile_for_inference(g), kept = compile_for_inference(g, {.pool_first = false, .fuse_input_norms = false});
    const auto macs_k = count(k).layers, macs_kept = count(kept).layers;
    auto macs_of = [](const std::vector<LayerCount>& layers, const std::string& name) {
        for (const auto& l : layers)
            if (l.name == name) return l.macs;
        FAIL("no layer " << name);
        return Index(0);
    };
    const auto shapes = infer_value_shapes(kept, example_input_shapes(kept));
    for (int t = 1; t <= 3; ++t) {
        const std::string conv = "features.transition" + std::to_string(t) + ".conv";
        const std::string pool = "features.transition" + std::to_string(t) + ".pool";
        INFO(conv);
        CHECK(k.node(k.node_id(conv)).inputs[0] == k.node(k.node_id(pool)).outputs[0]);
        CHECK(k.node_id(pool) < k.node_id(conv));
        CHECK(kept.node(kept.node_id(pool)).inputs[0] == kept.node(kept.node_id(conv)).outputs[0]);
        // by hand: cin x cin / 2 per pixel (no bias), over the pooled plane (a quarter of the pixels)
        const Shape& x = shapes[kept.node(kept.node_id(conv)).inputs[0]];
        CHECK(x[1] == Index(128) << t);
        CHECK(macs_of(macs_kept, conv) == x[1] * x[1] / 2 * x[2] * x[3]);
        CHECK(macs_of(macs_k, conv) == x[1] * x[1] / 2 * (x[2] / 2) * (x[3] / 2));
    }
    check_same(kept, k, 1e-10);  // and both against g with the other zoo models
    // by hand: a bias and a folded BN pass through the pooling, and so do conv groups; odd planes
    // lose the same last row and column either way; padding, ceil mode, an activation, a 3x3 or
    // strided conv, or a second reader of the conv's output keep the order
    GraphBuilder<double> b(5);
    auto x = b.input("x", {2, 6, 7, 9});
    auto moved = nn::avg_pool2d(nn::batch_norm2d(nn::conv2d(x, "a", {.out_channels = 5, .kernel = 1}), "bn_a"), "pool_a",
                                PoolOptions{.kernel = 2});
    auto three = nn::avg_pool2d(nn::conv2d(x, "b", {.out_channels = 3, .kernel = 3, .padding = 1}), "pool_b",
                                PoolOptions{.kernel = 2});
    auto padded = nn::avg_pool2d(nn::conv2d(x, "c", {.out_channels = 3, .kernel = 1}), "pool_c",
                                 PoolOptions{.kernel = 2, .padding = 1});
    auto ceil = nn::avg_pool2d(nn::conv2d(x, "d", {.out_channels = 3, .kernel = 1}), "pool_d",
                               PoolOptions{.kernel = 2, .ceil_mode = true});
    auto act = nn::avg_pool2d(nn::relu(nn::conv2d(x, "e", {.out_channels = 3, .kernel = 1}), "relu_e"), "pool_e",
                              PoolOptions{.kernel = 3, .stride = 2});
    auto grouped = nn::avg_pool2d(nn::conv2d(x, "f", {.out_channels = 4, .kernel = 1, .groups = 2}), "pool_f",
                                  PoolOptions{.kernel = 3, .stride = 2});
    auto strided = nn::avg_pool2d(nn::conv2d(x, "g", {.out_channels = 3, .kernel = 1, .stride = 2}), "pool_g",
                                  PoolOptions{.kernel = 2});
    auto shared = nn::conv2d(x, "h", {.out_channels = 3, .kernel = 1});  // also a graph output
    for (auto v : {moved, three, padded, ceil, act, grouped, strided, shared,
                   nn::avg_pool2d(shared, "pool_h", PoolOptions{.kernel = 2})})
        b.output(v);
    auto h = std::move(b).build();
    test::randomize(h, 9);
    const auto hk = compile_for_inference(h);
    check_same(h, hk, 1e-12);
    for (const std::string c : {"a", "f"}) {
        INFO(c);
        CHECK(hk.node_id("pool_" + c) < hk.node_id(c));
        CHECK(hk.node(hk.node_id("pool_" + c)).inputs[0] == hk.inputs()[0]);
    }
    CHECK_FALSE(hk.has_parameter("bn_a.weight"));  // folded into a, which now reads the pooled input
    for (const std::string c : {"b", "c", "d", "e", "g", "h"}) {
        INFO(c);
        CHECK(hk.node_id("pool_" + c) > hk.node_id(c));
        CHECK(hk.node(hk.node_id(c)).inputs[0] == hk.inputs()[0]);
    }
}

TEST_CASE("compile: residual additions join the conv that produces one operand", "[compile]") {
    // ResNet blocks end in conv -> BN -> Add -> ReLU; MobileNetV2's in conv -> BN -> Add
    auto count_residual = [](const Graph<double>& k) {
        int n = 0;
        for (const auto& node : k.nodes())
            if (node.op->type() == "Conv2d" && static_cast<const Conv2d<double>&>(*node.op).options().residual) ++n;
        return n;
    };
    for (auto [name, blocks] : {std::pair{"resnet18", 8}, std::pair{"resnet50", 16}, std::pair{"mobilenet_v2", 10}}) {
        INFO(name);
        const auto g = test::zoo_model(name);
        const auto k = compile_for_inference(g);
        CHECK(count_residual(k) == blocks);
        CHECK(count_type(k, "Add") + count_type(k, "AddReLU") == 0);
    }
    // every conv kernel path adds the residual before its activation: GEMM, direct, 1x1 direct,
    // im2col (one product, and pixel blocks per thread), grouped, depthwise (phase
    // planes and the plain loop), batch 2
    const std::vector<std::pair<Shape, Conv2dOptions>> paths{
        {{2, 5, 9, 7}, {.out_channels = 6, .kernel = 1}},
        {{2, 5, 9, 7}, {.out_channels = 11, .kernel = 3, .padding = 1}},
        {{1, 4, 9, 7}, {.out_channels = 6, .kernel = 3, .padding = 2, .dilation = 2}},
        {{1, 8, 70, 66}, {.out_channels = 3, .kernel = 3, .padding = 2, .dilation = 2}},
        {{1, 4, 9, 7}, {.out_channels = 6, .kernel = 3, .padding = 1, .groups = 2}},
        {{2, 6, 9, 7}, {.out_channels = 6, .kernel = 3, .padding = 1, .groups = 6}},
        {{1, 3, 6, 41}, {.out_channels = 3, .kernel = 3, .padding = 1, .groups = 3}},  // depthwise by rows
        {{1, 6, 9, 7}, {.out_channels = 6, .kernel = 5, .padding = 2, .groups = 6}},
        {{1, 5, 6, 45}, {.out_channels = 9, .kernel = 3, .padding = 1}},  // direct: steps inside a row
        {{2, 7, 17, 17}, {.out_channels = 6, .kernel = 1}},               // 1x1 on the direct tiles
    };
    for (const auto& [shape, options] : paths) {
        INFO("input " << shape << " kernel " << options.kernel.h << " groups " << options.groups);
        GraphBuilder<double> pb(9);
        auto in = pb.input("x", shape);
        auto conv = nn::conv2d(in, "conv", options);
        auto skip = nn::conv2d(in, "skip", {.out_channels = options.out_channels, .kernel = 1});
        pb.output(nn::relu(nn::add(conv, skip, "sum"), "act"));
        auto pg = std::move(pb).build();
        test::randomize(pg, 3);
        const auto pk = compile_for_inference(pg);
        CHECK(static_cast<const Conv2d<double>&>(*pk.node(pk.node_id("conv")).op).options().residual);
        check_same(pg, pk, 1e-12);
    }
    // an operand broadcast over the planes is not a residual: the Add stays
    GraphBuilder<double> b(5);
    auto x = b.input("x", {1, 3, 5, 5});
    auto c = nn::conv2d(x, "c", {.out_channels = 4, .kernel = 3, .padding = 1});
    auto gate = nn::conv2d(nn::adaptive_avg_pool2d(x, "pool", 1), "gate", {.out_channels = 4, .kernel = 1});
    b.output(nn::relu(nn::add(c, gate, "plus"), "act"));
    auto g = std::move(b).build();
    test::randomize(g, 2);
    const auto k = compile_for_inference(g);
    check_same(g, k, 1e-12);
    CHECK(count_residual(k) == 0);
    CHECK(count_type(k, "AddReLU") == 1);
    // compiling a compiled graph again (a saved InferenceModel copy) changes nothing: a
    // residual conv takes no fold and no second residual, a BN with its own ReLU no fold
    GraphBuilder<double> tb(8);
    auto tx = tb.input("x", {1, 4, 6, 5});
    auto tc = nn::conv2d(tx, "c", {.out_channels = 4, .kernel = 3, .padding = 1});
    auto tail = nn::batch_norm2d(nn::add(tc, tx, "plus"), "bn");  // pre-activation: BN after the sum
    tail = nn::relu(tail, "act");
    auto td = nn::conv2d(tail, "d", {.out_channels = 4, .kernel = 1});
    tb.output(nn::add(nn::add(td, tail, "plus2"), tx, "plus3"));
    auto tg = std::move(tb).build();
    test::randomize(tg, 4);
    const auto once = compile_for_inference(tg);
    const auto twice = compile_for_inference(once);
    check_same(tg, once, 1e-12);
    check_same(tg, twice, 1e-12);
    CHECK(twice.nodes().size() == once.nodes().size());
    GraphBuilder<double> nb(2);
    auto nx = nb.input("x", {1, 2, 5, 5});
    nb.output(nn::batch_norm2d(nn::conv2d(nx, "c", {.out_channels = 3, .kernel = 3}), "bn",
                               BatchNormOptions{.activation = FusedActivation::relu}));
    auto ng = std::move(nb).build();
    test::randomize(ng, 5);
    const auto nk = compile_for_inference(ng);
    check_same(ng, nk, 1e-12);
    CHECK(count_type(nk, "BatchNorm2d") == 1);
    // a user cannot build a residual conv: the compile step sets it
    GraphBuilder<float> u;
    auto y = u.input("y", {1, 2, 4, 4});
    CHECK_THROWS_WITH(nn::conv2d(y, "r", {.out_channels = 2, .residual = true}), Catch::Contains("'r'") && Catch::Contains("residual"));
}

TEST_CASE("compile: FixedPoint bodies and shared priors compile too", "[compile]") {
    for (const auto* name : {"fixed_point", "shared_prior", "gate", "depthwise"}) {
        INFO(name);
        const auto g = test::coupling_graph(name);
        check_same(g, compile_for_inference(g), 1e-12);
    }
}

TEST_CASE("an inference model recompiles after surgery and on refresh: never a stale plan", "[compile][prune]") {
    auto g = test::zoo_model("resnet18");
    InferenceModel<double> model(g);
    const auto x = test::random_tensor<double>({1, 3, 32, 32}, 3);
    const auto dense = model.forward(x);
    CHECK(test::max_rel_err(dense, test::run(g, x)) < 1e-10);
    prune_groups(g, Magnitude<2>{}, {.ratio = 0.5});
    const auto pruned = model.forward(x);  // no refresh needed: the version changed
    CHECK(test::max_rel_err(pruned, test::run(g, x)) < 1e-10);
    CHECK(test::max_rel_err(pruned, dense) > 1e-3);
    CHECK(model.compiled().parameter("conv1.weight").shape()[0] == 32);
    // weights changed in place keep the version: refresh() picks them up
    for (auto& v : g.parameter("fc.bias")) v += 1.0;
    model.refresh();
    CHECK(test::max_rel_err(model.forward(x), test::run(g, x)) < 1e-10);
}

TEST_CASE("compile: ResNet-50's planned activation memory is at most 3x its largest tensor plus the largest workspace",
          "[compile][memory]") {
    const auto g = models::resnet50<float>();
    InferenceModel<float> model(g);
    model.forward(Tensor<float>(example_input_shapes(g)[0], 0.5f));
    const auto& c = model.compiled();
    const auto shapes = infer_value_shapes(c, example_input_shapes(c));
    Index largest = 0, workspace = 0;
    for (const auto& s : shapes) largest = std::max(largest, s.numel());
    for (std::size_t i = 0; i < c.nodes().size(); ++i) {
        const auto& n = c.nodes()[i];
        std::vector<Shape> in, out, ps = c.param_shapes(static_cast<NodeId>(i));
        for (ValueId v : n.inputs) in.push_back(shapes[v]);
        for (ValueId v : n.outputs) out.push_back(shapes[v]);
        workspace = std::max(workspace, n.op->workspace_size(ShapeContext{n.name, in, ps}, out));
    }
    CHECK(largest == 64 * 112 * 112);
    // the im2col of layer3's first 3x3 (stride 2, 256 channels in); the stem and the
    // other 3x3 layers run on the direct kernel, whose phase planes take less. With AVX that
    // layer runs on the direct kernel too, and the largest is the phase planes of layer2's
    // first 3x3 (128 channels of 56 x 56, stride 2): 4 planes of 29 x 29 per channel, each
    // taken up to 51 steps of 16 outputs (816) plus the taps' reach (a row of 29 and one): 846
    CHECK(workspace == (kernels::detail::vector_bytes == 32 ? 128 * 4 * 846 : 256 * 9 * 14 * 14));
    CHECK(model.executor().plan().peak_bytes(sizeof(float)) <= (3 * largest + workspace) * Index(sizeof(float)));
}

TEST_CASE("an inference model picks a thread count per plan by timing, and computes the same on it", "[compile][threading]") {
    const int before = num_threads();
    set_num_threads(std::max(2, before));
    const int threads = num_threads();
    auto g = test::zoo_model("resnet18");
    const auto x = test::random_tensor<double>({1, 3, 32, 32}, 5);
    InferenceModel<double> tuned(g), fixed(g, CompileOptions{.tune_threads = false});
    CHECK(tuned.executor().thread_tuning());
    CHECK_FALSE(fixed.executor().thread_tuning());
    const auto y = tuned.forward(x);
    CHECK(test::max_rel_err(y, fixed.forward(x)) < 1e-12);
    const auto& plan = tuned.executor().plan();
    if (threads > 1) {
        CHECK(plan.threads_of == threads);
        CHECK((plan.threads == threads || plan.threads == 1 || plan.threads == threads / 2));
    } else {
        CHECK(plan.threads_of == 0);  // nothing to choose from
    }
    CHECK(fixed.executor().plan().threads_of == 0);
    // the count is the caller's again after the run
    CHECK(num_threads() == threads);
    // a new input shape is a new plan, chosen again; so is a new thread count
    const auto x2 = test::random_tensor<double>({2, 3, 32, 32}, 6);
    CHECK(test::max_rel_err(tuned.forward(x2), fixed.forward(x2)) < 1e-12);
    CHECK(tuned.executor().plan().threads_of == (threads > 1 ? threads : 0));
    set_num_threads(1);
    CHECK(test::max_rel_err(tuned.forward(x2), fixed.forward(x2)) < 1e-12);
    CHECK(tuned.executor().plan().threads_of == (threads > 1 ? threads : 0));  // one thread: kept, not used
    set_num_threads(before);
    tuned.executor().set_thread_tuning(false);
    CHECK(tuned.executor().plan().threads_of == 0);
}
