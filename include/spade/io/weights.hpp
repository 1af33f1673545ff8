// Weights of a graph as a safetensors file, named as the graph names its
// parameters (torchvision names for the zoo), so PyTorch state_dicts exported
// with safetensors load unchanged. Parameters of subgraphs (a FixedPoint's
// body) are stored under "<node>.<k>.<parameter>".
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "spade/graph/graph.hpp"
#include "spade/io/safetensors.hpp"

namespace spade {

/// How load_weights treats names that do not match.
struct LoadOptions {
    bool strict = true;  ///< graph parameters absent from the file and file tensors absent from the graph are errors
};

/// Names that did not match in a non-strict load.
struct LoadReport {
    std::vector<std::string> missing;     ///< graph parameters the file lacks (left unchanged)
    std::vector<std::string> unexpected;  ///< file tensors the graph lacks (ignored)
};

namespace detail {

/// Every parameter of `g` and, recursively, of its nodes' subgraphs, with its file name.
/// `G` is Graph<T> or const Graph<T>.
template <class G>
void collect_parameters(G& g, const std::string& prefix, auto& out) {
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        auto& p = g.parameter(static_cast<ParamId>(i));
        out.emplace_back(prefix + p.name(), &p);
    }
    for (const auto& node : g.nodes()) {
        auto subs = node.op->subgraphs();
        for (std::size_t k = 0; k < subs.size(); ++k) {
            // Op::subgraphs() hands out const pointers; the subgraphs are members of an
            // op that `g` owns, so when `g` is mutable they are too and the cast is sound.
            G& sub = const_cast<G&>(*subs[k]);
            collect_parameters(sub, prefix + node.name + "." + std::to_string(k) + ".", out);
        }
    }
}

/// True for the BatchNorm step counters PyTorch keeps in state_dicts; spade has no use for them.
inline bool is_num_batches_tracked(const std::string& name) {
    constexpr std::string_view suffix = "num_batches_tracked";
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
           (name.size() == suffix.size() || name[name.size() - suffix.size() - 1] == '.');
}

/// Lists up to 10 names for a message.
inline std::string quoted_list(const std::vector<std::string>& names) {
    std::string s;
    for (std::size_t i = 0; i < names.size() && i < 10; ++i) s += (i ? ", '" : "'") + names[i] + "'";
    if (names.size() > 10) s += " and " + std::to_string(names.size() - 10) + " more";
    return s;
}

}  // namespace detail

/// Writes every parameter of `g` (and of its subgraphs) to `path`, in graph order.
template <Scalar T>
void save_weights(const Graph<T>& g, const std::filesystem::path& path) {
    std::vector<std::pair<std::string, const Parameter<T>*>> params;
    detail::collect_parameters(g, "", params);
    std::vector<std::pair<std::string, TensorRef<const T>>> tensors;
    for (const auto& [name, p] : params) tensors.emplace_back(name, p->ref());
    write_safetensors<T>(path, tensors);
}

/// Copies the tensors of `file` into the existing parameter buffers of `g`
/// (a parameter viewing the caller's memory receives the values there),
/// converting the dtype. Everything is checked before anything is written, so
/// a failed load leaves `g` unchanged. `*.num_batches_tracked` tensors are
/// always skipped. Throws FormatError naming the file and tensor.
template <Scalar T>
LoadReport load_weights(Graph<T>& g, const SafetensorsFile& file, LoadOptions opts = {}) {
    const std::string where = "safetensors file '" + file.source() + "'";
    std::vector<std::pair<std::string, Parameter<T>*>> params;
    detail::collect_parameters(g, "", params);

    LoadReport report;
    std::map<std::string, Parameter<T>*> by_name;
    for (const auto& [name, p] : params) {
        by_name.emplace(name, p);
        if (!file.contains(name)) {
            report.missing.push_back(name);
            continue;
        }
        const TensorInfo& ti = file.info(name);
        if (ti.shape != p->shape())
            fail<FormatError>(where, ": tensor '", name, "' has shape ", ti.shape, " but the graph parameter has shape ",
                              p->shape());
        file.check_readable<T>(name);
    }
    for (const auto& name : file.names())
        if (!by_name.count(name) && !detail::is_num_batches_tracked(name)) report.unexpected.push_back(name);
    if (opts.strict && !report.missing.empty())
        fail<FormatError>(where, ": missing graph parameter(s) ", detail::quoted_list(report.missing));
    if (opts.strict && !report.unexpected.empty())
        fail<FormatError>(where, ": unexpected tensor(s) ", detail::quoted_list(report.unexpected),
                          " (no graph parameter has that name)");

    for (const auto& [name, p] : params)
        if (file.contains(name)) file.read_into<T>(name, std::span<T>(p->data(), static_cast<std::size_t>(p->numel())));
    return report;
}

/// Reads `path` and loads it into `g`; see the overload taking a SafetensorsFile.
template <Scalar T>
LoadReport load_weights(Graph<T>& g, const std::filesystem::path& path, LoadOptions opts = {}) {
    return load_weights(g, SafetensorsFile::open(path), opts);
}

}  // namespace spade
