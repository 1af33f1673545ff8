// Pooling on NCHW activations with PyTorch's semantics: MaxPool2d, AvgPool2d
// (ceil_mode, count_include_pad) and AdaptiveAvgPool2d (global average pool).
#pragma once

#include "spade/exec/kernels/pooling.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// Settings of MaxPool2d and AvgPool2d, named as in torch.nn.
struct PoolOptions {
    Pair2 kernel = 0;  ///< required
    Pair2 stride = 0;  ///< 0 means "= kernel", PyTorch's default
    Pair2 padding = 0;
    Pair2 dilation = 1;              ///< MaxPool2d only
    bool ceil_mode = false;
    bool count_include_pad = true;   ///< AvgPool2d only
};

namespace detail {

// The stride PyTorch uses when none is given: the kernel.
inline PoolOptions resolve_stride(PoolOptions o) {
    if (o.stride.h == 0) o.stride.h = o.kernel.h;
    if (o.stride.w == 0) o.stride.w = o.kernel.w;
    return o;
}

// Checks the settings and input, and lays out the window geometry for one input shape.
inline kernels::ConvGeometry pool_geometry(const PoolOptions& o, const ShapeContext& ctx, std::string_view op) {
    ctx.expect_inputs(op, 1);
    ctx.expect_rank(op, 0, 4);
    if (o.kernel.h < 1 || o.kernel.w < 1 || o.stride.h < 1 || o.stride.w < 1 || o.dilation.h < 1 || o.dilation.w < 1 ||
        o.padding.h < 0 || o.padding.w < 0)
        fail<ShapeError>("node '", ctx.node, "' (", op, "): kernel ", o.kernel.h, "x", o.kernel.w, ", stride ", o.stride.h,
                         "x", o.stride.w, ", dilation ", o.dilation.h, "x", o.dilation.w,
                         " must be >= 1 and padding >= 0, got padding ", o.padding.h, "x", o.padding.w);
    // PyTorch's rule; it also guarantees every window overlaps the input
    if (o.padding.h > o.kernel.h / 2 || o.padding.w > o.kernel.w / 2)
        fail<ShapeError>("node '", ctx.node, "' (", op, "): padding ", o.padding.h, "x", o.padding.w,
                         " exceeds half the kernel ", o.kernel.h, "x", o.kernel.w);
    const Shape& x = ctx.inputs[0];
    kernels::ConvGeometry g;
    g.in_h = x[2], g.in_w = x[3];
    g.kernel_h = o.kernel.h, g.kernel_w = o.kernel.w, g.stride_h = o.stride.h, g.stride_w = o.stride.w;
    g.pad_h = o.padding.h, g.pad_w = o.padding.w, g.dilation_h = o.dilation.h, g.dilation_w = o.dilation.w;
    g.out_h = kernels::pool_out_extent(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, o.ceil_mode);
    g.out_w = kernels::pool_out_extent(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, o.ceil_mode);
    if (g.out_h < 1 || g.out_w < 1)
        fail<ShapeError>("node '", ctx.node, "' (", op, "): input ", x, " is too small for kernel ", o.kernel.h, "x",
                         o.kernel.w, " (dilation ", o.dilation.h, "x", o.dilation.w, ", padding ", o.padding.h, "x",
                         o.padding.w, ")");
    return g;
}

}  // namespace detail

/// Max over k_h x k_w windows (stride, padding, dilation, ceil_mode as torch.nn.MaxPool2d).
template <class T>
class MaxPool2d : public OpBase<MaxPool2d<T>, T> {
public:
    explicit MaxPool2d(const PoolOptions& o) : o_(detail::resolve_stride(o)) {}
    static MaxPool2d from_attributes(const Attributes& a) {
        const std::string op = "MaxPool2d";
        return MaxPool2d(PoolOptions{.kernel = Pair2::from(a, op, "kernel"),
                                     .stride = Pair2::from(a, op, "stride"),
                                     .padding = Pair2::from(a, op, "padding"),
                                     .dilation = Pair2::from(a, op, "dilation"),
                                     .ceil_mode = a.get<bool>(op, "ceil_mode")});
    }

    std::string type() const override { return "MaxPool2d"; }
    /// The settings, stride resolved.
    const PoolOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("kernel", o_.kernel.vec()).set("stride", o_.stride.vec()).set("padding", o_.padding.vec());
        a.set("dilation", o_.dilation.vec()).set("ceil_mode", o_.ceil_mode);
        return a;
    }

    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        auto g = detail::pool_geometry(o_, ctx, "MaxPool2d");
        const Shape& x = ctx.inputs[0];
        return {Shape{x[0], x[1], g.out_h, g.out_w}};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const ShapeContext sc{ctx.node, std::span<const Shape>(&ctx.inputs[0].shape, 1), {}};
        const auto g = detail::pool_geometry(o_, sc, "MaxPool2d");
        const Shape& x = ctx.inputs[0].shape;
        kernels::max_pool2d(ctx.inputs[0].data, x[0] * x[1], g, ctx.outputs[0].data);
    }

private:
    PoolOptions o_;
};

/// Mean over k_h x k_w windows (stride, padding, ceil_mode, count_include_pad as torch.nn.AvgPool2d).
template <class T>
class AvgPool2d : public OpBase<AvgPool2d<T>, T> {
public:
    explicit AvgPool2d(const PoolOptions& o) : o_(detail::resolve_stride(o)) {}
    static AvgPool2d from_attributes(const Attributes& a) {
        const std::string op = "AvgPool2d";
        return AvgPool2d(PoolOptions{.kernel = Pair2::from(a, op, "kernel"),
                                     .stride = Pair2::from(a, op, "stride"),
                                     .padding = Pair2::from(a, op, "padding"),
                                     .ceil_mode = a.get<bool>(op, "ceil_mode"),
                                     .count_include_pad = a.get<bool>(op, "count_include_pad")});
    }

    std::string type() const override { return "AvgPool2d"; }
    /// The settings, stride resolved.
    const PoolOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("kernel", o_.kernel.vec()).set("stride", o_.stride.vec()).set("padding", o_.padding.vec());
        a.set("ceil_mode", o_.ceil_mode).set("count_include_pad", o_.count_include_pad);
        return a;
    }

    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        if (o_.dilation != Pair2(1))
            fail<ShapeError>("node '", ctx.node, "' (AvgPool2d): dilation must be 1, got ", o_.dilation.h, "x",
                             o_.dilation.w);
        auto g = detail::pool_geometry(o_, ctx, "AvgPool2d");
        const Shape& x = ctx.inputs[0];
        return {Shape{x[0], x[1], g.out_h, g.out_w}};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const ShapeContext sc{ctx.node, std::span<const Shape>(&ctx.inputs[0].shape, 1), {}};
        const auto g = detail::pool_geometry(o_, sc, "AvgPool2d");
        const Shape& x = ctx.inputs[0].shape;
        kernels::avg_pool2d(ctx.inputs[0].data, x[0] * x[1], g, o_.count_include_pad, ctx.outputs[0].data);
    }

private:
    PoolOptions o_;
};

/// Mean over PyTorch's adaptive bins to a fixed (out_h, out_w), as torch.nn.AdaptiveAvgPool2d.
template <class T>
class AdaptiveAvgPool2d : public OpBase<AdaptiveAvgPool2d<T>, T> {
public:
    explicit AdaptiveAvgPool2d(Pair2 output_size) : out_(output_size) {}
    static AdaptiveAvgPool2d from_attributes(const Attributes& a) {
        return AdaptiveAvgPool2d(Pair2::from(a, "AdaptiveAvgPool2d", "output_size"));
    }

    std::string type() const override { return "AdaptiveAvgPool2d"; }
    /// Output (height, width).
    Pair2 output_size() const { return out_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("output_size", out_.vec());
        return a;
    }

    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("AdaptiveAvgPool2d", 1);
        ctx.expect_rank("AdaptiveAvgPool2d", 0, 4);
        const Shape& x = ctx.inputs[0];
        if (out_.h < 1 || out_.w < 1)
            fail<ShapeError>("node '", ctx.node, "' (AdaptiveAvgPool2d): output size ", out_.h, "x", out_.w,
                             " must be >= 1");
        if (x[2] < 1 || x[3] < 1)
            fail<ShapeError>("node '", ctx.node, "' (AdaptiveAvgPool2d): input ", x, " has an empty image");
        return {Shape{x[0], x[1], out_.h, out_.w}};
    }
    Index macs(const ShapeContext&, std::span<const Shape> out) const override { return out[0].numel(); }

    void forward(const ForwardContext<T>& ctx) const override {
        const Shape& x = ctx.inputs[0].shape;
        kernels::adaptive_avg_pool2d(ctx.inputs[0].data, x[0] * x[1], x[2], x[3], out_.h, out_.w, ctx.outputs[0].data);
    }

private:
    Pair2 out_;
};

inline const bool max_pool2d_registered = register_op<MaxPool2d>("MaxPool2d");
SPADE_OP_INSTANCES(MaxPool2d)
inline const bool avg_pool2d_registered = register_op<AvgPool2d>("AvgPool2d");
SPADE_OP_INSTANCES(AvgPool2d)
inline const bool adaptive_avg_pool2d_registered = register_op<AdaptiveAvgPool2d>("AdaptiveAvgPool2d");
SPADE_OP_INSTANCES(AdaptiveAvgPool2d)

namespace nn {

/// Adds a MaxPool2d named `name`, e.g. `{.kernel = 3, .stride = 2, .padding = 1}` (ResNet's stem).
template <Scalar T>
Var<T> max_pool2d(Var<T> x, const std::string& name, const PoolOptions& o) {
    return x.builder->apply(name, std::make_unique<MaxPool2d<T>>(o), {x});
}

/// Adds an AvgPool2d named `name`, e.g. `{.kernel = 2}` (DenseNet's transitions).
template <Scalar T>
Var<T> avg_pool2d(Var<T> x, const std::string& name, const PoolOptions& o) {
    return x.builder->apply(name, std::make_unique<AvgPool2d<T>>(o), {x});
}

/// Adds an AdaptiveAvgPool2d named `name` pooling to `out` (h, w).
template <Scalar T>
Var<T> adaptive_avg_pool2d(Var<T> x, const std::string& name, Pair2 out) {
    return x.builder->apply(name, std::make_unique<AdaptiveAvgPool2d<T>>(out), {x});
}

/// Adds a global average pool: AdaptiveAvgPool2d to 1x1.
template <Scalar T>
Var<T> global_avg_pool(Var<T> x, const std::string& name = "") {
    return adaptive_avg_pool2d(x, name, Pair2(1));
}

}  // namespace nn
}  // namespace spade
