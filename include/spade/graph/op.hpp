// Op: everything the library knows about one kind of layer, behind one
// interface. Generic algorithms (executor, MACs counter, file formats, the
// channel tracer and channel surgery) only call these methods.
#pragma once

#include <cstdint>
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

/// Base of what an op packs its parameters into ahead of inference (Op::pack):
/// weights in the layout its kernel reads, made once per plan instead of every call.
struct PackedParams {
    virtual ~PackedParams() = default;
    /// Memory the pack holds.
    virtual Index bytes() const = 0;
};

/// What an op sees when it runs forward. Inputs, outputs and params are contiguous.
template <class T>
struct ForwardContext {
    std::string_view node;
    std::span<const TensorRef<const T>> inputs;
    std::span<const TensorRef<T>> outputs;
    std::span<const TensorRef<const T>> params;
    std::span<T> workspace;  ///< scratch of at least `workspace_size()` elements
    /// What `Op::pack` made of the node's parameters for the executor's current plan,
    /// or null (no packing, or the executor does not pre-pack): then the op packs as it goes.
    const PackedParams* packed = nullptr;
};

/// One channel axis an op touches: axis 1 of an input or output value, an axis
/// of one of its parameters, or axis 1 of an input or output of a subgraph it owns.
struct ChannelAxis {
    enum class Kind : std::uint8_t { input, output, param, sub_input, sub_output };
    Kind kind = Kind::input;
    int index = 0;  ///< input, output or parameter slot; for sub_*, position in the subgraph's inputs/outputs
    int axis = 1;   ///< parameter axis (values always carry channels on axis 1)
    int sub = 0;    ///< subgraph, for sub_*
    /// For a parameter axis: > 1 when the rows of axis 0 fall into `groups` equal
    /// blocks and row block g uses its own copy of this axis (a grouped conv's
    /// input axis). The channel space is then `groups` times the axis extent.
    Index groups = 1;
    const char* label = nullptr;  ///< "out" / "in", shown by describe()

    static ChannelAxis input(int i) { return {Kind::input, i, 1, 0, 1, nullptr}; }
    static ChannelAxis output(int i) { return {Kind::output, i, 1, 0, 1, nullptr}; }
    static ChannelAxis param(int i, int axis, const char* label = nullptr) {
        return {Kind::param, i, axis, 0, 1, label};
    }
    /// Axis `axis` of parameter `i`, split by `groups` row blocks of axis 0 (see `groups`).
    static ChannelAxis grouped_param(int i, int axis, Index groups, const char* label = nullptr) {
        return {Kind::param, i, axis, 0, groups, label};
    }
    static ChannelAxis sub_input(int sub, int i) { return {Kind::sub_input, i, 1, sub, 1, nullptr}; }
    static ChannelAxis sub_output(int sub, int i) { return {Kind::sub_output, i, 1, sub, 1, nullptr}; }
};

/// One relation of a channel rule between two channel axes (or a property of one).
struct ChannelLink {
    enum class Kind : std::uint8_t {
        same,    ///< a[i] is b[i]
        offset,  ///< a[i] is b[n + i] (a is a part of b)
        blocks,  ///< a[c] is each of b[c n .. c n + n) (b is a finer copy of a)
        tie,     ///< each run of n adjacent channels of a leaves together
        even,    ///< a falls into n equal blocks that must lose equally many channels
        fixed,   ///< a must keep all its channels
    };
    Kind kind;
    ChannelAxis a, b;
    Index n = 0;
    std::string reason;  ///< for `fixed`
};

/// What an op sees when it states its channel rule: the shapes of its inputs,
/// outputs and parameters, and calls that record how channels flow. The
/// channel tracer turns the links of every node into groups of channels that
/// must be removed together. Any input or output (of rank >= 2) or parameter
/// axis that the rule never mentions is pinned: it never loses channels.
class ChannelRules {
public:
    ChannelRules(std::string_view node, std::span<const Shape> inputs, std::span<const Shape> outputs,
                 std::span<const Shape> params)
        : node_(node), inputs_(inputs), outputs_(outputs), params_(params) {}

    std::string_view node() const { return node_; }
    std::span<const Shape> inputs() const { return inputs_; }
    std::span<const Shape> outputs() const { return outputs_; }
    std::span<const Shape> params() const { return params_; }

    /// Channel i of `a` is channel i of `b` (identity map).
    void same(ChannelAxis a, ChannelAxis b) { add(ChannelLink::Kind::same, a, b, 0); }
    /// Channel i of `part` is channel `off + i` of `whole` (Concat, Split, Slice).
    void offset(ChannelAxis part, ChannelAxis whole, Index off) {
        add(ChannelLink::Kind::offset, part, whole, off);
    }
    /// Channel c of `coarse` is channels [c s, (c+1) s) of `fine` (Flatten, PixelShuffle, depthwise multiplier).
    void blocks(ChannelAxis coarse, ChannelAxis fine, Index s) {
        add(ChannelLink::Kind::blocks, coarse, fine, s);
    }
    /// Channels of `a` leave in whole runs of `chunk` adjacent channels (GroupNorm groups).
    void tie(ChannelAxis a, Index chunk) { add(ChannelLink::Kind::tie, a, a, chunk); }
    /// `a` is `groups` equal blocks that must lose equally many channels (grouped conv).
    void even(ChannelAxis a, Index groups) { add(ChannelLink::Kind::even, a, a, groups); }
    /// `a` keeps all its channels; `reason` says why (shown when a group is not prunable).
    void fixed(ChannelAxis a, std::string reason) {
        add(ChannelLink::Kind::fixed, a, a, 0, std::move(reason));
    }
    /// Input 0 and output 0 are one space and, if `with_params`, so is every
    /// parameter (the rule of per-channel layers: norms, per-channel slopes and scales).
    void per_channel(bool with_params = false) {
        same(ChannelAxis::input(0), ChannelAxis::output(0));
        if (with_params)
            for (int p = 0; p < static_cast<int>(params_.size()); ++p) same(ChannelAxis::output(0), ChannelAxis::param(p, 0));
    }

    const std::vector<ChannelLink>& links() const { return links_; }

private:
    void add(ChannelLink::Kind k, ChannelAxis a, ChannelAxis b, Index n, std::string reason = {}) {
        links_.push_back(ChannelLink{k, a, b, n, std::move(reason)});
    }
    std::string_view node_;
    std::span<const Shape> inputs_, outputs_, params_;
    std::vector<ChannelLink> links_;
};

/// What channel surgery tells an op whose channels changed: the channels removed
/// from each input and output (sorted indices, empty when unchanged) and the
/// shapes after surgery.
struct ChannelChange {
    std::string_view node;
    std::span<const std::vector<Index>> removed_inputs;
    std::span<const std::vector<Index>> removed_outputs;
    std::span<const Shape> inputs;   ///< input shapes after surgery
    std::span<const Shape> outputs;  ///< output shapes after surgery
    std::span<const Shape> params;   ///< parameter shapes after surgery
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
    /// Parameters packed for `forward` at these shapes (passed back as ForwardContext::packed),
    /// or null if the op reads them as they are. An executor that pre-packs calls this once
    /// per plan, so the result is stale once the parameter values change.
    virtual std::unique_ptr<PackedParams> pack(const ShapeContext& /*ctx*/,
                                               std::span<const TensorRef<const T>> /*params*/) const {
        return nullptr;
    }
    /// Where each input lies inside output 0 (element offsets) when the op only lays
    /// its inputs side by side, as Concat does for one image; empty otherwise. An
    /// executor may then place every input there from the start, and `forward` must
    /// leave an input alone whose data already sits at its offset.
    virtual std::vector<Index> input_placement(std::span<const Shape> /*inputs*/,
                                               std::span<const Shape> /*outputs*/) const {
        return {};
    }
    /// Settings that, with the type name, rebuild the op through the registry.
    virtual Attributes attributes() const { return {}; }
    /// Subgraphs the op owns and runs (fixed-point and loop ops).
    virtual std::vector<const Graph<T>*> subgraphs() const { return {}; }
    /// The same subgraphs, for channel surgery to rewrite their parameters.
    virtual std::vector<Graph<T>*> mutable_subgraphs() { return {}; }
    /// States how channels flow between inputs, outputs and parameters (see
    /// ChannelRules). The default states nothing, which pins every channel axis
    /// of the node: an op without a rule is never cut into.
    virtual void channel_rule(ChannelRules& /*rules*/) const {}
    /// After channel surgery: a copy of the op with attributes that count
    /// channels updated (groups, split sizes, ...), or nullptr if none does.
    /// Throws PruneError naming the node if the change cannot be expressed.
    virtual std::unique_ptr<Op> resized(const ChannelChange& /*change*/) const { return nullptr; }
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
