// Scale: a learnable multiplier, one value or one per channel. It stands in for
// an affine-only normalization and for the per-channel gains some pruning
// methods insert to learn which channels matter (network slimming).
#pragma once

#include "spade/exec/kernels/pointwise.hpp"
#include "spade/graph/ops/activation.hpp"  // detail::fill_new_parameters
#include "spade/graph/ops/common.hpp"

namespace spade {

/// Settings of a Scale layer.
struct ScaleOptions {
    bool per_channel = true;  ///< one weight per channel (axis 1) instead of one shared weight
    double init = 1.0;        ///< initial weight
};

/// y = x * w with w of shape [1] or [C] along axis 1. Whether w is per channel is
/// an attribute; C itself comes from the input, so pruning only rewrites w.
template <class T>
class Scale : public OpBase<Scale<T>, T> {
public:
    /// Op with one weight per channel, or one shared weight.
    explicit Scale(bool per_channel = true) : per_channel_(per_channel) {}
    /// Rebuilds the op from attribute per_channel (default true).
    static Scale from_attributes(const Attributes& a) { return Scale(a.get_or<bool>("Scale", "per_channel", true)); }

    std::string type() const override { return "Scale"; }
    /// True when the weight has one entry per channel.
    bool per_channel() const { return per_channel_; }
    Attributes attributes() const override { return Attributes{}.set("per_channel", per_channel_); }
    std::vector<ParamRole> param_roles() const override { return {{"weight"}}; }

    void channel_rule(ChannelRules& r) const override { r.per_channel(per_channel_); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Scale", 1);
        const Shape& x = ctx.inputs[0];
        if (per_channel_ && x.rank() < 2)
            fail<ShapeError>("node '", ctx.node, "' (Scale): a per-channel weight needs an input of rank >= 2, got ", x);
        ctx.expect_param("Scale", 0, "weight", per_channel_ ? Shape{x[1]} : Shape{1});
        return {x};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const auto& w = ctx.params[0];
        kernels::channelwise(x.data, w.data, w.numel(), ctx.outputs[0].data, x.shape, [](T v, T s) { return v * s; });
    }

private:
    bool per_channel_;
};

inline const bool scale_registered = register_op<Scale>("Scale");
SPADE_OP_INSTANCES(Scale)

namespace nn {

/// Adds a Scale named `name` whose weight starts at `o.init`.
template <Scalar T>
Var<T> scale(Var<T> x, const std::string& name, const ScaleOptions& o = {}) {
    // a per-channel weight on a rank-1 input is left for infer_shapes to reject, naming the node
    const Index count = o.per_channel && x.shape().rank() >= 2 ? x.channels() : 1;
    auto y = x.builder->apply(name, std::make_unique<Scale<T>>(o.per_channel), {x}, {{Shape{count}, Init::zeros}});
    detail::fill_new_parameters(y, o.init);
    return y;
}

}  // namespace nn
}  // namespace spade
