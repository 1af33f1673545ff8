// The architecture file: a graph as JSON (inputs, parameters, nodes in order,
// outputs; ops by registered type name and attributes; subgraphs nested), next
// to a safetensors file with the weights. Saving and loading reproduce a graph
// bit for bit, pruned shapes included, since parameter shapes are stored.
//
//     {"format": "spade.graph", "version": 1,
//      "inputs": [{"name": "x", "shape": [1, 3, 224, 224]}],
//      "parameters": [{"name": "conv1.weight", "shape": [64, 3, 7, 7], "learnable": true}, ...],
//      "nodes": [{"name": "conv1", "op": "Conv2d", "attributes": {"kernel": [7, 7], ...},
//                 "inputs": ["x"], "parameters": ["conv1.weight"], "outputs": ["conv1"]}, ...],
//      "outputs": ["fc"]}
//
// Attributes are plain JSON where the type is plain (true, 3, 0.5, "same",
// [1, 2], [0.5, 1.0]; a double is always written with a fraction or exponent,
// so 2.0 stays a double). Values JSON cannot say unambiguously are tagged with
// their type: {"doubles": []}, {"double": "inf"}. Readers accept the tagged form
// for every type: "bool", "int", "double", "string", "ints", "doubles".
// Hand-written files may omit a parameter's "learnable" (true) and a node's
// "attributes", "parameters", "outputs" and "subgraphs".
#pragma once

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "spade/graph/graph.hpp"
#include "spade/graph/ops.hpp"  // so every built-in op is registered before a file names it
#include "spade/graph/registry.hpp"
#include "spade/io/files.hpp"
#include "spade/io/json_fields.hpp"
#include "spade/io/weights.hpp"

namespace spade {

/// Value of the "format" field of a graph file.
inline constexpr std::string_view graph_format_name = "spade.graph";
/// Newest graph file version this code reads and the one it writes.
inline constexpr int graph_format_version = 1;

namespace detail {

// A double as JSON: a number when finite, else the tag text "nan", "inf" or "-inf".
inline nlohmann::json double_to_json(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    return v;
}

inline double json_to_double(const nlohmann::json& j, const std::string& what) {
    if (j.is_number()) return j.get<double>();
    if (j.is_string()) {
        const auto s = j.get<std::string>();
        if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
        if (s == "inf") return std::numeric_limits<double>::infinity();
        if (s == "-inf") return -std::numeric_limits<double>::infinity();
    }
    fail<FormatError>(what, " must be a number, \"nan\", \"inf\" or \"-inf\", got ", json_brief(j));
}

}  // namespace detail

/// One attribute as JSON; see the file comment for the encoding.
inline nlohmann::json attribute_to_json(const Attribute& a) {
    using nlohmann::json;
    return std::visit(
        [](const auto& v) -> json {
            using V = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<V, double>) {
                if (std::isfinite(v)) return v;
                return json{{"double", detail::double_to_json(v)}};
            } else if constexpr (std::is_same_v<V, std::vector<std::int64_t>>) {
                if (v.empty()) return json{{"ints", json::array()}};
                return v;
            } else if constexpr (std::is_same_v<V, std::vector<double>>) {
                bool plain = !v.empty();
                for (double d : v) plain = plain && std::isfinite(d);
                if (plain) return v;
                json arr = json::array();
                for (double d : v) arr.push_back(detail::double_to_json(d));
                return json{{"doubles", arr}};
            } else {
                return v;
            }
        },
        a);
}

/// Reads an attribute written by attribute_to_json (or by hand: plain JSON
/// integers are int64, numbers with a fraction or exponent are doubles, an
/// array with any such number is a double vector). `what` prefixes errors.
inline Attribute attribute_from_json(const nlohmann::json& j, const std::string& what) {
    if (j.is_boolean()) return j.get<bool>();
    if (j.is_number_integer()) return detail::json_int(j, what);
    if (j.is_number_float()) return j.get<double>();
    if (j.is_string()) return j.get<std::string>();
    if (j.is_array()) {
        bool any_float = false;
        for (std::size_t i = 0; i < j.size(); ++i) {
            if (!j[i].is_number()) fail<FormatError>(what, "[", i, "] must be a number, got ", detail::json_brief(j[i]));
            any_float = any_float || j[i].is_number_float();
        }
        if (any_float) {
            std::vector<double> v;
            for (const auto& e : j) v.push_back(e.get<double>());
            return v;
        }
        std::vector<std::int64_t> v;
        for (std::size_t i = 0; i < j.size(); ++i) v.push_back(detail::json_int(j[i], what + "[" + std::to_string(i) + "]"));
        return v;
    }
    if (j.is_object() && j.size() == 1) {
        const std::string tag = j.begin().key();
        const nlohmann::json& v = j.begin().value();
        const std::string w = what + "." + tag;
        if (tag == "bool") return detail::json_bool(v, w);
        if (tag == "int") return detail::json_int(v, w);
        if (tag == "double") return detail::json_to_double(v, w);
        if (tag == "string") return detail::json_string(v, w);
        if (tag == "ints" || tag == "doubles") {
            if (!v.is_array()) fail<FormatError>(w, " must be an array, got ", detail::json_brief(v));
            if (tag == "ints") {
                std::vector<std::int64_t> out;
                for (std::size_t i = 0; i < v.size(); ++i) out.push_back(detail::json_int(v[i], w + "[" + std::to_string(i) + "]"));
                return out;
            }
            std::vector<double> out;
            for (std::size_t i = 0; i < v.size(); ++i) out.push_back(detail::json_to_double(v[i], w + "[" + std::to_string(i) + "]"));
            return out;
        }
    }
    fail<FormatError>(what, ": cannot read an attribute from ", detail::json_brief(j),
                      " (expected a bool, number, string, array of numbers or {\"<type>\": value})");
}

/// The architecture of `g` as JSON (no weights); subgraphs are nested.
template <Scalar T>
nlohmann::json graph_to_json(const Graph<T>& g) {
    using nlohmann::json;
    json j;
    j["format"] = std::string(graph_format_name);
    j["version"] = graph_format_version;
    j["inputs"] = json::array();
    for (ValueId v : g.inputs()) j["inputs"].push_back({{"name", g.value(v).name}, {"shape", g.value(v).shape.dims()}});
    j["parameters"] = json::array();
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        const auto& p = g.parameter(static_cast<ParamId>(i));
        j["parameters"].push_back({{"name", p.name()}, {"shape", p.shape().dims()}, {"learnable", p.learnable()}});
    }
    j["nodes"] = json::array();
    for (const auto& n : g.nodes()) {
        json node;
        node["name"] = n.name;
        node["op"] = n.op->type();
        node["attributes"] = json::object();
        const Attributes attrs = n.op->attributes();
        for (const auto& [key, a] : attrs.items()) node["attributes"][key] = attribute_to_json(a);
        node["inputs"] = json::array();
        for (ValueId v : n.inputs) node["inputs"].push_back(g.value(v).name);
        node["parameters"] = json::array();
        for (ParamId p : n.params) node["parameters"].push_back(g.parameter(p).name());
        node["outputs"] = json::array();
        for (ValueId v : n.outputs) node["outputs"].push_back(g.value(v).name);
        const auto subs = n.op->subgraphs();
        if (!subs.empty()) {
            node["subgraphs"] = json::array();
            for (const Graph<T>* s : subs) node["subgraphs"].push_back(graph_to_json(*s));
        }
        j["nodes"].push_back(std::move(node));
    }
    j["outputs"] = json::array();
    for (ValueId v : g.outputs()) j["outputs"].push_back(g.value(v).name);
    return j;
}

/// Rebuilds a graph from graph_to_json's output, with zero-filled parameters of
/// the stored shapes. Ops are made through OpRegistry<T>::global(). Throws
/// FormatError naming `source_name` and the node for any defect.
template <Scalar T>
Graph<T> graph_from_json(const nlohmann::json& j, const std::string& source_name) {
    using nlohmann::json;
    const std::string& src = source_name;
    if (!j.is_object()) fail<FormatError>(src, ": a graph must be a JSON object, got ", detail::json_brief(j));
    const std::string format = detail::json_string(detail::json_field(j, "format", src), src + ": format");
    if (format != graph_format_name)
        fail<FormatError>(src, ": format is '", format, "', expected '", graph_format_name, "'");
    const std::int64_t version = detail::json_int(detail::json_field(j, "version", src), src + ": version");
    if (version < 1 || version > graph_format_version)
        fail<FormatError>(src, ": graph file version ", version, " is not supported (this reader knows 1 to ",
                          graph_format_version, ")");

    Graph<T> g;
    std::unordered_map<std::string, ValueId> values;
    auto array_field = [&](const json& obj, const char* key, const std::string& where) -> const json& {
        const json& a = detail::json_field(obj, key, where);
        if (!a.is_array()) fail<FormatError>(where, ": '", key, "' must be an array, got ", detail::json_brief(a));
        return a;
    };

    const json& params = array_field(j, "parameters", src);
    for (std::size_t i = 0; i < params.size(); ++i) {
        const std::string w = src + ": parameters[" + std::to_string(i) + "]";
        const std::string name = detail::json_string(detail::json_field(params[i], "name", w), w + ".name");
        const std::string wp = src + ": parameter '" + name + "'";
        Shape shape = detail::json_shape(detail::json_field(params[i], "shape", wp), wp + ": shape");
        bool learnable = params[i].contains("learnable") ? detail::json_bool(params[i]["learnable"], wp + ": learnable") : true;
        if (g.has_parameter(name)) fail<FormatError>(wp, ": declared twice");
        g.add_parameter(Parameter<T>(name, std::move(shape), learnable));
    }

    const json& inputs = array_field(j, "inputs", src);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const std::string w = src + ": inputs[" + std::to_string(i) + "]";
        const std::string name = detail::json_string(detail::json_field(inputs[i], "name", w), w + ".name");
        const std::string wi = src + ": input '" + name + "'";
        Shape shape = detail::json_shape(detail::json_field(inputs[i], "shape", wi), wi + ": shape");
        if (values.count(name)) fail<FormatError>(wi, ": value name used twice");
        values[name] = g.add_input(name, std::move(shape));
    }

    const auto& registry = OpRegistry<T>::global();
    const json& nodes = array_field(j, "nodes", src);
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        const json& jn = nodes[i];
        const std::string wi = src + ": nodes[" + std::to_string(i) + "]";
        const std::string name = detail::json_string(detail::json_field(jn, "name", wi), wi + ".name");
        const std::string w = src + ": node '" + name + "'";
        const std::string type = detail::json_string(detail::json_field(jn, "op", w), w + ": op");
        if (!registry.has(type)) fail<FormatError>(w, ": unknown op type '", type,
                                                 "' (not registered: include the header defining it, or spade/spade.hpp)");

        Attributes attrs;
        if (jn.contains("attributes")) {
            const json& ja = jn["attributes"];
            if (!ja.is_object()) fail<FormatError>(w, ": attributes must be an object, got ", detail::json_brief(ja));
            for (const auto& [key, v] : ja.items()) attrs.set(key, attribute_from_json(v, w + ": attribute '" + key + "'"));
        }
        std::vector<ValueId> in;
        for (const auto& vname : detail::json_strings(detail::json_field(jn, "inputs", w), w + ": inputs")) {
            auto it = values.find(vname);
            if (it == values.end()) fail<FormatError>(w, ": unknown input value '", vname, "'");
            in.push_back(it->second);
        }
        std::vector<ParamId> ps;
        if (jn.contains("parameters"))
            for (const auto& pname : detail::json_strings(jn["parameters"], w + ": parameters")) {
                if (!g.has_parameter(pname)) fail<FormatError>(w, ": unknown parameter '", pname, "'");
                ps.push_back(g.param_id(pname));
            }
        std::vector<Graph<T>> subgraphs;
        if (jn.contains("subgraphs")) {
            const json& js = array_field(jn, "subgraphs", w);
            for (std::size_t k = 0; k < js.size(); ++k)
                subgraphs.push_back(graph_from_json<T>(js[k], w + ": subgraph " + std::to_string(k)));
        }

        NodeId id = -1;
        try {
            id = g.add_node(name, registry.make(type, attrs, std::move(subgraphs)), std::move(in), std::move(ps));
        } catch (const Error& e) {
            fail<FormatError>(w, " (", type, "): ", e.what());
        }
        std::vector<std::string> made;
        for (ValueId v : g.node(id).outputs) {
            made.push_back(g.value(v).name);
            values[g.value(v).name] = v;
        }
        if (jn.contains("outputs")) {
            auto listed = detail::json_strings(jn["outputs"], w + ": outputs");
            if (listed != made)
                fail<FormatError>(w, ": the file names its outputs ", detail::quoted_list(listed),
                                  " but the graph names them ", detail::quoted_list(made));
        }
    }

    for (const auto& vname : detail::json_strings(detail::json_field(j, "outputs", src), src + ": outputs")) {
        auto it = values.find(vname);
        if (it == values.end()) fail<FormatError>(src, ": unknown output value '", vname, "'");
        g.add_output(it->second);
    }
    return g;
}

/// Writes the architecture to `json_path` and the weights to `safetensors_path`.
template <Scalar T>
void save_graph(const Graph<T>& g, const std::filesystem::path& json_path, const std::filesystem::path& safetensors_path) {
    std::string text;
    try {
        detail::write_json_pretty(text, graph_to_json(g));
        text += "\n";
    } catch (const nlohmann::json::exception& e) {
        fail<FormatError>("graph file '", json_path.string(), "': a name is not valid UTF-8 (", e.what(), ")");
    }
    detail::write_file_atomically(json_path, [&](std::ostream& os) { os.write(text.data(), static_cast<std::streamsize>(text.size())); });
    save_weights(g, safetensors_path);
}

/// Reads a graph saved by save_graph: the architecture from `json_path`, then
/// the weights from `safetensors_path`, strictly (every parameter, nothing else).
template <Scalar T>
Graph<T> load_graph(const std::filesystem::path& json_path, const std::filesystem::path& safetensors_path) {
    const auto bytes = detail::read_file_bytes(json_path);
    const auto j = detail::parse_json(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                                      "graph file '" + json_path.string() + "'");
    Graph<T> g = graph_from_json<T>(j, "graph file '" + json_path.string() + "'");
    load_weights(g, safetensors_path, LoadOptions{.strict = true});
    return g;
}

}  // namespace spade
