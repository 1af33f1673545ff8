// Add, Sub, Mul of two tensors with the broadcasting CNNs need and nothing
// more: equal shapes (residual connections), an [N, C, 1, 1] operand against
// [N, C, H, W] (squeeze-and-excitation gates, per-channel biases), and a single
// element against anything. Rejecting the rest keeps channel rules exact.
#pragma once

#include <string_view>

#include "spade/exec/kernels/pointwise.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// The arithmetic behind the binary elementwise ops, with their registered names.
namespace arithmetic_fn {

/// a + b.
struct Add {
    static constexpr const char* type = "Add";
    template <class T>
    T operator()(T a, T b) const {
        return a + b;
    }
};
/// a - b.
struct Sub {
    static constexpr const char* type = "Sub";
    template <class T>
    T operator()(T a, T b) const {
        return a - b;
    }
};
/// max(a + b, 0): a residual addition with the ReLU that follows it fused
/// (made by the inference compile step); a NaN passes through, as in ReLU.
struct AddRelu {
    static constexpr const char* type = "AddReLU";
    template <class T>
    T operator()(T a, T b) const {
        const T s = a + b;
        return s < T(0) ? T(0) : s;  // keeps a NaN, as ReLU does
    }
};
/// a * b.
struct Mul {
    static constexpr const char* type = "Mul";
    template <class T>
    T operator()(T a, T b) const {
        return a * b;
    }
};

}  // namespace arithmetic_fn

/// How the two operands of an elementwise op line up.
enum class BroadcastKind {
    equal,      ///< same shape
    scalar_a,   ///< the first operand is a single element
    scalar_b,   ///< the second operand is a single element
    channel_a,  ///< the first operand is [N or 1, C, 1, 1] against [N, C, H, W]
    channel_b,  ///< the second operand is [N or 1, C, 1, 1] against [N, C, H, W]
};

/// Which broadcast applies to shapes `a` and `b` and the output shape; throws
/// ShapeError naming node `node` (of type `op`) and both shapes otherwise.
inline std::pair<BroadcastKind, Shape> elementwise_broadcast(const Shape& a, const Shape& b,
                                                             std::string_view node, std::string_view op) {
    if (a == b) return {BroadcastKind::equal, a};
    const bool single_a = a.numel() == 1, single_b = b.numel() == 1;
    // of two single elements of different rank, the higher rank survives
    if (single_b && (!single_a || a.rank() >= b.rank())) return {BroadcastKind::scalar_b, a};
    if (single_a) return {BroadcastKind::scalar_a, b};
    auto per_channel = [](const Shape& s, const Shape& big) {
        return s.rank() == 4 && big.rank() == 4 && s[1] == big[1] && s[2] == 1 && s[3] == 1 &&
               (s[0] == big[0] || s[0] == 1);
    };
    if (per_channel(b, a)) return {BroadcastKind::channel_b, a};
    if (per_channel(a, b)) return {BroadcastKind::channel_a, b};
    fail<ShapeError>("node '", node, "' (", op, "): cannot broadcast shapes ", a, " and ", b,
                     "; supported are equal shapes, [N, C, 1, 1] or [1, C, 1, 1] against [N, C, H, W], "
                     "and a single element against any shape");
}

/// y = Fn(a, b) elementwise over two inputs, broadcast as `elementwise_broadcast` allows.
template <class T, class Fn>
class Elementwise : public OpBase<Elementwise<T, Fn>, T> {
public:
    /// The op has no settings.
    static Elementwise from_attributes(const Attributes&) { return {}; }

    std::string type() const override { return Fn::type; }

    /// Operands with the output's channels share its space (residual connections,
    /// [N, C, 1, 1] gates); a single element broadcast over channels keeps its one channel.
    void channel_rule(ChannelRules& r) const override {
        const Shape& y = r.outputs()[0];
        for (int i = 0; i < 2; ++i) {
            const Shape& x = r.inputs()[i];
            if (x.rank() < 2 || y.rank() < 2) continue;
            if (x[1] == y[1])
                r.same(ChannelAxis::input(i), ChannelAxis::output(0));
            else
                r.fixed(ChannelAxis::input(i), "it is broadcast across the channels of " + std::string(r.node()));
        }
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs(Fn::type, 2);
        return {elementwise_broadcast(ctx.inputs[0], ctx.inputs[1], ctx.node, Fn::type).second};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& a = ctx.inputs[0];
        const auto& b = ctx.inputs[1];
        T* y = ctx.outputs[0].data;
        const Index n = ctx.outputs[0].numel();
        const Fn f{};
        switch (elementwise_broadcast(a.shape, b.shape, ctx.node, Fn::type).first) {
            case BroadcastKind::equal: kernels::binary(a.data, b.data, y, n, f); break;
            case BroadcastKind::scalar_b: {
                const T s = b.data[0];
                kernels::unary(a.data, y, n, [f, s](T v) { return f(v, s); });
                break;
            }
            case BroadcastKind::scalar_a: {
                const T s = a.data[0];
                kernels::unary(b.data, y, n, [f, s](T v) { return f(s, v); });
                break;
            }
            case BroadcastKind::channel_b:
                kernels::broadcast_planes(a.data, b.data, y, n, a.shape[2] * a.shape[3], b.numel(), f);
                break;
            case BroadcastKind::channel_a:
                kernels::broadcast_planes(b.data, a.data, y, n, b.shape[2] * b.shape[3], a.numel(),
                                          [f](T v, T s) { return f(s, v); });
                break;
        }
    }
};

/// Add op: a + b.
template <class T>
using Add = Elementwise<T, arithmetic_fn::Add>;
/// Sub op: a - b.
template <class T>
using Sub = Elementwise<T, arithmetic_fn::Sub>;
/// Mul op: a * b.
template <class T>
using Mul = Elementwise<T, arithmetic_fn::Mul>;

inline const bool add_registered = register_op<Add>("Add");
SPADE_OP_INSTANCES(Elementwise, arithmetic_fn::Add)
inline const bool sub_registered = register_op<Sub>("Sub");
SPADE_OP_INSTANCES(Elementwise, arithmetic_fn::Sub)
inline const bool mul_registered = register_op<Mul>("Mul");
SPADE_OP_INSTANCES(Elementwise, arithmetic_fn::Mul)
/// AddReLU op: max(a + b, 0), a NaN passing through.
template <class T>
using AddReLU = Elementwise<T, arithmetic_fn::AddRelu>;
inline const bool add_relu_registered = register_op<AddReLU>("AddReLU");
SPADE_OP_INSTANCES(Elementwise, arithmetic_fn::AddRelu)

namespace nn {

/// Adds a + b (equal shapes, per-channel [N, C, 1, 1] or single-element broadcast).
template <Scalar T>
Var<T> add(Var<T> a, Var<T> b, const std::string& name = "") {
    return a.builder->apply(name, std::make_unique<Add<T>>(), {a, b});
}
/// Adds a - b (broadcast as for add).
template <Scalar T>
Var<T> sub(Var<T> a, Var<T> b, const std::string& name = "") {
    return a.builder->apply(name, std::make_unique<Sub<T>>(), {a, b});
}
/// Adds a * b (broadcast as for add); with a [N, C, 1, 1] gate this is squeeze-and-excitation's scaling.
template <Scalar T>
Var<T> mul(Var<T> a, Var<T> b, const std::string& name = "") {
    return a.builder->apply(name, std::make_unique<Mul<T>>(), {a, b});
}

}  // namespace nn
}  // namespace spade
