// Linear: fully connected layer on [N, F] activations, [out, in] weight
// (PyTorch layout), so a classifier head loads torchvision weights unchanged.
#pragma once

#include "spade/exec/kernels/gemm.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// Settings of a Linear layer.
struct LinearOptions {
    Index out_features = 0;
    bool bias = true;
};

/// y = x W^T + b. Feature counts come from the weight shape [out, in].
template <class T>
class Linear : public OpBase<Linear<T>, T> {
public:
    explicit Linear(const LinearOptions& o) : o_(o) {}
    static Linear from_attributes(const Attributes& a) {
        return Linear(LinearOptions{.out_features = 0, .bias = a.get<bool>("Linear", "bias")});
    }

    std::string type() const override { return "Linear"; }
    const LinearOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("bias", o_.bias);
        return a;
    }
    std::vector<ParamRole> param_roles() const override {
        if (o_.bias) return {{"weight"}, {"bias"}};
        return {{"weight"}};
    }

    /// Weight rows (and bias) make the output features, weight columns consume the input.
    void channel_rule(ChannelRules& r) const override {
        r.same(ChannelAxis::output(0), ChannelAxis::param(0, 0, "out"));
        if (r.params().size() > 1) r.same(ChannelAxis::output(0), ChannelAxis::param(1, 0));
        r.same(ChannelAxis::input(0), ChannelAxis::param(0, 1, "in"));
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Linear", 1);
        const Shape& x = ctx.inputs[0];
        if (x.rank() != 2)
            fail<ShapeError>("node '", ctx.node, "' (Linear): input has shape ", x, ", expected rank 2 [N, features]");
        if (ctx.params.empty() || ctx.params[0].rank() != 2)
            fail<ShapeError>("node '", ctx.node, "' (Linear): weight must have rank 2 [out, in]");
        const Shape& w = ctx.params[0];
        if (w[1] != x[1])
            fail<ShapeError>("node '", ctx.node, "' (Linear): input has ", x[1], " features (shape ", x, ") but weight ", w,
                             " expects ", w[1]);
        if (o_.bias) ctx.expect_param("Linear", 1, "bias", Shape{w[0]});
        return {Shape{x[0], w[0]}};
    }

    Index macs(const ShapeContext& ctx, std::span<const Shape> out) const override {
        return (ctx.params[0][1] + (o_.bias ? 1 : 0)) * out[0].numel();
    }

    Index workspace_size(const ShapeContext& ctx, std::span<const Shape> out) const override {
        const Index n = ctx.inputs[0][0];
        return n == 1 ? 0 : n * (ctx.inputs[0][1] + out[0][1]);
    }

    // Computes y^T = W x^T with plain row-major operands rather than y = x W^T:
    // GCC 12.2 with AVX-512 fails -Werror on Eigen's packing of a transposed right-hand side
    // (a false "-Wuninitialized" inside avx512fintrin.h). The two transposes cost N*(in+out),
    // nothing next to the N*in*out product, and vanish for N = 1 where x^T and y^T are x and y.
    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const auto& w = ctx.params[0];
        T* y = ctx.outputs[0].data;
        const Index n = x.shape[0], in = w.shape[1], out = w.shape[0];
        const T* b = o_.bias ? ctx.params[1].data : nullptr;
        if (n == 1) {  // a matrix-vector product, memory-bound: rows split over the threads
            kernels::gemm_parallel(out, 1, in, w.data, in, x.data, 1, y, 1, [&](Index i0, Index i1, Index, Index) {
                if (b)
                    for (Index j = i0; j < i1; ++j) y[j] += b[j];
            });
            return;
        }
        T* xt = ctx.workspace.data();  // [in, N]
        T* yt = xt + in * n;           // [out, N]
        for (Index r = 0; r < n; ++r)
            for (Index i = 0; i < in; ++i) xt[i * n + r] = x.data[r * in + i];
        kernels::gemm_parallel(out, n, in, w.data, in, xt, n, yt, n);
        for (Index r = 0; r < n; ++r) {
            T* row = y + r * out;
            for (Index j = 0; j < out; ++j) row[j] = yt[j * n + r] + (b ? b[j] : T(0));
        }
    }

private:
    LinearOptions o_;
};

inline const bool linear_registered = register_op<Linear>("Linear");
SPADE_OP_INSTANCES(Linear)

namespace nn {

/// Adds a Linear named `name` with PyTorch's default initialisation (U(±1/sqrt(in)) for weight and bias).
template <Scalar T>
Var<T> linear(Var<T> x, const std::string& name, const LinearOptions& o) {
    if (x.shape().rank() != 2)
        fail<ShapeError>("linear '", name, "': input has shape ", x.shape(), ", expected rank 2 [N, features] (flatten first)");
    if (o.out_features < 1) fail<ShapeError>("linear '", name, "': out_features must be >= 1");
    const Index in = x.shape()[1];
    const double fan_in = static_cast<double>(in);
    std::vector<ParamSpec> ps{{Shape{o.out_features, in}, Init::uniform_fan_in, fan_in}};
    if (o.bias) ps.push_back({Shape{o.out_features}, Init::uniform_fan_in, fan_in});
    return x.builder->apply(name, std::make_unique<Linear<T>>(o), {x}, ps);
}

}  // namespace nn
}  // namespace spade
