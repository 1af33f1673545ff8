// Elementwise activations on tensors of any rank (NCHW feature maps, [N, F]
// after Linear): ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, SiLU, GELU share one op
// template over a small function object; PReLU adds a learnable slope.
#pragma once

#include <cmath>
#include <numbers>

#include "spade/exec/kernels/pointwise.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// The functions behind the stateless activations. Each has a registered `type`
/// name and a call operator for any scalar; one with settings also has
/// `attributes()` and `from_attributes()`.
namespace activation_fn {

/// max(x, 0); NaN passes through as in PyTorch.
struct ReLU {
    static constexpr const char* type = "ReLU";
    template <class T>
    T operator()(T x) const {
        return x < T(0) ? T(0) : x;
    }
};

/// min(max(x, 0), 6): MobileNetV2's bounded ReLU.
struct ReLU6 {
    static constexpr const char* type = "ReLU6";
    template <class T>
    T operator()(T x) const {
        const T r = x < T(0) ? T(0) : x;
        return r > T(6) ? T(6) : r;
    }
};

/// x for x >= 0, negative_slope * x otherwise.
struct LeakyReLU {
    static constexpr const char* type = "LeakyReLU";
    double negative_slope = 0.01;
    template <class T>
    T operator()(T x) const {
        return x < T(0) ? static_cast<T>(negative_slope) * x : x;
    }
    Attributes attributes() const { return Attributes{}.set("negative_slope", negative_slope); }
    static LeakyReLU from_attributes(const Attributes& a) {
        return {a.get_or<double>(type, "negative_slope", 0.01)};
    }
};

/// 1 / (1 + e^-x); saturates to 0 and 1 without overflow trouble (e^-x = inf gives 0).
struct Sigmoid {
    static constexpr const char* type = "Sigmoid";
    template <class T>
    T operator()(T x) const {
        return T(1) / (T(1) + std::exp(-x));
    }
};

/// Hyperbolic tangent.
struct Tanh {
    static constexpr const char* type = "Tanh";
    template <class T>
    T operator()(T x) const {
        return std::tanh(x);
    }
};

/// x * sigmoid(x) (Swish), as in EfficientNet and MobileNetV3.
struct SiLU {
    static constexpr const char* type = "SiLU";
    template <class T>
    T operator()(T x) const {
        return x / (T(1) + std::exp(-x));
    }
};

/// x * Phi(x) with Phi the standard normal CDF (Hendrycks & Gimpel 2016): exact
/// 0.5 x (1 + erf(x / sqrt 2)), or PyTorch's approximate="tanh" form
/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
struct GELU {
    static constexpr const char* type = "GELU";
    bool tanh_approx = false;
    template <class T>
    T operator()(T x) const {
        if (tanh_approx) {
            const T k = static_cast<T>(std::numbers::sqrt2 * std::numbers::inv_sqrtpi);  // sqrt(2 / pi)
            return T(0.5) * x * (T(1) + std::tanh(k * (x + T(0.044715) * x * x * x)));
        }
        return T(0.5) * x * (T(1) + std::erf(x * static_cast<T>(std::numbers::sqrt2 / 2)));
    }
    Attributes attributes() const { return Attributes{}.set("approximate", tanh_approx ? "tanh" : "none"); }
    static GELU from_attributes(const Attributes& a) {
        const auto s = a.get_or<std::string>(type, "approximate", "none");
        if (s != "none" && s != "tanh")
            fail<FormatError>("op GELU: attribute 'approximate' must be \"none\" or \"tanh\", got \"", s, "\"");
        return {s == "tanh"};
    }
};

}  // namespace activation_fn

/// y = Fn(x) elementwise, any input rank, no parameters. Fn is one of the
/// activation_fn function objects (or a user's own with the same members).
template <class T, class Fn>
class Activation : public OpBase<Activation<T, Fn>, T> {
public:
    /// Op applying `fn` (with its settings) to every element.
    explicit Activation(Fn fn = {}) : fn_(fn) {}
    /// Rebuilds the op from the attributes `attributes()` wrote.
    static Activation from_attributes(const Attributes& a) {
        if constexpr (requires { Fn::from_attributes(a); }) return Activation(Fn::from_attributes(a));
        else return Activation();
    }

    std::string type() const override { return Fn::type; }
    /// The function object with its settings (negative_slope, approximate).
    const Fn& function() const { return fn_; }
    Attributes attributes() const override {
        if constexpr (requires { fn_.attributes(); }) return fn_.attributes();
        else return {};
    }

    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs(Fn::type, 1);
        return {ctx.inputs[0]};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        kernels::unary(x.data, ctx.outputs[0].data, x.numel(), [fn = fn_](T v) { return fn(v); });
    }

private:
    Fn fn_;
};

/// ReLU op: max(x, 0).
template <class T>
using ReLU = Activation<T, activation_fn::ReLU>;
/// ReLU6 op: min(max(x, 0), 6).
template <class T>
using ReLU6 = Activation<T, activation_fn::ReLU6>;
/// LeakyReLU op with attribute negative_slope.
template <class T>
using LeakyReLU = Activation<T, activation_fn::LeakyReLU>;
/// Sigmoid op.
template <class T>
using Sigmoid = Activation<T, activation_fn::Sigmoid>;
/// Tanh op.
template <class T>
using Tanh = Activation<T, activation_fn::Tanh>;
/// SiLU (Swish) op.
template <class T>
using SiLU = Activation<T, activation_fn::SiLU>;
/// GELU op with attribute approximate ("none" or "tanh").
template <class T>
using GELU = Activation<T, activation_fn::GELU>;

inline const bool relu_registered = register_op<ReLU>("ReLU");
SPADE_OP_INSTANCES(Activation, activation_fn::ReLU)
inline const bool relu6_registered = register_op<ReLU6>("ReLU6");
SPADE_OP_INSTANCES(Activation, activation_fn::ReLU6)
inline const bool leaky_relu_registered = register_op<LeakyReLU>("LeakyReLU");
SPADE_OP_INSTANCES(Activation, activation_fn::LeakyReLU)
inline const bool sigmoid_registered = register_op<Sigmoid>("Sigmoid");
SPADE_OP_INSTANCES(Activation, activation_fn::Sigmoid)
inline const bool tanh_registered = register_op<Tanh>("Tanh");
SPADE_OP_INSTANCES(Activation, activation_fn::Tanh)
inline const bool silu_registered = register_op<SiLU>("SiLU");
SPADE_OP_INSTANCES(Activation, activation_fn::SiLU)
inline const bool gelu_registered = register_op<GELU>("GELU");
SPADE_OP_INSTANCES(Activation, activation_fn::GELU)

/// Settings of a PReLU layer.
struct PReLUOptions {
    bool per_channel = true;  ///< one slope per channel (axis 1) instead of one shared slope
    double init = 0.25;       ///< initial slope (PyTorch's default)
};

/// y = x for x >= 0, w * x otherwise, with w of shape [1] or [C] (channel axis 1).
/// Whether the slope is per channel is an attribute; C itself comes from the input.
template <class T>
class PReLU : public OpBase<PReLU<T>, T> {
public:
    /// Op with one slope per channel, or one shared slope.
    explicit PReLU(bool per_channel = true) : per_channel_(per_channel) {}
    /// Rebuilds the op from attribute per_channel (default true).
    static PReLU from_attributes(const Attributes& a) { return PReLU(a.get_or<bool>("PReLU", "per_channel", true)); }

    std::string type() const override { return "PReLU"; }
    /// True when the slope has one entry per channel.
    bool per_channel() const { return per_channel_; }
    Attributes attributes() const override { return Attributes{}.set("per_channel", per_channel_); }
    std::vector<ParamRole> param_roles() const override { return {{"weight"}}; }

    void channel_rule(ChannelRules& r) const override { r.per_channel(per_channel_); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("PReLU", 1);
        const Shape& x = ctx.inputs[0];
        if (per_channel_ && x.rank() < 2)
            fail<ShapeError>("node '", ctx.node, "' (PReLU): a per-channel slope needs an input of rank >= 2, got ", x);
        ctx.expect_param("PReLU", 0, "weight", per_channel_ ? Shape{x[1]} : Shape{1});
        return {x};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const auto& w = ctx.params[0];
        kernels::channelwise(x.data, w.data, w.numel(), ctx.outputs[0].data, x.shape,
                             [](T v, T slope) { return v < T(0) ? slope * v : v; });
    }

private:
    bool per_channel_;
};

inline const bool prelu_registered = register_op<PReLU>("PReLU");
SPADE_OP_INSTANCES(PReLU)

namespace detail {

/// Sets every parameter of the node that produced `y` to `value`, except parameters
/// an earlier node already uses (shared through param_scope: they keep their values).
template <Scalar T>
void fill_new_parameters(Var<T> y, double value) {
    auto& g = y.builder->graph();
    const NodeId id = g.value(y.id).producer;
    for (ParamId p : g.node(id).params) {
        bool shared = false;
        for (NodeId k = 0; k < id && !shared; ++k)
            for (ParamId q : g.node(k).params) shared = shared || q == p;
        if (!shared) std::fill(g.parameter(p).begin(), g.parameter(p).end(), static_cast<T>(value));
    }
}

}  // namespace detail

namespace nn {

/// Adds a ReLU; an empty name is replaced by an automatic one.
template <Scalar T>
Var<T> relu(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<ReLU<T>>(), {x});
}
/// Adds a ReLU6 (min(max(x, 0), 6)).
template <Scalar T>
Var<T> relu6(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<ReLU6<T>>(), {x});
}
/// Adds a LeakyReLU with the given negative slope.
template <Scalar T>
Var<T> leaky_relu(Var<T> x, const std::string& name = "", double slope = 0.01) {
    return x.builder->apply(name, std::make_unique<LeakyReLU<T>>(activation_fn::LeakyReLU{slope}), {x});
}
/// Adds a Sigmoid.
template <Scalar T>
Var<T> sigmoid(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<Sigmoid<T>>(), {x});
}
/// Adds a Tanh.
template <Scalar T>
Var<T> tanh(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<Tanh<T>>(), {x});
}
/// Adds a SiLU (Swish).
template <Scalar T>
Var<T> silu(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<SiLU<T>>(), {x});
}
/// Adds a GELU, exact (erf) or with PyTorch's tanh approximation.
template <Scalar T>
Var<T> gelu(Var<T> x, const std::string& name = "", bool tanh_approx = false) {
    return x.builder->apply(name, std::make_unique<GELU<T>>(activation_fn::GELU{tanh_approx}), {x});
}
/// Adds a PReLU named `name` whose slope starts at `o.init`.
template <Scalar T>
Var<T> prelu(Var<T> x, const std::string& name, const PReLUOptions& o = {}) {
    // a per-channel slope on a rank-1 input is left for infer_shapes to reject, naming the node
    const Index count = o.per_channel && x.shape().rank() >= 2 ? x.channels() : 1;
    auto y = x.builder->apply(name, std::make_unique<PReLU<T>>(o.per_channel), {x}, {{Shape{count}, Init::zeros}});
    detail::fill_new_parameters(y, o.init);
    return y;
}

}  // namespace nn
}  // namespace spade
