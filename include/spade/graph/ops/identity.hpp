// Identity and Dropout: ops that pass their input through at inference. They
// stay in the graph (rather than being dropped at import) so that parameter and
// node names keep matching the model they came from.
#pragma once

#include "spade/exec/kernels/pointwise.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// y = x (a copy: the executor gives every value its own buffer).
template <class T>
class Identity : public OpBase<Identity<T>, T> {
public:
    /// The op has no settings.
    static Identity from_attributes(const Attributes&) { return {}; }

    std::string type() const override { return "Identity"; }
    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Identity", 1);
        return {ctx.inputs[0]};
    }
    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        kernels::unary(x.data, ctx.outputs[0].data, x.numel(), [](T v) { return v; });
    }
};

/// Dropout with drop probability p: the identity at inference (PyTorch's
/// inverted dropout rescales while training, so evaluation needs no factor).
/// p is checked when the node is added to a graph, so the error can name it.
template <class T>
class Dropout : public OpBase<Dropout<T>, T> {
public:
    /// Op with drop probability `p` (PyTorch's default 0.5).
    explicit Dropout(double p = 0.5) : p_(p) {}
    /// Rebuilds the op from attribute p (default 0.5).
    static Dropout from_attributes(const Attributes& a) { return Dropout(a.get_or<double>("Dropout", "p", 0.5)); }

    std::string type() const override { return "Dropout"; }
    /// Probability of zeroing an element while training.
    double p() const { return p_; }
    Attributes attributes() const override { return Attributes{}.set("p", p_); }

    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Dropout", 1);
        if (!(p_ >= 0.0 && p_ < 1.0))  // written so that NaN fails too
            fail<ShapeError>("node '", ctx.node, "' (Dropout): p must be in [0, 1), got ", p_);
        return {ctx.inputs[0]};
    }
    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        kernels::unary(x.data, ctx.outputs[0].data, x.numel(), [](T v) { return v; });
    }

private:
    double p_;
};

inline const bool identity_registered = register_op<Identity>("Identity");
SPADE_OP_INSTANCES(Identity)
inline const bool dropout_registered = register_op<Dropout>("Dropout");
SPADE_OP_INSTANCES(Dropout)

namespace nn {

/// Adds an Identity.
template <Scalar T>
Var<T> identity(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<Identity<T>>(), {x});
}
/// Adds a Dropout (identity at inference) with drop probability `p` in [0, 1).
template <Scalar T>
Var<T> dropout(Var<T> x, const std::string& name = "", double p = 0.5) {
    return x.builder->apply(name, std::make_unique<Dropout<T>>(p), {x});
}

}  // namespace nn
}  // namespace spade
