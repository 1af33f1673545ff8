#include <cmath>
#include <cstring>
#include <limits>

#include "io_fixtures.hpp"

using namespace spade;
using test::TempDir;

namespace {

// conv -> bn -> relu -> conv (grouped, no bias) -> leaky_relu(slope 2.0) + shortcut conv -> add
template <Scalar T>
Graph<T> small_net(std::uint64_t seed = 3) {
    GraphBuilder<T> b(seed);
    auto x = b.input("x", {2, 3, 9, 7});
    auto y = nn::conv2d(x, "conv1", {.out_channels = 6, .kernel = 3, .padding = 1});
    y = nn::relu(nn::batch_norm2d(y, "bn1"), "relu1");
    y = nn::conv2d(y, "conv2", {.out_channels = 6, .kernel = 3, .stride = 2, .padding = 1, .groups = 3, .bias = false});
    y = nn::leaky_relu(y, "act2", 2.0);
    auto s = nn::conv2d(x, "shortcut", {.out_channels = 6, .kernel = 1, .stride = 2});
    b.output(nn::add(y, s, "sum"));
    auto g = std::move(b).build();
    test::randomize(g, seed + 100);
    return g;
}

template <Scalar T>
std::vector<std::vector<T>> snapshot(const Graph<T>& g) {
    std::vector<std::vector<T>> v;
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        const auto& p = g.parameter(static_cast<ParamId>(i));
        v.emplace_back(p.begin(), p.end());
    }
    return v;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// One tensor of an independently written safetensors file.
struct RawTensor {
    std::string name, dtype;
    std::vector<Index> shape;
    std::vector<unsigned char> bytes;
};

template <class T>
RawTensor raw(const std::string& name, const Shape& shape, const T* data) {
    RawTensor r{name, std::is_same_v<T, float> ? "F32" : std::is_same_v<T, double> ? "F64" : "I64", shape.dims(), {}};
    r.bytes.resize(static_cast<std::size_t>(shape.numel()) * sizeof(T));
    std::memcpy(r.bytes.data(), data, r.bytes.size());  // the test machine is little-endian
    return r;
}

// Writes a safetensors file without the library's writer, so loads are checked against an outside source.
void write_raw(const std::filesystem::path& path, const std::vector<RawTensor>& ts) {
    nlohmann::json h = nlohmann::json::object();
    std::vector<unsigned char> data;
    for (const auto& t : ts) {
        h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
        data.insert(data.end(), t.bytes.begin(), t.bytes.end());
    }
    test::write_bytes(path, test::safetensors_bytes(h.dump(), data));
}

// The parameters of `g` as raw tensors, as a PyTorch state_dict export would give them.
template <Scalar T>
std::vector<RawTensor> state_dict(const Graph<T>& g) {
    std::vector<RawTensor> ts;
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        const auto& p = g.parameter(static_cast<ParamId>(i));
        ts.push_back(raw(p.name(), p.shape(), p.data()));
    }
    return ts;
}

template <Scalar T>
Tensor<T> run(const Graph<T>& g, std::uint64_t seed) {
    return test::run(g, test::random_tensor<T>(g.value(g.inputs()[0]).shape, seed));
}

}  // namespace

TEST_CASE("save_weights and load_weights round trip bit-exactly", "[io][weights]") {
    TempDir dir;
    auto check = [&]<class T>() {
        auto g = small_net<T>(5);
        const auto path = dir / "w.safetensors";
        save_weights(g, path);
        auto f = SafetensorsFile::open(path);
        std::vector<std::string> names;
        for (std::size_t i = 0; i < g.num_parameters(); ++i) names.push_back(g.parameter(static_cast<ParamId>(i)).name());
        CHECK(f.names() == names);  // graph order
        CHECK(f.info("bn1.running_var").dtype == std::string(dtype_name<T>()));

        auto h = small_net<T>(99);  // same architecture, other values
        load_weights(h, path);
        auto a = snapshot(g), b = snapshot(h);
        for (std::size_t i = 0; i < a.size(); ++i) CHECK(same_bits(a[i], b[i]));
        auto ya = run(g, 7), yb = run(h, 7);
        CHECK(same_bits(ya.values(), yb.values()));
    };
    check.template operator()<float>();
    check.template operator()<double>();
}

TEST_CASE("load_weights converts dtypes and fills buffers the caller owns", "[io][weights]") {
    TempDir dir;
    auto g = small_net<float>(5);
    save_weights(g, dir / "f32.safetensors");

    // float file into a double graph: widening is exact
    auto gd = small_net<double>(8);
    load_weights(gd, dir / "f32.safetensors");
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        const auto& pf = g.parameter(static_cast<ParamId>(i));
        const auto& pd = gd.parameter(static_cast<ParamId>(i));
        for (Index k = 0; k < pf.numel(); ++k) REQUIRE(pd.data()[k] == static_cast<double>(pf.data()[k]));
    }

    // a parameter that views the caller's buffer receives the values in that buffer
    std::vector<float> weight(6 * 3 * 3 * 3, -7.0f), bias(6, -7.0f);
    Graph<float> v;
    const ValueId x = v.add_input("x", {1, 3, 5, 5});
    const ParamId pw = v.add_parameter(Parameter<float>::view("conv1.weight", {6, 3, 3, 3}, weight.data()));
    const ParamId pb = v.add_parameter(Parameter<float>::view("conv1.bias", {6}, bias.data()));
    v.add_output(v.node(v.add_node("conv1", std::make_unique<Conv2d<float>>(Conv2dOptions{.out_channels = 6, .padding = 1}),
                                   {x}, {pw, pb}))
                     .outputs[0]);
    REQUIRE(!v.parameter("conv1.weight").owns_storage());
    load_weights(v, dir / "f32.safetensors", {.strict = false});
    CHECK(std::equal(weight.begin(), weight.end(), g.parameter("conv1.weight").begin()));
    CHECK(std::equal(bias.begin(), bias.end(), g.parameter("conv1.bias").begin()));
    CHECK(v.parameter("conv1.weight").data() == weight.data());
}

TEST_CASE("load_weights reads a state_dict written independently, skipping num_batches_tracked", "[io][weights]") {
    TempDir dir;
    auto g = small_net<float>(5);
    auto ts = state_dict(g);
    const std::int64_t counter = 1234;
    ts.insert(ts.begin() + 3, raw("bn1.num_batches_tracked", Shape{}, &counter));
    write_raw(dir / "sd.safetensors", ts);

    auto h = small_net<float>(42);
    auto report = load_weights(h, dir / "sd.safetensors");  // strict: the counter is not "unexpected"
    CHECK(report.missing.empty());
    CHECK(report.unexpected.empty());
    auto a = snapshot(g), b = snapshot(h);
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(same_bits(a[i], b[i]));

    // a plain I64 tensor with any other name is still unexpected
    ts.push_back(raw("bn1.step", Shape{}, &counter));
    write_raw(dir / "sd2.safetensors", ts);
    test::require_format_error([&] { load_weights(h, dir / "sd2.safetensors"); }, {"sd2.safetensors", "'bn1.step'", "unexpected"});
}

TEST_CASE("load_weights strictness: missing and unexpected tensors", "[io][weights]") {
    TempDir dir;
    auto g = small_net<float>(5);
    auto ts = state_dict(g);
    auto erase = [&](const std::string& name) {
        ts.erase(std::find_if(ts.begin(), ts.end(), [&](const RawTensor& t) { return t.name == name; }));
    };
    erase("conv2.weight");
    const float extra[2] = {1, 2};
    ts.push_back(raw("head.weight", Shape{2}, extra));
    write_raw(dir / "partial.safetensors", ts);

    auto h = small_net<float>(42);
    const auto before = snapshot(h);
    test::require_format_error([&] { load_weights(h, dir / "partial.safetensors"); },
                               {"partial.safetensors", "'conv2.weight'", "missing"});
    CHECK(snapshot(h) == before);

    erase("head.weight");
    ts.push_back(raw("conv2.weight", g.parameter("conv2.weight").shape(), g.parameter("conv2.weight").data()));
    ts.push_back(raw("head.weight", Shape{2}, extra));
    write_raw(dir / "extra.safetensors", ts);
    test::require_format_error([&] { load_weights(h, dir / "extra.safetensors"); },
                               {"extra.safetensors", "'head.weight'", "unexpected"});
    CHECK(snapshot(h) == before);

    // not strict: loads what matches, reports the rest, leaves missing parameters alone
    auto report = load_weights(h, dir / "partial.safetensors", {.strict = false});
    CHECK(report.missing == std::vector<std::string>{"conv2.weight"});
    CHECK(report.unexpected == std::vector<std::string>{"head.weight"});
    CHECK(same_bits(snapshot(h)[h.param_id("conv1.weight")], snapshot(g)[g.param_id("conv1.weight")]));
    CHECK(snapshot(h)[h.param_id("conv2.weight")] == before[h.param_id("conv2.weight")]);
}

TEST_CASE("load_weights validates everything before writing anything", "[io][weights]") {
    TempDir dir;
    auto g = small_net<float>(5);
    auto h = small_net<float>(42);
    const auto before = snapshot(h);

    // every tensor is fine except the last one's shape: nothing may be written
    auto ts = state_dict(g);
    auto& last = ts.back();
    REQUIRE(last.name == "shortcut.bias");
    const std::vector<float> seven(7, 1.0f);
    last = raw("shortcut.bias", Shape{7}, seven.data());
    write_raw(dir / "shape.safetensors", ts);
    test::require_format_error([&] { load_weights(h, dir / "shape.safetensors"); },
                               {"shape.safetensors", "'shortcut.bias'", "[7]", "[6]"});
    CHECK(snapshot(h) == before);
    test::require_format_error([&] { load_weights(h, dir / "shape.safetensors", {.strict = false}); }, {"[7]", "[6]"});
    CHECK(snapshot(h) == before);

    // a tensor of an integer dtype under a parameter's name
    ts = state_dict(g);
    const std::vector<std::int64_t> ints(6, 1);
    ts.back() = raw("shortcut.bias", Shape{6}, ints.data());
    write_raw(dir / "dtype.safetensors", ts);
    test::require_format_error([&] { load_weights(h, dir / "dtype.safetensors"); }, {"dtype.safetensors", "'shortcut.bias'", "I64"});
    CHECK(snapshot(h) == before);

    // a conv weight with a transposed layout
    ts = state_dict(g);
    ts[0] = raw("conv1.weight", Shape{3, 6, 3, 3}, g.parameter("conv1.weight").data());
    write_raw(dir / "layout.safetensors", ts);
    test::require_format_error([&] { load_weights(h, dir / "layout.safetensors"); },
                               {"layout.safetensors", "'conv1.weight'", "[3, 6, 3, 3]", "[6, 3, 3, 3]"});
    CHECK(snapshot(h) == before);
}

TEST_CASE("attributes survive JSON with their types", "[io][graph_json]") {
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    const std::vector<Attribute> values{
        true,
        false,
        std::int64_t{-3},
        std::int64_t{std::numeric_limits<std::int64_t>::max()},
        2.0,  // integral double must stay a double
        -0.0,
        0.1,
        1e300,
        5e-324,
        inf,
        -inf,
        std::string("same"),
        std::string(""),
        std::vector<std::int64_t>{1, 2},
        std::vector<std::int64_t>{},
        std::vector<double>{1.0, 2.5},
        std::vector<double>{3.0},
        std::vector<double>{},
        std::vector<double>{0.5, inf},
    };
    for (const auto& a : values) {
        const auto text = attribute_to_json(a).dump();
        INFO("json " << text);
        const Attribute back = attribute_from_json(nlohmann::json::parse(text), "attr");
        REQUIRE(back.index() == a.index());
        if (auto d = std::get_if<double>(&a)) {
            const double e = std::get<double>(back);
            CHECK(std::memcmp(&e, d, sizeof(double)) == 0);
        } else {
            CHECK(back == a);
        }
    }
    const Attribute n = attribute_from_json(nlohmann::json::parse(attribute_to_json(nan).dump()), "attr");
    CHECK(std::isnan(std::get<double>(n)));
    CHECK(attribute_to_json(2.0).dump() == "2.0");

    // hand-written JSON: integers are int64, fractions and exponents double
    CHECK(std::get<std::int64_t>(attribute_from_json(nlohmann::json::parse("3"), "a")) == 3);
    CHECK(std::get<double>(attribute_from_json(nlohmann::json::parse("3.0"), "a")) == 3.0);
    CHECK(std::get<double>(attribute_from_json(nlohmann::json::parse("1e2"), "a")) == 100.0);
    CHECK(std::get<std::vector<double>>(attribute_from_json(nlohmann::json::parse("[1, 2.5]"), "a")) ==
          std::vector<double>{1.0, 2.5});
    CHECK(std::get<std::vector<std::int64_t>>(attribute_from_json(nlohmann::json::parse("[]"), "a")).empty());
    CHECK(std::get<double>(attribute_from_json(nlohmann::json::parse(R"({"double": 4})"), "a")) == 4.0);
    test::require_format_error([] { (void)attribute_from_json(nlohmann::json::parse("null"), "node 'c': attribute 'k'"); },
                               {"node 'c'", "'k'"});
    test::require_format_error([] { (void)attribute_from_json(nlohmann::json::parse(R"([1, "x"])"), "attribute 'k'"); },
                               {"'k'[1]"});
    test::require_format_error([] { (void)attribute_from_json(nlohmann::json::parse("18446744073709551615"), "attribute 'k'"); },
                               {"'k'", "18446744073709551615"});
}

TEST_CASE("save_graph and load_graph reproduce a graph bit-exactly", "[io][graph_json]") {
    TempDir dir;
    auto check = [&]<class T>() {
        auto g = small_net<T>(11);
        save_graph(g, dir / "net.json", dir / "net.safetensors");
        auto h = load_graph<T>(dir / "net.json", dir / "net.safetensors");
        const auto bytes = test::read_bytes(dir / "net.json");
        const std::string text(bytes.begin(), bytes.end());
        CHECK(text.find(R"("shape": [2, 3, 9, 7])") != std::string::npos);  // shapes on one line
        CHECK(text.find(R"("negative_slope": 2.0)") != std::string::npos);  // an integral double stays a double

        REQUIRE(h.nodes().size() == g.nodes().size());
        for (std::size_t i = 0; i < g.nodes().size(); ++i) {
            const auto &a = g.nodes()[i], &b = h.nodes()[i];
            CHECK(a.name == b.name);
            CHECK(a.op->type() == b.op->type());
            CHECK(a.op->attributes() == b.op->attributes());  // variant types included (slope 2.0 stays double)
            CHECK(a.inputs == b.inputs);
            CHECK(a.outputs == b.outputs);
            CHECK(a.params == b.params);
        }
        REQUIRE(h.num_parameters() == g.num_parameters());
        for (std::size_t i = 0; i < g.num_parameters(); ++i) {
            const auto &p = g.parameter(static_cast<ParamId>(i)), &q = h.parameter(static_cast<ParamId>(i));
            CHECK(p.name() == q.name());
            CHECK(p.shape() == q.shape());
            CHECK(p.learnable() == q.learnable());
        }
        CHECK(!h.parameter("bn1.running_mean").learnable());
        CHECK(snapshot(g) == snapshot(h));
        for (std::size_t i = 0; i < g.values().size(); ++i) {
            CHECK(g.values()[i].name == h.values()[i].name);
            CHECK(g.values()[i].shape == h.values()[i].shape);
        }
        CHECK(g.inputs() == h.inputs());
        CHECK(g.outputs() == h.outputs());
        CHECK(graph_to_json(g) == graph_to_json(h));
        auto ya = run(g, 13), yb = run(h, 13);
        CHECK(same_bits(ya.values(), yb.values()));
    };
    check.template operator()<float>();
    check.template operator()<double>();
}

TEST_CASE("graph JSON stores pruned parameter shapes", "[io][graph_json]") {
    // a graph whose conv1 has 4 output channels instead of the 6 its builder asked for,
    // as channel surgery would leave it: the file must rebuild the smaller graph
    TempDir dir;
    GraphBuilder<float> b(1);
    auto x = b.input("x", {1, 3, 8, 8});
    auto y = nn::conv2d(x, "conv1", {.out_channels = 4, .kernel = 3, .padding = 1});
    b.output(nn::conv2d(y, "conv2", {.out_channels = 5, .kernel = 1}));
    auto g = std::move(b).build();
    auto j = graph_to_json(g);
    CHECK(j["parameters"][0]["shape"] == nlohmann::json::array({4, 3, 3, 3}));
    CHECK(j["nodes"][0]["op"] == "Conv2d");
    CHECK(j["nodes"][1]["inputs"] == nlohmann::json::array({"conv1"}));
    CHECK(j["format"] == "spade.graph");
    CHECK(j["version"] == 1);
    auto h = graph_from_json<float>(j, "mem");
    CHECK(h.value(h.outputs()[0]).shape == Shape{1, 5, 8, 8});
}

TEST_CASE("FixedPoint subgraphs and their weights round trip", "[io][graph_json]") {
    TempDir dir;
    GraphBuilder<double> body_b(4);
    auto z = body_b.input("z", {1, 4, 6, 5});
    auto e = body_b.input("e", {1, 4, 6, 5});
    auto r = nn::conv2d(z, "prior", {.out_channels = 4, .kernel = 3, .padding = 1});
    body_b.output(nn::add(r, e, "update"));
    auto body = std::move(body_b).build();
    test::randomize(body, 21, -0.1, 0.1);

    GraphBuilder<double> b(5);
    auto x = b.input("x", {1, 4, 6, 5});
    auto y = nn::fixed_point({x, x}, "deq", std::move(body), {.max_iter = 4, .tol = 0.0});
    b.output(nn::conv2d(y, "head", {.out_channels = 2, .kernel = 1}));
    auto g = std::move(b).build();
    test::randomize(g, 22);

    save_graph(g, dir / "deq.json", dir / "deq.safetensors");
    auto f = SafetensorsFile::open(dir / "deq.safetensors");
    CHECK(f.contains("deq.0.prior.weight"));
    CHECK(f.contains("deq.0.prior.bias"));
    CHECK(f.contains("head.weight"));

    auto h = load_graph<double>(dir / "deq.json", dir / "deq.safetensors");
    REQUIRE(h.node(h.node_id("deq")).op->subgraphs().size() == 1);
    const auto& hb = *h.node(h.node_id("deq")).op->subgraphs()[0];
    const auto& gb = *g.node(g.node_id("deq")).op->subgraphs()[0];
    CHECK(snapshot(hb) == snapshot(gb));
    CHECK(h.node(h.node_id("deq")).op->attributes() == g.node(g.node_id("deq")).op->attributes());
    auto ya = run(g, 3), yb = run(h, 3);
    CHECK(same_bits(ya.values(), yb.values()));

    // load_weights reaches into the subgraph of an existing graph too
    auto k = graph_from_json<double>(graph_to_json(g), "copy");
    load_weights(k, dir / "deq.safetensors");
    CHECK(snapshot(*k.node(k.node_id("deq")).op->subgraphs()[0]) == snapshot(gb));
}

TEST_CASE("malformed graph files give FormatError naming the file and node", "[io][graph_json]") {
    TempDir dir;
    auto g = small_net<float>(5);
    save_graph(g, dir / "net.json", dir / "net.safetensors");
    const auto good = graph_to_json(g);

    auto expect = [&](const std::string& label, const nlohmann::json& j, std::vector<std::string> parts) {
        INFO("case " << label);
        const std::string file = label + ".json";
        const std::string text = j.dump(2);
        test::write_bytes(dir / file, std::vector<unsigned char>(text.begin(), text.end()));
        parts.push_back(file);
        test::require_format_error([&] { (void)load_graph<float>(dir / file, dir / "net.safetensors"); }, parts);
    };
    auto node_index = [&](const std::string& name) {
        for (std::size_t i = 0; i < good["nodes"].size(); ++i)
            if (good["nodes"][i]["name"] == name) return i;
        FAIL("no node " << name);
        return std::size_t{0};
    };

    auto j = good;
    j["nodes"][node_index("bn1")]["op"] = "BatchNorm7d";
    expect("unknown_op", j, {"node 'bn1'", "BatchNorm7d"});

    j = good;
    j["nodes"][node_index("conv2")]["inputs"] = {"relu_one"};
    expect("unknown_value", j, {"node 'conv2'", "'relu_one'"});

    j = good;
    j["nodes"][node_index("conv1")]["parameters"][1] = "conv1.gain";
    expect("unknown_param", j, {"node 'conv1'", "'conv1.gain'"});

    j = good;
    j["nodes"][node_index("conv1")]["attributes"].erase("groups");
    expect("missing_attribute", j, {"node 'conv1'", "groups"});

    j = good;
    j["nodes"][node_index("conv1")]["attributes"]["stride"] = nlohmann::json::array({1, 2, 3});
    expect("bad_attribute", j, {"node 'conv1'", "stride"});

    j = good;
    j["parameters"][0]["shape"] = {6, 5, 3, 3};  // conv1.weight no longer fits the 3-channel input
    expect("param_shape", j, {"node 'conv1'", "[6, 5, 3, 3]"});

    j = good;
    j["parameters"][0]["shape"] = {6, -3, 3, 3};
    expect("negative_shape", j, {"parameter 'conv1.weight'", "-3"});

    j = good;
    j["nodes"][node_index("sum")]["outputs"] = {"total"};
    expect("renamed_output", j, {"node 'sum'", "'total'"});

    j = good;
    j["outputs"] = {"nowhere"};
    expect("unknown_output", j, {"'nowhere'"});

    j = good;
    j["nodes"][node_index("act2")].erase("op");
    expect("missing_op", j, {"node 'act2'", "'op'"});

    j = good;
    j["format"] = "onnx";
    expect("wrong_format", j, {"onnx"});

    j = good;
    j["version"] = 99;
    expect("new_version", j, {"99"});

    j = good;
    j.erase("nodes");
    expect("no_nodes", j, {"'nodes'"});

    expect("not_object", nlohmann::json::array({1}), {"object"});

    const std::string broken = R"({"format": "spade.graph", "version": 1, "inputs": [)";
    test::write_bytes(dir / "broken.json", std::vector<unsigned char>(broken.begin(), broken.end()));
    test::require_format_error([&] { (void)load_graph<float>(dir / "broken.json", dir / "net.safetensors"); },
                               {"broken.json", "not valid JSON"});
    test::require_format_error([&] { (void)load_graph<float>(dir / "absent.json", dir / "net.safetensors"); }, {"absent.json"});

    // weights that do not fit the architecture
    auto other = small_net<float>(5);
    GraphBuilder<float> b;
    auto x = b.input("x", {2, 3, 9, 7});
    b.output(nn::conv2d(x, "conv1", {.out_channels = 6, .kernel = 3, .padding = 1}));
    save_weights(std::move(b).build(), dir / "few.safetensors");
    test::require_format_error([&] { (void)load_graph<float>(dir / "net.json", dir / "few.safetensors"); },
                               {"few.safetensors", "missing", "'bn1.weight'"});
}
