// Op: everything the library knows about one kind of layer, behind one
// interface. Generic algorithms (executor, MACs counter, file formats and,
// later, the channel tracer and surgery) only call these methods.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spade/core/scalar.hpp"
#include "spade/graph/attributes.hpp"
#include "spade/tensor/tensor.hpp"

namespace spade {

template <Scalar T>
class Graph;

/// One parameter slot of an op: the suffix of its name ("weight") and whether it is trained.
struct ParamRole {
    std::string name;
    bool learnable = true;
};

/// What an op sees when it infers shapes or counts MACs.
struct ShapeContext {
    std::string_view node;          ///< node name, for error messages
    std::span<const Shape> inputs;  ///< shapes of the node's inputs
    std::span<const Shape> params;  ///< shapes of the node's parameters, in `param_roles()` order

    /// Throws ShapeError unless there are exactly `n` inputs.
    void expect_inputs(std::string_view op, std::size_t n) const {
        if (inputs.size() != n) fail<ShapeError>("node '", node, "' (", op, "): expects ", n, " input(s), got ", inputs.size());
    }
    /// Throws ShapeError unless input `i` has rank `r`.
    void expect_rank(std::string_view op, std::size_t i, int r) const {
        if (inputs[i].rank() != r)
            fail<ShapeError>("node '", node, "' (", op, "): input ", i, " has shape ", inputs[i], ", expected rank ", r);
    }
    /// Throws ShapeError unless parameter `i` has shape `s`.
    void expect_param(std::string_view op, std::size_t i, std::string_view role, const Shape& s) const {
        if (params.size() <= i)
            fail<ShapeError>("node '", node, "' (", op, "): missing parameter '", role, "'");
        if (params[i] != s)
            fail<ShapeError>("node '", node, "' (", op, "): parameter '", role, "' has shape ", params[i], ", expected ", s);
    }
};

/// What an op sees when it runs forward. Inputs, outputs and params are contiguous.
template <class T>
struct ForwardContext {
    std::string_view node;
    std::span<const TensorRef<const T>> inputs;
    std::span<const TensorRef<T>> outputs;
    std::span<const TensorRef<const T>> params;
    std::span<T> workspace;  ///< scratch of at least `workspace_size()` elements
};

/// Interface of every op, built-in or the user's own. One object per node;
/// attributes are fixed at construction, channel counts come from parameter
/// and input shapes so that channel surgery only has to rewrite parameters.
template <class T>
class Op {
public:
    virtual ~Op() = default;

    /// Registered type name, e.g. "Conv2d".
    virtual std::string type() const = 0;
    /// Parameter slots in the order the node lists its parameters.
    virtual std::vector<ParamRole> param_roles() const { return {}; }
    /// Output shapes from input and parameter shapes; throws ShapeError naming the node.
    virtual std::vector<Shape> infer_shapes(const ShapeContext& ctx) const = 0;
    /// Computes the outputs. Called only after `infer_shapes` accepted the shapes.
    virtual void forward(const ForwardContext<T>& ctx) const = 0;
    /// Multiply-accumulates of one forward pass (PyTorch-ecosystem counting).
    virtual Index macs(const ShapeContext& /*ctx*/, std::span<const Shape> /*outputs*/) const { return 0; }
    /// Scratch elements `forward` needs (im2col buffers, ...).
    virtual Index workspace_size(const ShapeContext& /*ctx*/, std::span<const Shape> /*outputs*/) const { return 0; }
    /// Settings that, with the type name, rebuild the op through the registry.
    virtual Attributes attributes() const { return {}; }
    /// Subgraphs the op owns and runs (fixed-point and loop ops).
    virtual std::vector<const Graph<T>*> subgraphs() const { return {}; }
    /// Deep copy.
    virtual std::unique_ptr<Op> clone() const = 0;
};

/// CRTP helper that implements `clone()` for a copyable op.
template <class Derived, class T>
class OpBase : public Op<T> {
public:
    std::unique_ptr<Op<T>> clone() const override {
        return std::make_unique<Derived>(static_cast<const Derived&>(*this));
    }
};

}  // namespace spade
