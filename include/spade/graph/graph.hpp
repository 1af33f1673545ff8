// Graph: the one object that carries a model through building, loading,
// running and pruning. Nodes are kept in topological order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "spade/graph/op.hpp"
#include "spade/graph/parameter.hpp"

namespace spade {

using ValueId = int;
using NodeId = int;
using ParamId = int;

/// An activation tensor flowing between nodes.
struct Value {
    std::string name;
    NodeId producer = -1;  ///< -1 for a graph input
    int output_index = 0;  ///< which output of the producer
    Shape shape;           ///< shape at the example input shape the graph was built with
};

/// One layer: an op applied to values, with its parameters.
template <Scalar T>
struct Node {
    std::string name;
    std::unique_ptr<Op<T>> op;
    std::vector<ValueId> inputs;
    std::vector<ValueId> outputs;
    std::vector<ParamId> params;  ///< in `op->param_roles()` order
};

/// A model: named nodes, values and parameters, any number of inputs and outputs.
template <Scalar T>
class Graph {
public:
    using scalar_type = T;

    Graph() = default;
    Graph(Graph&&) noexcept = default;
    Graph& operator=(Graph&&) noexcept = default;
    /// Deep copy: ops are cloned and every parameter of the copy owns its storage.
    Graph(const Graph& o)
        : values_(o.values_), inputs_(o.inputs_), outputs_(o.outputs_), value_ids_(o.value_ids_),
          node_ids_(o.node_ids_), param_ids_(o.param_ids_), version_(o.version_) {
        for (const auto& n : o.nodes_) nodes_.push_back({n.name, n.op->clone(), n.inputs, n.outputs, n.params});
        for (const auto& p : o.params_) params_.push_back(std::make_unique<Parameter<T>>(*p));
    }
    Graph& operator=(const Graph& o) {
        if (this != &o) *this = Graph(o);
        return *this;
    }

    // -- building -------------------------------------------------------------

    /// Declares a graph input; `shape` is an example shape (batch and spatial
    /// extents may differ at run time, ranks and channels may not).
    ValueId add_input(const std::string& name, Shape shape) {
        ValueId v = add_value(name, -1, 0, std::move(shape));
        inputs_.push_back(v);
        return v;
    }
    /// Adds a parameter; throws GraphError on a duplicate name.
    ParamId add_parameter(Parameter<T> p) {
        if (param_ids_.count(p.name())) fail<GraphError>("duplicate parameter name '", p.name(), "'");
        ParamId id = static_cast<ParamId>(params_.size());
        param_ids_[p.name()] = id;
        params_.push_back(std::make_unique<Parameter<T>>(std::move(p)));
        ++version_;
        return id;
    }
    /// Appends a node, infers its output shapes and returns its id. Output values
    /// are named after the node ("conv1"), or "node:k" when it has several outputs.
    NodeId add_node(const std::string& name, std::unique_ptr<Op<T>> op, std::vector<ValueId> inputs,
                    std::vector<ParamId> params) {
        if (name.empty()) fail<GraphError>("node of type ", op ? op->type() : "?", " has an empty name");
        if (node_ids_.count(name)) fail<GraphError>("duplicate node name '", name, "'");
        if (!op) fail<GraphError>("node '", name, "' has no op");
        for (ValueId v : inputs)
            if (v < 0 || v >= static_cast<ValueId>(values_.size()))
                fail<GraphError>("node '", name, "': input value id ", v, " does not exist");
        for (ParamId p : params)
            if (p < 0 || p >= static_cast<ParamId>(params_.size()))
                fail<GraphError>("node '", name, "': parameter id ", p, " does not exist");
        auto roles = op->param_roles();
        if (roles.size() != params.size())
            fail<GraphError>("node '", name, "' (", op->type(), "): op takes ", roles.size(), " parameter(s), got ",
                             params.size());
        std::vector<Shape> in, ps;
        for (ValueId v : inputs) in.push_back(values_[v].shape);
        for (ParamId p : params) ps.push_back(params_[p]->shape());
        std::vector<Shape> out = op->infer_shapes(ShapeContext{name, in, ps});
        for (std::size_t k = 0; k < out.size(); ++k)  // check every name before adding anything
            if (value_ids_.count(out.size() == 1 ? name : name + ":" + std::to_string(k)))
                fail<GraphError>("node '", name, "': an output value named like it already exists");
        NodeId id = static_cast<NodeId>(nodes_.size());
        Node<T> node{name, std::move(op), std::move(inputs), {}, std::move(params)};
        for (std::size_t k = 0; k < out.size(); ++k) {
            std::string vname = out.size() == 1 ? name : name + ":" + std::to_string(k);
            node.outputs.push_back(add_value(vname, id, static_cast<int>(k), std::move(out[k])));
        }
        node_ids_[name] = id;
        nodes_.push_back(std::move(node));
        ++version_;
        return id;
    }
    /// Marks a value as a graph output.
    void add_output(ValueId v) {
        check_value(v);
        outputs_.push_back(v);
        ++version_;
    }

    // -- reading --------------------------------------------------------------

    const std::vector<Node<T>>& nodes() const { return nodes_; }
    const Node<T>& node(NodeId id) const { return nodes_.at(static_cast<std::size_t>(id)); }
    const std::vector<Value>& values() const { return values_; }
    const Value& value(ValueId id) const {
        check_value(id);
        return values_[static_cast<std::size_t>(id)];
    }
    const std::vector<ValueId>& inputs() const { return inputs_; }
    const std::vector<ValueId>& outputs() const { return outputs_; }
    std::size_t num_parameters() const { return params_.size(); }
    Parameter<T>& parameter(ParamId id) { return *params_.at(static_cast<std::size_t>(id)); }
    const Parameter<T>& parameter(ParamId id) const { return *params_.at(static_cast<std::size_t>(id)); }
    /// Parameter by name; throws GraphError if absent.
    Parameter<T>& parameter(const std::string& name) { return parameter(param_id(name)); }
    const Parameter<T>& parameter(const std::string& name) const { return parameter(param_id(name)); }

    ParamId param_id(const std::string& name) const { return lookup(param_ids_, name, "parameter"); }
    NodeId node_id(const std::string& name) const { return lookup(node_ids_, name, "node"); }
    ValueId value_id(const std::string& name) const { return lookup(value_ids_, name, "value"); }
    bool has_parameter(const std::string& name) const { return param_ids_.count(name) != 0; }
    bool has_node(const std::string& name) const { return node_ids_.count(name) != 0; }

    /// Shapes of a node's parameters, in role order.
    std::vector<Shape> param_shapes(NodeId id) const {
        std::vector<Shape> s;
        for (ParamId p : node(id).params) s.push_back(params_[p]->shape());
        return s;
    }
    /// Counter bumped by every structural change; plans compiled earlier compare it.
    std::uint64_t version() const { return version_; }
    /// Marks the graph as changed (call after rewriting parameter shapes in place).
    void touch() { ++version_; }

    // -- rewriting (channel surgery) -----------------------------------------

    /// Mutable node access, for algorithms that rewrite ops in place.
    Node<T>& mutable_node(NodeId id) { return nodes_.at(static_cast<std::size_t>(id)); }
    /// Sets the example shape of a value (after surgery changed its channels).
    void set_value_shape(ValueId id, Shape shape) noexcept { values_[static_cast<std::size_t>(id)].shape = std::move(shape); }

    /// Re-infers every value's example shape from the inputs' example shapes.
    void reinfer_shapes() {
        for (std::size_t i = 0; i < nodes_.size(); ++i) {
            auto& n = nodes_[i];
            std::vector<Shape> in, ps = param_shapes(static_cast<NodeId>(i));
            for (ValueId v : n.inputs) in.push_back(values_[v].shape);
            auto out = n.op->infer_shapes(ShapeContext{n.name, in, ps});
            for (std::size_t k = 0; k < out.size(); ++k) values_[n.outputs[k]].shape = out[k];
        }
    }

private:
    ValueId add_value(const std::string& name, NodeId producer, int index, Shape shape) {
        if (value_ids_.count(name)) fail<GraphError>("duplicate value name '", name, "'");
        ValueId id = static_cast<ValueId>(values_.size());
        values_.push_back({name, producer, index, std::move(shape)});
        value_ids_[name] = id;
        return id;
    }
    void check_value(ValueId v) const {
        if (v < 0 || v >= static_cast<ValueId>(values_.size())) fail<GraphError>("value id ", v, " does not exist");
    }
    static int lookup(const std::unordered_map<std::string, int>& m, const std::string& name, const char* what) {
        auto it = m.find(name);
        if (it == m.end()) fail<GraphError>("no ", what, " named '", name, "'");
        return it->second;
    }

    std::vector<Node<T>> nodes_;
    std::vector<Value> values_;
    std::vector<std::unique_ptr<Parameter<T>>> params_;  // stable addresses
    std::vector<ValueId> inputs_, outputs_;
    std::unordered_map<std::string, int> value_ids_, node_ids_, param_ids_;
    std::uint64_t version_ = 0;
};

}  // namespace spade
