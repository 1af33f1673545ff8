// Conv2d: 2-D convolution, NCHW activations, OIHW weights (PyTorch layout),
// any stride, padding, dilation and groups (depthwise included).
#pragma once

#include "spade/exec/kernels/depthwise.hpp"
#include "spade/exec/kernels/direct.hpp"
#include "spade/exec/kernels/gemm.hpp"
#include "spade/exec/kernels/im2col.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// Settings of a Conv2d layer.
struct Conv2dOptions {
    Index out_channels = 0;
    Pair2 kernel = 3;
    Pair2 stride = 1;
    Pair2 padding = 0;
    Pair2 dilation = 1;
    Index groups = 1;
    bool bias = true;
    FusedActivation activation = FusedActivation::none;  ///< applied to y in the same pass (inference compile step)
    /// y = act(W (*) x + b + r) with r, shaped like y, the node's second input: a residual
    /// addition fused into the conv's output pass (inference compile step).
    bool residual = false;
    /// x -> input_activation(a x + b) per input channel before the conv, with a and b the
    /// parameters after the weight and bias (input_scale, input_shift): a BatchNorm2d (and
    /// ReLU) before a 1x1 conv of stride 1 without padding or groups, folded into the conv's
    /// input pass (inference compile step).
    bool input_norm = false;
    FusedActivation input_activation = FusedActivation::none;
    /// x -> expand_activation(E x + e) before the conv, with E [C, C_in, 1, 1] and e [C] the
    /// last two parameters (expand_weight, expand_bias): a 1x1 conv of stride 1 (or a conv of
    /// the window below) whose output only this depthwise conv (C groups, one output each)
    /// reads, folded into the conv's input pass (inference compile step). Where
    /// kernels::expand_depthwise_fits (with a projection folded in too, where
    /// kernels::inverted_residual_fits), the expanded tensor is never written out whole.
    bool expand_input = false;
    FusedActivation expand_activation = FusedActivation::none;
    /// The expansion's window (expand_input): by default the 1x1 conv above. Any other
    /// (no dilation or groups) makes expand_weight [C, C_in, kh, kw] and the depthwise conv
    /// run on the expansion's output: a stem (3x3, stride 2, padding 1, an image of up to 4
    /// channels) goes in where kernels::stem_block_fits, with the projection too
    /// (MobileNet-v2's first three layers in one pass).
    Pair2 expand_kernel = 1;
    Pair2 expand_stride = 1;
    Pair2 expand_padding = 0;
    /// y = project_activation(P z + p (+ r)) with z the conv's output (after its activation), P
    /// [C_p, C, 1, 1] and p [C_p] the last two parameters (project_weight, project_bias): the 1x1
    /// conv that alone reads a depthwise conv with its expansion folded in (expand_input), folded
    /// into its output pass (inference compile step), which then outputs C_p channels and takes
    /// the residual after the projection. Where kernels::inverted_residual_fits, neither the
    /// expanded nor the depthwise tensor is written out whole.
    bool project_output = false;
    FusedActivation project_activation = FusedActivation::none;

    /// A 1x1 conv of stride 1 without padding, dilation or groups: the image is its input matrix.
    bool pointwise() const {
        return kernel == Pair2{1} && stride == Pair2{1} && padding == Pair2{0} && dilation == Pair2{1} && groups == 1;
    }
};

/// y = W (*) x + b. Channel counts come from the weight shape [C_out, C_in/groups, kh, kw].
template <class T>
class Conv2d : public OpBase<Conv2d<T>, T> {
public:
    explicit Conv2d(const Conv2dOptions& o) : o_(o) {
        if (o.kernel.h < 1 || o.kernel.w < 1 || o.stride.h < 1 || o.stride.w < 1 || o.dilation.h < 1 ||
            o.dilation.w < 1 || o.padding.h < 0 || o.padding.w < 0 || o.groups < 1)
            fail<ShapeError>("Conv2d: kernel, stride, dilation and groups must be >= 1 and padding >= 0");
        if (o.expand_kernel.h < 1 || o.expand_kernel.w < 1 || o.expand_stride.h < 1 || o.expand_stride.w < 1 ||
            o.expand_padding.h < 0 || o.expand_padding.w < 0)
            fail<ShapeError>("Conv2d: expand_kernel and expand_stride must be >= 1 and expand_padding >= 0");
    }
    static Conv2d from_attributes(const Attributes& a) {
        const std::string op = "Conv2d";
        return Conv2d(Conv2dOptions{.out_channels = 0,
                                    .kernel = Pair2::from(a, op, "kernel"),
                                    .stride = Pair2::from(a, op, "stride"),
                                    .padding = Pair2::from(a, op, "padding"),
                                    .dilation = Pair2::from(a, op, "dilation"),
                                    .groups = a.get<Index>(op, "groups"),
                                    .bias = a.get<bool>(op, "bias"),
                                    .activation = fused_activation_from(a, op),
                                    .residual = a.get_or<bool>(op, "residual", false),
                                    .input_norm = a.get_or<bool>(op, "input_norm", false),
                                    .input_activation = fused_activation_from(a, op, "input_activation"),
                                    .expand_input = a.get_or<bool>(op, "expand_input", false),
                                    .expand_activation = fused_activation_from(a, op, "expand_activation"),
                                    .expand_kernel = a.has("expand_kernel") ? Pair2::from(a, op, "expand_kernel") : Pair2{1},
                                    .expand_stride = a.has("expand_stride") ? Pair2::from(a, op, "expand_stride") : Pair2{1},
                                    .expand_padding = a.has("expand_padding") ? Pair2::from(a, op, "expand_padding") : Pair2{0},
                                    .project_output = a.get_or<bool>(op, "project_output", false),
                                    .project_activation = fused_activation_from(a, op, "project_activation")});
    }

    std::string type() const override { return "Conv2d"; }
    const Conv2dOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("kernel", o_.kernel.vec()).set("stride", o_.stride.vec()).set("padding", o_.padding.vec());
        a.set("dilation", o_.dilation.vec()).set("groups", o_.groups).set("bias", o_.bias);
        if (o_.activation != FusedActivation::none) a.set("activation", std::string(fused_activation_name(o_.activation)));
        if (o_.residual) a.set("residual", true);
        if (o_.input_norm) a.set("input_norm", true);
        if (o_.input_activation != FusedActivation::none)
            a.set("input_activation", std::string(fused_activation_name(o_.input_activation)));
        if (o_.expand_input) a.set("expand_input", true);
        if (o_.expand_activation != FusedActivation::none)
            a.set("expand_activation", std::string(fused_activation_name(o_.expand_activation)));
        if (o_.expand_kernel != Pair2{1}) a.set("expand_kernel", o_.expand_kernel.vec());
        if (o_.expand_stride != Pair2{1}) a.set("expand_stride", o_.expand_stride.vec());
        if (o_.expand_padding != Pair2{0}) a.set("expand_padding", o_.expand_padding.vec());
        if (o_.project_output) a.set("project_output", true);
        if (o_.project_activation != FusedActivation::none)
            a.set("project_activation", std::string(fused_activation_name(o_.project_activation)));
        return a;
    }
    std::vector<ParamRole> param_roles() const override {
        std::vector<ParamRole> r{{"weight"}};
        if (o_.bias) r.push_back({"bias"});
        if (o_.input_norm) r.insert(r.end(), {{"input_scale"}, {"input_shift"}});
        if (o_.expand_input) r.insert(r.end(), {{"expand_weight"}, {"expand_bias"}});
        if (o_.project_output) r.insert(r.end(), {{"project_weight"}, {"project_bias"}});
        return r;
    }

    /// Output channels are the weight's rows (and the bias). A plain conv consumes its
    /// input through the weight's columns. A depthwise conv (one input channel per
    /// conv group) maps input channel c to its `multiplier` output channels, so input
    /// and output are one space. Any other grouped conv consumes its input through
    /// per-group columns and loses channels evenly in each conv group. A depthwise conv
    /// with its expansion folded in (expand_input) consumes its input through the
    /// expansion's columns; its expanded channels are its outputs, or with the projection
    /// folded in too (project_output) channels of its own that the projection's columns
    /// consume, its outputs being the projection's rows.
    void channel_rule(ChannelRules& r) const override {
        const auto out = ChannelAxis::output(0), in = ChannelAxis::input(0), own = ChannelAxis::param(0, 0, "out");
        if (o_.project_output) {
            r.same(out, ChannelAxis::param(project_param(), 0, "out"));
            r.same(out, ChannelAxis::param(project_param() + 1, 0));
            r.same(own, ChannelAxis::param(project_param(), 1, "in"));
        } else {
            r.same(out, own);
        }
        if (o_.bias) r.same(own, ChannelAxis::param(1, 0));
        if (o_.residual) r.same(out, ChannelAxis::input(1));
        if (o_.input_norm)
            for (std::size_t p : {norm_param(), norm_param() + 1}) r.same(in, ChannelAxis::param(p, 0));
        const Index cin = r.inputs()[0][1];
        if (o_.expand_input) {
            r.same(own, ChannelAxis::param(expand_param(), 0, "out"));
            r.same(own, ChannelAxis::param(expand_param() + 1, 0));
            r.same(in, ChannelAxis::param(expand_param(), 1, "in"));
        } else if (o_.groups == 1) {
            r.same(in, ChannelAxis::param(0, 1, "in"));
        } else if (depthwise(cin, r.params()[0]) && o_.groups == cin) {
            r.blocks(in, out, r.params()[0][0] / cin);
        } else {
            r.same(in, ChannelAxis::grouped_param(0, 1, o_.groups, "in"));
            r.even(in, o_.groups);
            r.even(out, o_.groups);
        }
    }
    /// A depthwise conv keeps one conv group per input channel.
    std::unique_ptr<Op<T>> resized(const ChannelChange& c) const override {
        if (o_.expand_input) {  // one group per expanded channel
            if (o_.groups == c.params[0][0]) return nullptr;
            auto o = o_;
            o.groups = c.params[0][0];
            return std::make_unique<Conv2d>(o);
        }
        const Index cin_old = c.inputs[0][1] + static_cast<Index>(c.removed_inputs[0].size());
        if (o_.groups == 1 || !(o_.groups == cin_old && c.params[0][1] == 1)) return nullptr;
        auto o = o_;
        o.groups = c.inputs[0][1];
        return std::make_unique<Conv2d>(o);
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Conv2d", o_.residual ? 2 : 1);
        ctx.expect_rank("Conv2d", 0, 4);
        const Shape& x = ctx.inputs[0];
        if (ctx.params.empty() || ctx.params[0].rank() != 4)
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): weight must have rank 4");
        const Shape& w = ctx.params[0];
        const Index cout = w[0], cin = o_.expand_input ? cout : x[1];  // the conv's own input: the expanded one
        if (o_.expand_input) {
            if (o_.input_norm || o_.groups != cout)
                fail<ShapeError>("node '", ctx.node, "' (Conv2d): expand_input needs a depthwise conv with one output per ",
                                 "group (groups ", o_.groups, ", output channels ", cout, ") and no input_norm");
            ctx.expect_param("Conv2d", expand_param(), "expand_weight",
                             Shape{cout, x[1], o_.expand_kernel.h, o_.expand_kernel.w});
            ctx.expect_param("Conv2d", expand_param() + 1, "expand_bias", Shape{cout});
        } else if (o_.expand_activation != FusedActivation::none) {
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): expand_activation is set without expand_input");
        } else if (!pointwise_expansion()) {
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): expand_kernel, expand_stride or expand_padding is set ",
                             "without expand_input");
        }
        Index cy = cout;  // the output's channels
        if (o_.project_output) {
            if (!o_.expand_input)
                fail<ShapeError>("node '", ctx.node, "' (Conv2d): project_output needs expand_input");
            if (ctx.params[project_param()].rank() != 4)
                fail<ShapeError>("node '", ctx.node, "' (Conv2d): project_weight must have rank 4");
            cy = ctx.params[project_param()][0];
            ctx.expect_param("Conv2d", project_param(), "project_weight", Shape{cy, cout, 1, 1});
            ctx.expect_param("Conv2d", project_param() + 1, "project_bias", Shape{cy});
        } else if (o_.project_activation != FusedActivation::none) {
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): project_activation is set without project_output");
        }
        ctx.expect_param("Conv2d", 0, "weight", Shape{cout, cin / o_.groups, o_.kernel.h, o_.kernel.w});
        if (cin % o_.groups != 0 || cout % o_.groups != 0)
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): input channels ", cin, " and output channels ", cout,
                             " must both be divisible by groups ", o_.groups);
        if (o_.bias) ctx.expect_param("Conv2d", 1, "bias", Shape{cout});
        if (o_.input_norm) {
            if (!o_.pointwise())
                fail<ShapeError>("node '", ctx.node, "' (Conv2d): input_norm needs a 1x1 conv of stride 1 without padding, ",
                                 "dilation or groups");
            ctx.expect_param("Conv2d", norm_param(), "input_scale", Shape{x[1]});
            ctx.expect_param("Conv2d", norm_param() + 1, "input_shift", Shape{x[1]});
        } else if (o_.input_activation != FusedActivation::none) {
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): input_activation is set without input_norm");
        }
        auto g = geometry(x, ctx.node);
        Shape y{x[0], cy, g.out_h, g.out_w};
        if (o_.residual && ctx.inputs[1] != y)
            fail<ShapeError>("node '", ctx.node, "' (Conv2d): residual input has shape ", ctx.inputs[1], ", expected the output's ",
                             y);
        return {y};
    }

    Index macs(const ShapeContext& ctx, std::span<const Shape> out) const override {
        const Shape& w = ctx.params[0];
        const Index residual = o_.residual ? 1 : 0, per_out = w[1] * w[2] * w[3] + (o_.bias ? 1 : 0);
        // the expansion's conv and bias over its output, the depthwise conv's input plane
        const auto g = geometry(ctx.inputs[0], ctx.node);
        const Index expand =
            o_.expand_input ? w[0] * (ctx.inputs[0][1] * o_.expand_kernel.h * o_.expand_kernel.w + 1) * g.in_h * g.in_w : 0;
        const Index images = ctx.inputs[0][0], own = images * w[0] * out[0][2] * out[0][3];  // the conv's own outputs
        const Index project = o_.project_output ? (w[0] + 1 + residual) * out[0].numel() : 0;  // the 1x1 conv, bias, residual
        return per_out * own + (o_.project_output ? project : residual * own)
               + (o_.input_norm ? 2 * ctx.inputs[0].numel() : 0)  // the map: a x + b
               + images * expand;
    }

    Index workspace_size(const ShapeContext& ctx, std::span<const Shape> out) const override {
        auto g = geometry(ctx.inputs[0], ctx.node);
        if (o_.input_norm) {  // the mapped input, where it is needed whole: not by the 1x1 direct tiles, which
                              // map block by block (pre-packed weights take them wherever these rules do)
            if (direct(g, ctx.inputs[0][1], ctx.params[0][0], false) == Direct::k1) return 0;
            return ctx.inputs[0][1] * g.in_h * g.in_w;
        }
        if (o_.expand_input) {  // expand_forward's, and the depthwise tensor before a projection, where not fused
            if (whole_block(ctx.inputs[0], g)) return 0;
            return expand_workspace(ctx.inputs[0][1], ctx.params[0][0], g) +
                   (o_.project_output ? ctx.params[0][0] * g.out_h * g.out_w : 0);
        }
        if (depthwise(ctx.inputs[0][1], ctx.params[0]) || g.is_pointwise()) return 0;
        if (const Direct d = direct(g, ctx.inputs[0][1], ctx.params[0][0], false); d != Direct::none)
            return with_direct(d, [&]<int K, int S>() {
                return kernels::direct_geometry<T, K, K, S>(ctx.inputs[0][1], g.in_h, g.in_w, g.pad_h, g.pad_w,
                                                            ctx.params[0][0]).workspace(S);
            });
        return ctx.params[0][1] * g.kernel_h * g.kernel_w * out[0][2] * out[0][3];
    }

    /// Convolutions on the direct kernel get their weights packed into its panels.
    std::unique_ptr<PackedParams> pack(const ShapeContext& ctx, std::span<const TensorRef<const T>> params) const override {
        const auto g = geometry(ctx.inputs[0], ctx.node);
        if (o_.expand_input) {  // the expansion's panels, for the fused kernel
            const Index cexp = params[0].shape[0], cin = ctx.inputs[0][1];
            if (!whole_block(ctx.inputs[0], g) && !fused_expansion(g)) return nullptr;
            auto pk = std::make_unique<Packed>();
            const int taps = int(o_.expand_kernel.h * o_.expand_kernel.w);
            pk->weights.resize(static_cast<std::size_t>(kernels::direct_packed_size(cexp, cin, taps)));
            kernels::pack_direct_weights(params[expand_param()].data, cexp, cin, taps, pk->weights.data());
            if (whole_block(ctx.inputs[0], g)) {  // and the projection's
                const Index cy = params[project_param()].shape[0];
                pk->projection.resize(static_cast<std::size_t>(kernels::direct_packed_size(cy, cexp, 1)));
                kernels::pack_direct_weights(params[project_param()].data, cy, cexp, 1, pk->projection.data());
            }
            return pk;
        }
        if (direct(g, ctx.inputs[0][1], params[0].shape[0], true) == Direct::none) return nullptr;
        const Shape& w = params[0].shape;
        auto pk = std::make_unique<Packed>();
        pk->weights.resize(static_cast<std::size_t>(kernels::direct_packed_size(w[0], w[1], int(w[2] * w[3]))));
        kernels::pack_direct_weights(params[0].data, w[0], w[1], int(w[2] * w[3]), pk->weights.data());
        return pk;
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const auto& w = ctx.params[0];
        const T* bias = o_.bias ? ctx.params[1].data : nullptr;
        const auto& y = ctx.outputs[0];
        const auto g = geometry(x.shape, ctx.node);
        const Index n = x.shape[0], cin = x.shape[1], cout = w.shape[0], cin_g = w.shape[1];
        // the input's plane (with a stem folded in, g is the depthwise conv's on the stem's output)
        const Index cout_g = cout / o_.groups, plane_in = x.shape[2] * x.shape[3], plane_out = g.out_h * g.out_w;
        const Index cy = o_.project_output ? ctx.params[project_param()].shape[0] : cout;  // the output's channels
        const Index k = cin_g * g.kernel_h * g.kernel_w;
        std::vector<T> local;  // direct-kernel weights when not pre-packed
        const auto* pre = dynamic_cast<const Packed*>(ctx.packed);
        const kernels::InputNorm<T> norm{o_.input_norm ? ctx.params[norm_param()].data : nullptr,
                                         o_.input_norm ? ctx.params[norm_param() + 1].data : nullptr, o_.input_activation};
        const Direct d = direct(g, cin, cout, pre != nullptr);
        for (Index b = 0; b < n; ++b) {
            const T* xb = x.data + b * cin * plane_in;
            T* yb = y.data + b * cy * plane_out;
            const T* rb = o_.residual ? ctx.inputs[1].data + b * cy * plane_out : nullptr;
            if (o_.project_output) {
                project_forward(ctx, g, xb, pre, local, b == 0, yb, rb);
                continue;
            }
            if (o_.expand_input) {
                expand_forward(ctx, g, xb, pre, local, b == 0, yb, rb);
                continue;
            }
            if (o_.input_norm && d != Direct::k1) {  // map the whole image first (the pointwise kernel maps as it reads)
                norm.apply_image(xb, cin, plane_in, ctx.workspace.data());
                xb = ctx.workspace.data();
            }
            if (depthwise(cin, w.shape)) {
                kernels::depthwise_conv2d(xb, cout, cout / cin, g, w.data, bias, yb, o_.activation, rb);
                continue;
            }
            if (d != Direct::none) {
                const T* packed = packed_weights(pre, local, b == 0, w.data, cout, cin, int(k / cin));
                if (d == Direct::k1) {
                    kernels::conv_pointwise(xb, cin, plane_in, cout, packed, bias, o_.activation, yb, rb,
                                            o_.input_norm ? &norm : nullptr);
                    continue;
                }
                with_direct(d, [&]<int K, int S>() {
                    const auto dg = kernels::direct_geometry<T, K, K, S>(cin, g.in_h, g.in_w, g.pad_h, g.pad_w, cout);
                    kernels::conv_direct<T, K, K, S>(xb, dg, packed, bias, o_.activation, yb, ctx.workspace.data(), rb);
                });
                continue;
            }
            for (Index gi = 0; gi < o_.groups; ++gi) {
                const T* src = xb + gi * cin_g * plane_in;
                const T* wg = w.data + gi * cout_g * k;
                const T* bg = bias ? bias + gi * cout_g : nullptr;
                T* dst = yb + gi * cout_g * plane_out;
                const T* rg = rb ? rb + gi * cout_g * plane_out : nullptr;
                if (g.is_pointwise()) {  // the image is already the column matrix
                    gemm_epilogue(cout_g, plane_out, k, wg, src, bg, o_.activation, rg, dst);
                } else {
                    conv_tiled(src, cin_g, g, wg, bg, o_.activation, rg, cout_g, k, ctx.workspace.data(), dst);
                }
            }
        }
    }

    /// The window geometry of this conv on an input of shape x (NCHW); throws naming `node` when
    /// the input is too small for the kernel.
    /// With an expansion of another window folded in (expand_input), the conv's own input is the
    /// expansion's output (expansion_geometry).
    kernels::ConvGeometry geometry(const Shape& x, std::string_view node) const {
        if (o_.expand_input && !pointwise_expansion()) {
            const auto e = expansion_geometry(x, node);
            return window(e.out_h, e.out_w, o_.kernel, o_.stride, o_.padding, o_.dilation, x, node, "kernel");
        }
        return window(x[2], x[3], o_.kernel, o_.stride, o_.padding, o_.dilation, x, node, "kernel");
    }
    /// The window geometry of the expansion folded in (expand_input) on an input of shape x.
    kernels::ConvGeometry expansion_geometry(const Shape& x, std::string_view node) const {
        return window(x[2], x[3], o_.expand_kernel, o_.expand_stride, o_.expand_padding, Pair2{1}, x, node, "expand_kernel");
    }

private:
    // The geometry of a window over an in_h x in_w plane; throws naming `node` when the plane
    // (of input x) is too small for it
    static kernels::ConvGeometry window(Index in_h, Index in_w, Pair2 kernel, Pair2 stride, Pair2 padding, Pair2 dilation,
                                        const Shape& x, std::string_view node, const char* what) {
        kernels::ConvGeometry g;
        g.in_h = in_h, g.in_w = in_w;
        g.kernel_h = kernel.h, g.kernel_w = kernel.w, g.stride_h = stride.h, g.stride_w = stride.w;
        g.pad_h = padding.h, g.pad_w = padding.w, g.dilation_h = dilation.h, g.dilation_w = dilation.w;
        g.out_h = kernels::ConvGeometry::out_extent(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
        g.out_w = kernels::ConvGeometry::out_extent(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
        if (g.out_h < 1 || g.out_w < 1)
            fail<ShapeError>("node '", node, "' (Conv2d): input ", x, " is too small for ", what, " ", kernel.h, "x", kernel.w,
                             " (dilation ", dilation.h, "x", dilation.w, ", padding ", padding.h, "x", padding.w, ")");
        return g;
    }
    static bool depthwise(Index cin, const Shape& w) { return w[1] == 1 && cin > 1 && w[0] % cin == 0; }
    std::size_t norm_param() const { return o_.bias ? 2 : 1; }  // input_scale, then input_shift
    std::size_t expand_param() const { return norm_param() + (o_.input_norm ? 2 : 0); }  // expand_weight, expand_bias
    std::size_t project_param() const { return expand_param() + 2; }  // project_weight, project_bias

    struct Packed : PackedParams {
        std::vector<T> weights;     // panels of kernels::pack_direct_weights
        std::vector<T> projection;  // a folded-in projection's panels (project_output, where whole_block)
        Index bytes() const override { return static_cast<Index>((weights.size() + projection.size()) * sizeof(T)); }
    };
    // The direct kernel's panels of w [rows, cols, taps]: pre-packed, or packed into `local` (on
    // the first image of a batch, the rest reusing them)
    static const T* packed_weights(const Packed* pre, std::vector<T>& local, bool first, const T* w, Index rows,
                                   Index cols, int taps) {
        if (pre) return pre->weights.data();
        local.resize(static_cast<std::size_t>(kernels::direct_packed_size(rows, cols, taps)));
        if (first) kernels::pack_direct_weights(w, rows, cols, taps, local.data());
        return local.data();
    }
    bool pointwise_expansion() const {
        return o_.expand_kernel == Pair2{1} && o_.expand_stride == Pair2{1} && o_.expand_padding == Pair2{0};
    }
    // Whether a conv with its expansion and projection folded in runs as one kernel on input x
    bool whole_block(const Shape& x, const kernels::ConvGeometry& g) const {
        if (!o_.project_output) return false;
        if (pointwise_expansion()) return kernels::inverted_residual_fits(g);
        return kernels::stem_block_fits(x[1], expansion_geometry(x, {}), g);  // x was checked by infer_shapes
    }
    // Whether a 1x1 expansion and the depthwise conv run as one kernel
    bool fused_expansion(const kernels::ConvGeometry& g) const {
        return pointwise_expansion() && kernels::expand_depthwise_fits(g);
    }
    // Workspace elements expand_forward takes for `cexp` expanded channels of `cin` inputs: the
    // expanded tensor where not fused, and the columns of an expansion that is not 1x1
    Index expand_workspace(Index cin, Index cexp, const kernels::ConvGeometry& g) const {
        if (fused_expansion(g)) return 0;
        const Index plane = g.in_h * g.in_w;
        return cexp * plane + (pointwise_expansion() ? 0 : cin * o_.expand_kernel.h * o_.expand_kernel.w * plane);
    }
    // One image of a conv with its expansion folded in (expand_input): the fused kernel where it
    // fits (on the expansion's panels), else the expansion into the workspace (a 1x1 one as a
    // GEMM, any other through im2col after it) and the depthwise conv over it.
    void expand_forward(const ForwardContext<T>& ctx, const kernels::ConvGeometry& g, const T* x, const Packed* pre,
                        std::vector<T>& local, bool first, T* y, const T* res) const {
        const Index cin = ctx.inputs[0].shape[1], cexp = ctx.params[0].shape[0];
        const T* ew = ctx.params[expand_param()].data;
        const T* eb = ctx.params[expand_param() + 1].data;
        const T* bias = o_.bias ? ctx.params[1].data : nullptr;
        if (!fused_expansion(g)) {
            T* e = ctx.workspace.data();
            const Index plane = g.in_h * g.in_w;
            if (pointwise_expansion()) {
                gemm_epilogue(cexp, plane, cin, ew, x, eb, o_.expand_activation, nullptr, e);
            } else {
                const auto eg = expansion_geometry(ctx.inputs[0].shape, ctx.node);
                const Index k = cin * eg.kernel_h * eg.kernel_w;
                conv_tiled(x, cin, eg, ew, eb, o_.expand_activation, nullptr, cexp, k, e + cexp * plane, e);
            }
            kernels::depthwise_conv2d(e, cexp, Index(1), g, ctx.params[0].data, bias, y, o_.activation, res);
            return;
        }
#if defined(__AVX512F__)
        const T* packed = packed_weights(pre, local, first, ew, cexp, cin, 1);
        if (g.stride_h == 1)
            kernels::expand_depthwise<T, 1>(x, cin, g, cexp, packed, eb, o_.expand_activation, ctx.params[0].data, bias,
                                            o_.activation, y, res);
        else
            kernels::expand_depthwise<T, 2>(x, cin, g, cexp, packed, eb, o_.expand_activation, ctx.params[0].data, bias,
                                            o_.activation, y, res);
#else
        (void)pre, (void)local, (void)first;  // expand_depthwise_fits is false
#endif
    }

    // One image of a conv with its expansion and projection folded in (project_output): the
    // fused kernel where it fits (on both convs' panels), else the conv with its expansion
    // (expand_forward, its workspace first) and the projection over it.
    void project_forward(const ForwardContext<T>& ctx, const kernels::ConvGeometry& g, const T* x, const Packed* pre,
                         std::vector<T>& local, bool first, T* y, const T* res) const {
        const Index cin = ctx.inputs[0].shape[1], cexp = ctx.params[0].shape[0], plane_out = g.out_h * g.out_w;
        const auto& pw = ctx.params[project_param()];
        const T* pb = ctx.params[project_param() + 1].data;
        if (!whole_block(ctx.inputs[0].shape, g)) {
            T* z = ctx.workspace.data() + expand_workspace(cin, cexp, g);
            expand_forward(ctx, g, x, pre, local, first, z, nullptr);
            gemm_epilogue(pw.shape[0], plane_out, cexp, pw.data, z, pb, o_.project_activation, res, y);
            return;
        }
#if defined(__AVX512F__)
        const Index cy = pw.shape[0];
        const int taps = int(o_.expand_kernel.h * o_.expand_kernel.w);
        const T* packed_e = pre ? pre->weights.data() : nullptr;
        const T* packed_p = pre ? pre->projection.data() : nullptr;
        if (!pre) {  // both panels in `local`, packed on the first image of a batch
            const Index size_e = kernels::direct_packed_size(cexp, cin, taps);
            local.resize(static_cast<std::size_t>(size_e + kernels::direct_packed_size(cy, cexp, 1)));
            if (first) {
                kernels::pack_direct_weights(ctx.params[expand_param()].data, cexp, cin, taps, local.data());
                kernels::pack_direct_weights(pw.data, cy, cexp, 1, local.data() + size_e);
            }
            packed_e = local.data(), packed_p = local.data() + size_e;
        }
        const T* eb = ctx.params[expand_param() + 1].data;
        const T* bias = o_.bias ? ctx.params[1].data : nullptr;
        if (!pointwise_expansion()) {  // a stem
            const Shape& xs = ctx.inputs[0].shape;
            const auto sg = kernels::direct_geometry<T, 3, 3, 2>(cin, xs[2], xs[3], 1, 1, cexp);
            return kernels::stem_block<T>(x, sg, packed_e, eb, o_.expand_activation, ctx.params[0].data, bias, o_.activation,
                                          cy, packed_p, pb, o_.project_activation, y, res);
        }
        auto run = [&]<int S>() {
            kernels::inverted_residual<T, S>(x, cin, g, cexp, packed_e, eb, o_.expand_activation, ctx.params[0].data, bias,
                                             o_.activation, cy, packed_p, pb, o_.project_activation, y, res);
        };
        if (g.stride_h == 1)
            run.template operator()<1>();
        else
            run.template operator()<2>();
#else
        (void)pre, (void)local, (void)first;  // inverted_residual_fits and stem_block_fits are false
#endif
    }

    // Shapes the direct kernels take (one conv group, no dilation): 3x3 stride 1,
    // 3x3 stride 2 and 7x7 stride 2 (stems). At stride 2 with 256 or more input
    // channels im2col + GEMM measured up to 10% faster than the padded phase planes
    // with AVX-512 and with AVX's old 4 x 2 tile, so those stay on it there (the flat
    // stride-2 kernel of AVX-512 was level with the planes and has not been compared
    // with the GEMM); with AVX's 6 x 2 tile the planes ran 1.0-1.25x the GEMM on Zen 2
    // (256 -> 512 and 512 -> 512 at 14x14, 256 -> 256 at 28x28), so AVX takes them all.
    // A 1x1 conv over at least 256 pixels with at most 16 outputs (the projections of
    // pruned inverted residuals, pruned bottleneck reductions) or at most 32 inputs
    // (expansions) runs on the direct tiles in place (kernels::conv_pointwise): 1.06-1.5x
    // faster than the GEMM on the projections with AVX2 (Zen), expansions up to 1.3x (the
    // GEMM packs the image and finishes its result in a second pass); with more inputs
    // and outputs the GEMM was faster there (with the 4 x 2 tile AVX had then). With AVX or
    // AVX-512 and weights packed once per plan (`packed`: Executor::set_prepack, on in
    // InferenceModel) every 1x1 conv over at least one step of pixels does: on Zen 5 the 1x1
    // shapes of ResNet-50, DenseNet-121, GoogLeNet and MobileNet-v2, dense and pruned, 7x7
    // to 112x112, ran 1.3-2.6x faster than Eigen's GEMM (160-200 against 60-135 GMAC/s on
    // two cores), whole networks 12-29 % faster; on Zen 2 (AVX2, the 6 x 2 tile) 1.1-1.7x
    // on the same shapes but one, 2048 -> 512 at 7x7 (0.98x). Packing a large weight matrix
    // on every forward instead would cost more than the conv on small planes.
    enum class Direct { none, k1, k3s1, k3s2, k7s2 };
    Direct direct(const kernels::ConvGeometry& g, Index cin, Index cout, bool packed) const {
        if (o_.groups != 1 || g.dilation_h != 1 || g.dilation_w != 1 || g.kernel_h != g.kernel_w ||
            g.stride_h != g.stride_w)
            return Direct::none;
        if (g.is_pointwise()) {
            const Index n = g.in_h * g.in_w;
            if (kernels::detail::vector_bytes >= 32 && packed && n >= kernels::direct_nr<T>()) return Direct::k1;
            return (cout <= 16 || cin <= 32) && n >= 256 ? Direct::k1 : Direct::none;
        }
        if (g.kernel_h == 3 && g.stride_h == 1) return Direct::k3s1;
        if (g.stride_h != 2) return Direct::none;
        if (g.kernel_h == 3 && (cin < 256 || kernels::detail::vector_bytes == 32)) return Direct::k3s2;
        if (g.kernel_h == 7 && cin < 256) return Direct::k7s2;
        return Direct::none;
    }
    // f.template operator()<K, S>() for the kernel size and stride of `d` (not k1)
    template <class F>
    static decltype(auto) with_direct(Direct d, F&& f) {
        switch (d) {
            case Direct::k3s2: return f.template operator()<3, 2>();
            case Direct::k7s2: return f.template operator()<7, 2>();
            default: return f.template operator()<3, 1>();
        }
    }
    // y[c, p] = act(y[c, p] + bias[c] + res[c, p]) for channels [c0, c1) and pixels [p0, p1) of planes
    // `plane` apart; `bias` and `res` may be null
    static void epilogue(T* y, const T* bias, FusedActivation act, const T* res, Index c0, Index c1, Index plane,
                         Index p0, Index p1) {
        if (!bias && !res && act == FusedActivation::none) return;
        for (Index c = c0; c < c1; ++c) {
            T* d = y + c * plane;
            if (bias)
                for (Index i = p0; i < p1; ++i) d[i] += bias[c];
            if (res)
                for (Index i = p0; i < p1; ++i) d[i] += res[c * plane + i];
            apply_fused(act, d + p0, p1 - p0);
        }
    }
    // C = W * columns over spade's threads, each band finished (bias, residual, activation) in cache
    static void gemm_epilogue(Index cout, Index plane, Index k, const T* w, const T* cols, const T* bias,
                              FusedActivation act, const T* res, T* y) {
        kernels::gemm_parallel(cout, plane, k, w, k, cols, plane, y, plane, [&](Index c0, Index c1, Index p0, Index p1) {
            epilogue(y, bias, act, res, c0, c1, plane, p0, p1);
        });
    }
    // On several threads, im2col + GEMM run over blocks of output pixels: each
    // thread lays out the columns of its own block (into its slice of the full
    // column buffer) and multiplies them right away while they are still in
    // cache. On one thread, or with too few blocks to share, one im2col and one
    // GEMM (split into row bands) measured as fast or faster.
    static void conv_tiled(const T* src, Index cin_g, const kernels::ConvGeometry& g, const T* w, const T* bias,
                           FusedActivation act, const T* res, Index cout_g, Index k, T* col, T* dst) {
        const Index plane = g.out_h * g.out_w;
        // block width: about 256 KiB of columns, a multiple of 16, at least 256 (narrower measured slower)
        const Index width = std::max<Index>(256, (Index(256 * 1024) / Index(sizeof(T)) / std::max<Index>(k, 1)) / 16 * 16);
        const Index blocks = (plane + width - 1) / width;
        const int threads = num_threads();
        if (threads == 1 || blocks < 2 * threads) {
            kernels::im2col(src, cin_g, g, col);
            gemm_epilogue(cout_g, plane, k, w, col, bias, act, res, dst);
            return;
        }
        parallel_for(
            blocks,
            [&](long b) {
                const Index p0 = b * width, p1 = std::min(plane, p0 + width);
                kernels::im2col(src, cin_g, g, col, p0, p1, plane);
                kernels::gemm(cout_g, p1 - p0, k, w, k, col + p0, plane, dst + p0, plane);
                epilogue(dst, bias, act, res, 0, cout_g, plane, p0, p1);
            },
            cout_g * k * width);
    }
    Conv2dOptions o_;
};

inline const bool conv2d_registered = register_op<Conv2d>("Conv2d");
SPADE_OP_INSTANCES(Conv2d)

namespace nn {

/// Adds a Conv2d named `name` with PyTorch's default initialisation.
template <Scalar T>
Var<T> conv2d(Var<T> x, const std::string& name, const Conv2dOptions& o) {
    const Index cin = x.channels();
    if (o.out_channels < 1) fail<ShapeError>("conv2d '", name, "': out_channels must be >= 1");
    if (o.residual || o.input_norm || o.input_activation != FusedActivation::none)
        fail<GraphError>("conv2d '", name, "': residual and input_norm are set by the inference compile step; add the ",
                         "residual with nn::add, the norm with nn::batch_norm2d");
    if (cin % o.groups != 0)
        fail<ShapeError>("conv2d '", name, "': input channels ", cin, " not divisible by groups ", o.groups);
    const double fan_in = static_cast<double>(cin / o.groups * o.kernel.h * o.kernel.w);
    std::vector<ParamSpec> ps{{Shape{o.out_channels, cin / o.groups, o.kernel.h, o.kernel.w}, Init::uniform_fan_in, fan_in}};
    if (o.bias) ps.push_back({Shape{o.out_channels}, Init::uniform_fan_in, fan_in});
    return x.builder->apply(name, std::make_unique<Conv2d<T>>(o), {x}, ps);
}

}  // namespace nn
}  // namespace spade
