// MACs and parameter counts per layer and in total, counted the way the
// PyTorch ecosystem counts them (see DESIGN.md, Conventions; each op's
// `macs()` holds its own rule), so figures compare with other tools.
#pragma once

#include <cstdio>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "spade/graph/shape_inference.hpp"

namespace spade {

/// Counts for one node.
struct LayerCount {
    std::string name;
    std::string type;
    Shape output;       ///< shape of the node's first output
    Index macs = 0;
    Index params = 0;   ///< learnable parameters first used by this node (shared ones count once)
};

/// Counts for a whole graph.
struct ModelCount {
    std::vector<LayerCount> layers;
    Index macs = 0;
    Index params = 0;

    /// Prints a per-layer table with totals.
    void print(std::ostream& os, bool skip_empty = false) const {
        char line[256];
        std::snprintf(line, sizeof line, "%-44s %-18s %-22s %15s %12s\n", "layer", "op", "output", "MACs", "params");
        os << line << std::string(115, '-') << '\n';
        for (const auto& l : layers) {
            if (skip_empty && l.macs == 0 && l.params == 0) continue;
            std::snprintf(line, sizeof line, "%-44s %-18s %-22s %15lld %12lld\n", l.name.c_str(), l.type.c_str(),
                          l.output.str().c_str(), static_cast<long long>(l.macs), static_cast<long long>(l.params));
            os << line;
        }
        os << std::string(115, '-') << '\n';
        std::snprintf(line, sizeof line, "%-86s %15lld %12lld\n", "total", static_cast<long long>(macs),
                      static_cast<long long>(params));
        os << line;
    }
};

/// Learnable parameter count, subgraphs' (FixedPoint bodies) included; a parameter
/// shared by several nodes counts once.
template <Scalar T>
Index count_params(const Graph<T>& g) {
    Index n = 0;
    for (std::size_t i = 0; i < g.num_parameters(); ++i)
        if (g.parameter(static_cast<ParamId>(i)).learnable()) n += g.parameter(static_cast<ParamId>(i)).numel();
    for (const auto& node : g.nodes())
        for (const Graph<T>* sub : node.op->subgraphs()) n += count_params(*sub);
    return n;
}

/// Per-layer MACs and params at the given input shapes (default: the graph's example shapes).
template <Scalar T>
ModelCount count(const Graph<T>& g, std::vector<Shape> inputs = {}) {
    if (inputs.empty()) inputs = example_input_shapes(g);
    const auto shapes = infer_value_shapes(g, inputs);
    const auto macs = node_macs(g, shapes);
    ModelCount c;
    std::set<ParamId> seen;
    for (std::size_t i = 0; i < g.nodes().size(); ++i) {
        const auto& n = g.nodes()[i];
        LayerCount l{n.name, n.op->type(), n.outputs.empty() ? Shape{} : shapes[n.outputs[0]], macs[i], 0};
        for (ParamId p : n.params)
            if (g.parameter(p).learnable() && seen.insert(p).second) l.params += g.parameter(p).numel();
        c.macs += l.macs;
        c.params += l.params;
        c.layers.push_back(std::move(l));
    }
    // parameters used by no node still count as the model's parameters
    for (std::size_t i = 0; i < g.num_parameters(); ++i)
        if (!seen.count(static_cast<ParamId>(i)) && g.parameter(static_cast<ParamId>(i)).learnable())
            c.params += g.parameter(static_cast<ParamId>(i)).numel();
    return c;
}

}  // namespace spade
