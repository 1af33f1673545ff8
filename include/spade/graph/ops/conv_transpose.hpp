// ConvTranspose2d: transposed (fractionally strided) 2-D convolution, the
// adjoint of Conv2d; NCHW activations, IOHW weights (PyTorch layout), any
// stride, padding, output_padding, dilation and groups. Decoders and
// upsampling heads of restoration networks use it.
#pragma once

#include <algorithm>
#include <string_view>

#include "spade/exec/kernels/gemm.hpp"
#include "spade/exec/kernels/im2col.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// Settings of a ConvTranspose2d layer.
struct ConvTranspose2dOptions {
    Index out_channels = 0;
    Pair2 kernel = 3;
    Pair2 stride = 1;
    Pair2 padding = 0;
    Pair2 output_padding = 0;  ///< extra rows/columns on the bottom/right, to pick among the input sizes a strided conv maps to one size
    Pair2 dilation = 1;
    Index groups = 1;
    bool bias = true;
};

/// y = W^T (*) x + b: every input pixel scatters its kernel-weighted values into
/// the output. Weight [C_in, C_out/groups, kh, kw]; channel counts come from the
/// weight and input shapes. H_out = (H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1.
template <class T>
class ConvTranspose2d : public OpBase<ConvTranspose2d<T>, T> {
public:
    explicit ConvTranspose2d(const ConvTranspose2dOptions& o) : o_(o) { check(o, "ConvTranspose2d"); }
    static ConvTranspose2d from_attributes(const Attributes& a) {
        const std::string op = "ConvTranspose2d";
        return ConvTranspose2d(ConvTranspose2dOptions{.out_channels = 0,
                                                      .kernel = Pair2::from(a, op, "kernel"),
                                                      .stride = Pair2::from(a, op, "stride"),
                                                      .padding = Pair2::from(a, op, "padding"),
                                                      .output_padding = Pair2::from(a, op, "output_padding"),
                                                      .dilation = Pair2::from(a, op, "dilation"),
                                                      .groups = a.get<Index>(op, "groups"),
                                                      .bias = a.get<bool>(op, "bias")});
    }

    /// Throws ShapeError, prefixed by `where`, unless the settings are valid as PyTorch defines them
    /// (output_padding must be smaller than the stride or the dilation on each axis).
    static void check(const ConvTranspose2dOptions& o, std::string_view where) {
        if (o.kernel.h < 1 || o.kernel.w < 1 || o.stride.h < 1 || o.stride.w < 1 || o.dilation.h < 1 ||
            o.dilation.w < 1 || o.padding.h < 0 || o.padding.w < 0 || o.groups < 1)
            fail<ShapeError>(where, ": kernel, stride, dilation and groups must be >= 1 and padding >= 0");
        const auto& op = o.output_padding;
        if (op.h < 0 || op.w < 0 || (op.h >= o.stride.h && op.h >= o.dilation.h) ||
            (op.w >= o.stride.w && op.w >= o.dilation.w))
            fail<ShapeError>(where, ": output_padding ", op.h, "x", op.w, " must be >= 0 and smaller than either stride ",
                             o.stride.h, "x", o.stride.w, " or dilation ", o.dilation.h, "x", o.dilation.w);
    }

    std::string type() const override { return "ConvTranspose2d"; }
    const ConvTranspose2dOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("kernel", o_.kernel.vec()).set("stride", o_.stride.vec()).set("padding", o_.padding.vec());
        a.set("output_padding", o_.output_padding.vec()).set("dilation", o_.dilation.vec());
        a.set("groups", o_.groups).set("bias", o_.bias);
        return a;
    }
    std::vector<ParamRole> param_roles() const override {
        if (o_.bias) return {{"weight"}, {"bias"}};
        return {{"weight"}};
    }

    /// The weight [C_in, C_out/groups, kh, kw] has the conv's axes swapped: its rows
    /// consume the input and its columns (per conv group) make the output. With one
    /// input channel per conv group, input channel c owns its output channels, so
    /// input and output are one space; other grouped layers lose channels evenly.
    void channel_rule(ChannelRules& r) const override {
        const auto out = ChannelAxis::output(0), in = ChannelAxis::input(0);
        const Index cin = r.inputs()[0][1], cout_g = r.params()[0][1];
        if (o_.groups == 1) {
            r.same(out, ChannelAxis::param(0, 1, "out"));
        } else if (o_.groups == cin) {
            r.blocks(in, out, cout_g);
        } else {
            r.same(out, ChannelAxis::grouped_param(0, 1, o_.groups, "out"));
            r.even(in, o_.groups);
            r.even(out, o_.groups);
        }
        if (o_.bias) r.same(out, ChannelAxis::param(1, 0));
        r.same(in, ChannelAxis::param(0, 0, "in"));
    }
    /// A depthwise layer keeps one conv group per input channel.
    std::unique_ptr<Op<T>> resized(const ChannelChange& c) const override {
        const Index cin_old = c.inputs[0][1] + static_cast<Index>(c.removed_inputs[0].size());
        if (o_.groups == 1 || o_.groups != cin_old) return nullptr;
        auto o = o_;
        o.groups = c.inputs[0][1];
        return std::make_unique<ConvTranspose2d>(o);
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("ConvTranspose2d", 1);
        ctx.expect_rank("ConvTranspose2d", 0, 4);
        const Shape& x = ctx.inputs[0];
        if (ctx.params.empty() || ctx.params[0].rank() != 4)
            fail<ShapeError>("node '", ctx.node, "' (ConvTranspose2d): weight must have rank 4");
        const Index cout_g = ctx.params[0][1];
        ctx.expect_param("ConvTranspose2d", 0, "weight", Shape{x[1], cout_g, o_.kernel.h, o_.kernel.w});
        if (x[1] % o_.groups != 0)
            fail<ShapeError>("node '", ctx.node, "' (ConvTranspose2d): input channels ", x[1],
                             " not divisible by groups ", o_.groups);
        if (o_.bias) ctx.expect_param("ConvTranspose2d", 1, "bias", Shape{cout_g * o_.groups});
        auto g = geometry(x, ctx.node);
        return {Shape{x[0], cout_g * o_.groups, g.in_h, g.in_w}};
    }

    /// Every input pixel meets every weight of its group once: numel(W) * H_in * W_in * N, plus one per output for the bias.
    Index macs(const ShapeContext& ctx, std::span<const Shape> out) const override {
        const Shape& x = ctx.inputs[0];
        return ctx.params[0].numel() * x[0] * x[2] * x[3] + (o_.bias ? out[0].numel() : 0);
    }

    Index workspace_size(const ShapeContext& ctx, std::span<const Shape> /*out*/) const override {
        const auto g = geometry(ctx.inputs[0], ctx.node);
        if (writes_in_place(g)) return 0;
        const Shape& w = ctx.params[0];
        return w[1] * w[2] * w[3] * g.out_h * g.out_w;
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const auto& w = ctx.params[0];
        const auto& y = ctx.outputs[0];
        const auto g = geometry(x.shape, ctx.node);
        const bool in_place = writes_in_place(g);
        const Index n = x.shape[0], cin = x.shape[1], cin_g = cin / o_.groups, cout_g = w.shape[1];
        const Index cout = cout_g * o_.groups, rows = cout_g * g.kernel_h * g.kernel_w;
        const Index plane_in = g.out_h * g.out_w, plane_out = g.in_h * g.in_w;
        for (Index b = 0; b < n; ++b) {
            const T* xb = x.data + b * cin * plane_in;
            T* yb = y.data + b * cout * plane_out;
            if (!in_place) std::fill(yb, yb + cout * plane_out, T(0));
            for (Index gi = 0; gi < o_.groups; ++gi) {
                T* dst = yb + gi * cout_g * plane_out;
                T* col = in_place ? dst : ctx.workspace.data();
                // col [C_out_g*kh*kw x H*W] = W_g^T [.. x C_in_g] * x_g [C_in_g x H*W]
                kernels::gemm_at_parallel(rows, plane_in, cin_g, w.data + gi * cin_g * rows, rows,
                                          xb + gi * cin_g * plane_in, plane_in, col, plane_in);
                if (!in_place) kernels::col2im(col, cout_g, g, dst);
            }
            if (o_.bias) add_bias(yb, ctx.params[1].data, cout, plane_out);
        }
    }

private:
    // 1x1, stride 1, no padding: col2im would be the identity, so the GEMM writes the output directly.
    bool writes_in_place(const kernels::ConvGeometry& g) const {
        return g.is_pointwise() && o_.output_padding.h == 0 && o_.output_padding.w == 0;
    }
    static void add_bias(T* y, const T* bias, Index channels, Index plane) {
        parallel_for(
            channels,
            [&](long c) {
                T* d = y + c * plane;
                for (Index i = 0; i < plane; ++i) d[i] += bias[c];
            },
            plane);
    }
    // Geometry of the equivalent forward convolution: its input is our output image, its output our input.
    kernels::ConvGeometry geometry(const Shape& x, std::string_view node) const {
        kernels::ConvGeometry g;
        g.out_h = x[2], g.out_w = x[3];
        g.kernel_h = o_.kernel.h, g.kernel_w = o_.kernel.w, g.stride_h = o_.stride.h, g.stride_w = o_.stride.w;
        g.pad_h = o_.padding.h, g.pad_w = o_.padding.w, g.dilation_h = o_.dilation.h, g.dilation_w = o_.dilation.w;
        g.in_h = (x[2] - 1) * g.stride_h - 2 * g.pad_h + g.dilation_h * (g.kernel_h - 1) + o_.output_padding.h + 1;
        g.in_w = (x[3] - 1) * g.stride_w - 2 * g.pad_w + g.dilation_w * (g.kernel_w - 1) + o_.output_padding.w + 1;
        if (x[2] < 1 || x[3] < 1 || g.in_h < 1 || g.in_w < 1)
            fail<ShapeError>("node '", node, "' (ConvTranspose2d): input ", x, " gives an empty output ", g.in_h, "x",
                             g.in_w, " (kernel ", o_.kernel.h, "x", o_.kernel.w, ", stride ", o_.stride.h, "x",
                             o_.stride.w, ", padding ", o_.padding.h, "x", o_.padding.w, ")");
        return g;
    }
    ConvTranspose2dOptions o_;
};

inline const bool conv_transpose2d_registered = register_op<ConvTranspose2d>("ConvTranspose2d");
SPADE_OP_INSTANCES(ConvTranspose2d)

namespace nn {

/// Adds a ConvTranspose2d named `name` with PyTorch's default initialisation
/// (U(±1/sqrt(fan_in)) with fan_in = C_out/groups*kh*kw, weight dim 1 times the kernel area).
template <Scalar T>
Var<T> conv_transpose2d(Var<T> x, const std::string& name, const ConvTranspose2dOptions& o) {
    const std::string where = "conv_transpose2d '" + name + "'";
    ConvTranspose2d<T>::check(o, where);
    const Index cin = x.channels();
    if (o.out_channels < 1) fail<ShapeError>(where, ": out_channels must be >= 1");
    if (cin % o.groups != 0 || o.out_channels % o.groups != 0)
        fail<ShapeError>(where, ": input channels ", cin, " and out_channels ", o.out_channels,
                         " must both be divisible by groups ", o.groups);
    const Index cout_g = o.out_channels / o.groups;
    const double fan_in = static_cast<double>(cout_g * o.kernel.h * o.kernel.w);
    std::vector<ParamSpec> ps{{Shape{cin, cout_g, o.kernel.h, o.kernel.w}, Init::uniform_fan_in, fan_in}};
    if (o.bias) ps.push_back({Shape{o.out_channels}, Init::uniform_fan_in, fan_in});
    return x.builder->apply(name, std::make_unique<ConvTranspose2d<T>>(o), {x}, ps);
}

}  // namespace nn
}  // namespace spade
