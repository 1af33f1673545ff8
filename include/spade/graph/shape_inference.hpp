// Shape inference and MACs over a whole graph for given input shapes, without
// allocating activations (the executor and the MACs counter both use it).
#pragma once

#include <span>
#include <vector>

#include "spade/graph/graph.hpp"

namespace spade {

/// Shape of every value (indexed by ValueId) when the inputs have `inputs` shapes.
/// Throws ShapeError naming the first node that rejects its input shapes.
template <Scalar T>
std::vector<Shape> infer_value_shapes(const Graph<T>& g, std::span<const Shape> inputs) {
    if (inputs.size() != g.inputs().size())
        fail<ShapeError>("graph expects ", g.inputs().size(), " input shape(s), got ", inputs.size());
    std::vector<Shape> shapes(g.values().size());
    for (std::size_t i = 0; i < inputs.size(); ++i) shapes[g.inputs()[i]] = inputs[i];
    for (std::size_t i = 0; i < g.nodes().size(); ++i) {
        const auto& n = g.nodes()[i];
        std::vector<Shape> in, ps = g.param_shapes(static_cast<NodeId>(i));
        for (ValueId v : n.inputs) in.push_back(shapes[v]);
        auto out = n.op->infer_shapes(ShapeContext{n.name, in, ps});
        if (out.size() != n.outputs.size())
            fail<GraphError>("node '", n.name, "' produced ", out.size(), " shapes for ", n.outputs.size(), " outputs");
        for (std::size_t k = 0; k < out.size(); ++k) shapes[n.outputs[k]] = std::move(out[k]);
    }
    return shapes;
}

/// Example input shapes the graph was built with.
template <Scalar T>
std::vector<Shape> example_input_shapes(const Graph<T>& g) {
    std::vector<Shape> s;
    for (ValueId v : g.inputs()) s.push_back(g.value(v).shape);
    return s;
}

/// MACs of every node (indexed by NodeId) given all value shapes.
template <Scalar T>
std::vector<Index> node_macs(const Graph<T>& g, const std::vector<Shape>& value_shapes) {
    std::vector<Index> macs;
    for (std::size_t i = 0; i < g.nodes().size(); ++i) {
        const auto& n = g.nodes()[i];
        std::vector<Shape> in, out, ps = g.param_shapes(static_cast<NodeId>(i));
        for (ValueId v : n.inputs) in.push_back(value_shapes[v]);
        for (ValueId v : n.outputs) out.push_back(value_shapes[v]);
        macs.push_back(n.op->macs(ShapeContext{n.name, in, ps}, out));
    }
    return macs;
}

/// Total MACs of one forward pass at the given input shapes.
template <Scalar T>
Index total_macs(const Graph<T>& g, std::span<const Shape> inputs) {
    Index s = 0;
    for (Index m : node_macs(g, infer_value_shapes(g, inputs))) s += m;
    return s;
}

}  // namespace spade
