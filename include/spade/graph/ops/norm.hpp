// Normalisation layers over NCHW activations, inference mode: BatchNorm2d
// (running statistics), GroupNorm, InstanceNorm2d and LayerNorm2d (across
// channels, as in ConvNeXt). Statistics take two passes (mean, then centred
// squares) with totals in double, and the variance is biased (divided by the
// count), as PyTorch normalises.
#pragma once

#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "spade/core/threading.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

namespace detail::norm {

/// Sum of f(x[i]) over `n` contiguous values: independent lanes of T over blocks of 256
/// values (so the loop vectorises without reassociation and rounding grows with the block,
/// not with n), block totals in double.
template <class T, class F>
double blocked_sum(const T* x, Index n, F f) {
    constexpr int lanes = static_cast<int>(64 / sizeof(T));
    constexpr Index block = 256;
    double total = 0.0;
    Index i = 0;
    for (; i + block <= n; i += block) {
        T s[lanes] = {};
        for (Index j = i; j < i + block; j += lanes)
            for (int l = 0; l < lanes; ++l) s[l] += f(x[j + l]);
        T t = 0;
        for (int l = 0; l < lanes; ++l) t += s[l];
        total += static_cast<double>(t);
    }
    for (; i < n; ++i) total += static_cast<double>(f(x[i]));
    return total;
}

/// Mean and biased variance of `n` contiguous values in two passes over shifted data, so a
/// large mean does not swallow a small spread: the sum is taken of x - x[0] and the squares
/// of x - m with m the mean rounded to T (both differences are exact or nearly so near the
/// data), and the variance is corrected for that rounding: E[(x-m)^2] = var + (mean-m)^2.
template <class T>
std::pair<double, double> mean_var(const T* x, Index n) {
    if (n <= 0) return {0.0, 0.0};
    const T k = x[0];
    const double mean = static_cast<double>(k) + blocked_sum(x, n, [k](T v) { return v - k; }) / static_cast<double>(n);
    const T m = static_cast<T>(mean);
    const double sq = blocked_sum(x, n, [m](T v) { const T d = v - m; return d * d; }) / static_cast<double>(n);
    const double off = mean - static_cast<double>(m);
    return {mean, std::max(0.0, sq - off * off)};
}

/// y = (x - mean) * scale + shift over `n` contiguous values; centring first keeps float accurate.
template <class T>
void normalize_span(const T* x, T* y, Index n, T mean, T scale, T shift) {
    for (Index i = 0; i < n; ++i) y[i] = (x[i] - mean) * scale + shift;
}

/// Normalises each (image, group) of `channels / groups` adjacent channels of `plane` elements
/// by its own statistics, then applies the per-channel affine `w`, `b` (either may be null).
template <class T>
void normalize_groups(const T* x, T* y, Index batch, Index channels, Index groups, Index plane, const T* w, const T* b,
                      double eps) {
    const Index cg = channels / groups, len = cg * plane;
    parallel_for(
        batch * groups,
        [&](long k) {
            const T* xs = x + k * len;
            T* ys = y + k * len;
            const auto [mean, var] = mean_var(xs, len);
            const double rstd = 1.0 / std::sqrt(var + eps);
            const Index c0 = (k % groups) * cg;
            for (Index j = 0; j < cg; ++j) {
                const Index c = c0 + j;
                const T scale = static_cast<T>(w ? rstd * static_cast<double>(w[c]) : rstd);
                normalize_span(xs + j * plane, ys + j * plane, plane, static_cast<T>(mean), scale, b ? b[c] : T(0));
            }
        },
        3 * len);
}

/// Checks a norm's single input: rank between `min_rank` and `max_rank` with channels on axis 1.
inline const Shape& norm_input(const ShapeContext& ctx, std::string_view op, int min_rank, int max_rank) {
    ctx.expect_inputs(op, 1);
    const Shape& x = ctx.inputs[0];
    if (x.rank() < min_rank || x.rank() > max_rank)
        fail<ShapeError>("node '", ctx.node, "' (", op, "): input has shape ", x, ", expected ",
                         min_rank == max_rank ? "rank " + std::to_string(min_rank) : "rank >= " + std::to_string(min_rank),
                         min_rank == 4 && max_rank == 4 ? " [N, C, H, W]" : " [N, C, ...]");
    return x;
}

/// Checks that parameters `first`, `first + 1` are the per-channel weight and bias [C].
inline void expect_affine(const ShapeContext& ctx, std::string_view op, std::size_t first, Index channels) {
    ctx.expect_param(op, first, "weight", Shape{channels});
    ctx.expect_param(op, first + 1, "bias", Shape{channels});
}

/// Throws ShapeError unless eps is a finite number >= 0.
inline void check_eps(double eps, std::string_view op) {
    if (!(eps >= 0.0) || !std::isfinite(eps)) fail<ShapeError>(op, ": eps must be finite and >= 0, got ", eps);
}

/// The builder-side rank check, so a misplaced norm is reported with its name before any parameter is made.
template <Scalar T>
void expect_builder_rank(Var<T> x, std::string_view fn, const std::string& name, int min_rank, int max_rank) {
    const int r = x.shape().rank();
    if (r < min_rank || r > max_rank)
        fail<ShapeError>(fn, " '", name, "': input has shape ", x.shape(), ", expected rank ",
                         min_rank == max_rank ? std::to_string(min_rank) : ">= " + std::to_string(min_rank));
}

}  // namespace detail::norm

// -- BatchNorm2d ----------------------------------------------------------------

/// Settings of a BatchNorm2d layer.
struct BatchNormOptions {
    double eps = 1e-5;
    double momentum = 0.1;  ///< running-statistics update rate, used once training mode exists
    bool affine = true;
    FusedActivation activation = FusedActivation::none;  ///< applied in the same pass (inference compile step)
};

/// y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel.
/// Inference mode only: normalising by batch statistics (and updating the running
/// ones with `momentum`) arrives with training. Parameters in torchvision order:
/// weight, bias (if affine), running_mean, running_var (buffers, not learnable).
template <class T>
class BatchNorm2d : public OpBase<BatchNorm2d<T>, T> {
public:
    explicit BatchNorm2d(const BatchNormOptions& o) : o_(o) { detail::norm::check_eps(o.eps, "BatchNorm2d"); }
    static BatchNorm2d from_attributes(const Attributes& a) {
        const std::string op = "BatchNorm2d";
        return BatchNorm2d(BatchNormOptions{.eps = a.get<double>(op, "eps"),
                                            .momentum = a.get_or<double>(op, "momentum", 0.1),
                                            .affine = a.get<bool>(op, "affine"),
                                            .activation = fused_activation_from(a, op)});
    }

    std::string type() const override { return "BatchNorm2d"; }
    const BatchNormOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("eps", o_.eps).set("momentum", o_.momentum).set("affine", o_.affine);
        if (o_.activation != FusedActivation::none) a.set("activation", std::string(fused_activation_name(o_.activation)));
        return a;
    }
    std::vector<ParamRole> param_roles() const override {
        std::vector<ParamRole> r;
        if (o_.affine) r = {{"weight"}, {"bias"}};
        r.push_back({"running_mean", false});
        r.push_back({"running_var", false});
        return r;
    }

    void channel_rule(ChannelRules& r) const override { r.per_channel(true); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        const Shape& x = detail::norm::norm_input(ctx, "BatchNorm2d", 4, 4);
        const std::size_t s = stats_index();
        if (o_.affine) detail::norm::expect_affine(ctx, "BatchNorm2d", 0, x[1]);
        ctx.expect_param("BatchNorm2d", s, "running_mean", Shape{x[1]});
        ctx.expect_param("BatchNorm2d", s + 1, "running_var", Shape{x[1]});
        return {x};
    }

    Index macs(const ShapeContext& ctx, std::span<const Shape> /*out*/) const override {
        return (o_.affine ? 2 : 1) * ctx.inputs[0].numel();
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const Index n = x.shape[0], c = x.shape[1], plane = x.shape[2] * x.shape[3];
        const T* w = o_.affine ? ctx.params[0].data : nullptr;
        const T* b = o_.affine ? ctx.params[1].data : nullptr;
        const T* mean = ctx.params[stats_index()].data;
        const T* var = ctx.params[stats_index() + 1].data;
        T* y = ctx.outputs[0].data;
        parallel_for(
            n * c,
            [&](long k) {
                const Index ch = k % c;
                const double rstd = 1.0 / std::sqrt(static_cast<double>(var[ch]) + o_.eps);
                const T scale = static_cast<T>(w ? rstd * static_cast<double>(w[ch]) : rstd);
                detail::norm::normalize_span(x.data + k * plane, y + k * plane, plane, mean[ch], scale, b ? b[ch] : T(0));
                apply_fused(o_.activation, y + k * plane, plane);
            },
            plane);
    }

private:
    std::size_t stats_index() const { return o_.affine ? 2 : 0; }
    BatchNormOptions o_;
};

// -- GroupNorm ------------------------------------------------------------------

/// Settings of a GroupNorm layer.
struct GroupNormOptions {
    Index num_groups = 0;
    double eps = 1e-5;
    bool affine = true;
};

/// Normalises each (image, group of C/num_groups adjacent channels) over its channels and
/// all spatial positions, then applies a per-channel weight and bias [C] if affine
/// (Wu & He, "Group Normalization", 2018). Accepts [N, C, ...] of any rank >= 2.
template <class T>
class GroupNorm : public OpBase<GroupNorm<T>, T> {
public:
    explicit GroupNorm(const GroupNormOptions& o) : o_(o) {
        if (o.num_groups < 1) fail<ShapeError>("GroupNorm: num_groups must be >= 1, got ", o.num_groups);
        detail::norm::check_eps(o.eps, "GroupNorm");
    }
    static GroupNorm from_attributes(const Attributes& a) {
        const std::string op = "GroupNorm";
        return GroupNorm(GroupNormOptions{.num_groups = a.get<Index>(op, "num_groups"),
                                          .eps = a.get<double>(op, "eps"),
                                          .affine = a.get<bool>(op, "affine")});
    }

    std::string type() const override { return "GroupNorm"; }
    const GroupNormOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("num_groups", o_.num_groups).set("eps", o_.eps).set("affine", o_.affine);
        return a;
    }
    std::vector<ParamRole> param_roles() const override {
        if (o_.affine) return {{"weight"}, {"bias"}};
        return {};
    }

    /// Per channel, and a norm group leaves whole (its statistics mix its channels).
    void channel_rule(ChannelRules& r) const override {
        r.per_channel(true);
        const Index per_group = r.inputs()[0][1] / o_.num_groups;
        if (per_group > 1) r.tie(ChannelAxis::input(0), per_group);
    }
    /// Keeps the channels per group: whole groups leave.
    std::unique_ptr<Op<T>> resized(const ChannelChange& c) const override {
        const Index before = c.inputs[0][1] + static_cast<Index>(c.removed_inputs[0].size());
        const Index per_group = before / o_.num_groups;
        if (c.inputs[0][1] % per_group != 0)
            fail<PruneError>("node '", c.node, "' (GroupNorm): ", c.inputs[0][1], " channels left are not whole groups of ",
                             per_group);
        auto o = o_;
        o.num_groups = c.inputs[0][1] / per_group;
        return std::make_unique<GroupNorm>(o);
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        const Shape& x = detail::norm::norm_input(ctx, "GroupNorm", 2, 64);
        if (x[1] % o_.num_groups != 0)
            fail<ShapeError>("node '", ctx.node, "' (GroupNorm): ", x[1], " channels (input ", x,
                             ") are not divisible by num_groups ", o_.num_groups);
        if (o_.affine) detail::norm::expect_affine(ctx, "GroupNorm", 0, x[1]);
        return {x};
    }

    Index macs(const ShapeContext& ctx, std::span<const Shape> /*out*/) const override {
        return (o_.affine ? 2 : 1) * ctx.inputs[0].numel();
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const Index n = x.shape[0], c = x.shape[1], plane = n * c > 0 ? x.numel() / (n * c) : 0;
        detail::norm::normalize_groups(x.data, ctx.outputs[0].data, n, c, o_.num_groups, plane,
                                 o_.affine ? ctx.params[0].data : nullptr, o_.affine ? ctx.params[1].data : nullptr,
                                 o_.eps);
    }

private:
    GroupNormOptions o_;
};

namespace detail::norm {

/// Everything InstanceNorm2d and LayerNorm2d share (their settings are eps and
/// affine): attributes, parameter roles, the [N, C, H, W] check and MACs.
/// `Derived` names itself in `Derived::name` and brings its own forward.
template <class Derived, class T, class Options>
class AffineNorm : public OpBase<Derived, T> {
public:
    explicit AffineNorm(const Options& o) : o_(o) { check_eps(o.eps, Derived::name); }
    static Derived from_attributes(const Attributes& a) {
        return Derived(Options{.eps = a.get<double>(Derived::name, "eps"), .affine = a.get<bool>(Derived::name, "affine")});
    }

    std::string type() const override { return Derived::name; }
    const Options& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("eps", o_.eps).set("affine", o_.affine);
        return a;
    }
    std::vector<ParamRole> param_roles() const override {
        if (o_.affine) return {{"weight"}, {"bias"}};
        return {};
    }
    /// Per channel. (LayerNorm2d's statistics mix all channels of a pixel: removing one
    /// changes the others' normalisation even if it was zero.)
    void channel_rule(ChannelRules& r) const override { r.per_channel(true); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        const Shape& x = norm_input(ctx, Derived::name, 4, 4);
        if (o_.affine) expect_affine(ctx, Derived::name, 0, x[1]);
        return {x};
    }
    Index macs(const ShapeContext& ctx, std::span<const Shape> /*out*/) const override {
        return (o_.affine ? 2 : 1) * ctx.inputs[0].numel();
    }

protected:
    Options o_;
};

}  // namespace detail::norm

// -- InstanceNorm2d -------------------------------------------------------------

/// Settings of an InstanceNorm2d layer (PyTorch defaults: not affine).
struct InstanceNormOptions {
    double eps = 1e-5;
    bool affine = false;
};

/// Normalises each (image, channel) plane over H, W by its own statistics; weight and
/// bias [C] if affine. No running statistics (PyTorch's default track_running_stats=False).
template <class T>
class InstanceNorm2d : public detail::norm::AffineNorm<InstanceNorm2d<T>, T, InstanceNormOptions> {
public:
    static constexpr const char* name = "InstanceNorm2d";
    using detail::norm::AffineNorm<InstanceNorm2d<T>, T, InstanceNormOptions>::AffineNorm;

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const Index c = x.shape[1];
        detail::norm::normalize_groups(x.data, ctx.outputs[0].data, x.shape[0], c, c, x.shape[2] * x.shape[3],
                                       this->o_.affine ? ctx.params[0].data : nullptr,
                                       this->o_.affine ? ctx.params[1].data : nullptr, this->o_.eps);
    }
};

// -- LayerNorm2d ----------------------------------------------------------------

/// Settings of a LayerNorm2d layer (eps as in ConvNeXt).
struct LayerNormOptions {
    double eps = 1e-6;
    bool affine = true;
};

/// LayerNorm over channels: each (image, pixel) is normalised across its C values,
/// then weight and bias [C] if affine — ConvNeXt's LayerNorm2d, i.e. nn.LayerNorm(C)
/// on NHWC without the permutes.
template <class T>
class LayerNorm2d : public detail::norm::AffineNorm<LayerNorm2d<T>, T, LayerNormOptions> {
public:
    static constexpr const char* name = "LayerNorm2d";
    using detail::norm::AffineNorm<LayerNorm2d<T>, T, LayerNormOptions>::AffineNorm;

    void forward(const ForwardContext<T>& ctx) const override {
        const auto& x = ctx.inputs[0];
        const Index n = x.shape[0], c = x.shape[1], hw = x.shape[2] * x.shape[3];
        const T* w = this->o_.affine ? ctx.params[0].data : nullptr;
        const T* b = this->o_.affine ? ctx.params[1].data : nullptr;
        T* y = ctx.outputs[0].data;
        if (c == 0 || hw == 0) return;
        // The C values of a pixel are a plane apart, so work on runs of adjacent pixels and sweep
        // the channels with contiguous inner loops; per-run statistics stay on the stack.
        const Index chunks = (hw + kRun - 1) / kRun;
        const double inv_c = 1.0 / static_cast<double>(c);
        parallel_for(
            n * chunks,
            [&](long t) {
                const Index img = t / chunks, p0 = (t % chunks) * kRun, len = std::min(kRun, hw - p0);
                const T* xs = x.data + img * c * hw + p0;
                T* ys = y + img * c * hw + p0;
                double acc[kRun], mean[kRun];
                T mean_t[kRun], rstd_t[kRun];
                std::fill(acc, acc + len, 0.0);
                for (Index ch = 0; ch < c; ++ch) {
                    const T* xc = xs + ch * hw;
                    for (Index p = 0; p < len; ++p) acc[p] += static_cast<double>(xc[p]);
                }
                for (Index p = 0; p < len; ++p) mean[p] = acc[p] * inv_c, acc[p] = 0.0;
                for (Index ch = 0; ch < c; ++ch) {
                    const T* xc = xs + ch * hw;
                    for (Index p = 0; p < len; ++p) {
                        const double d = static_cast<double>(xc[p]) - mean[p];
                        acc[p] += d * d;
                    }
                }
                for (Index p = 0; p < len; ++p) {
                    mean_t[p] = static_cast<T>(mean[p]);
                    rstd_t[p] = static_cast<T>(1.0 / std::sqrt(acc[p] * inv_c + this->o_.eps));
                }
                for (Index ch = 0; ch < c; ++ch) {
                    const T* xc = xs + ch * hw;
                    T* yc = ys + ch * hw;
                    const T wc = w ? w[ch] : T(1), bc = b ? b[ch] : T(0);
                    for (Index p = 0; p < len; ++p) yc[p] = (xc[p] - mean_t[p]) * rstd_t[p] * wc + bc;
                }
            },
            3 * c * kRun);
    }

private:
    static constexpr Index kRun = 256;  // pixels per task: 4 stack arrays of this size fit in L1
};

inline const bool batch_norm2d_registered = register_op<BatchNorm2d>("BatchNorm2d");
SPADE_OP_INSTANCES(BatchNorm2d)
inline const bool group_norm_registered = register_op<GroupNorm>("GroupNorm");
SPADE_OP_INSTANCES(GroupNorm)
inline const bool instance_norm2d_registered = register_op<InstanceNorm2d>("InstanceNorm2d");
SPADE_OP_INSTANCES(InstanceNorm2d)
inline const bool layer_norm2d_registered = register_op<LayerNorm2d>("LayerNorm2d");
SPADE_OP_INSTANCES(LayerNorm2d)

namespace nn {

/// Adds a BatchNorm2d named `name`: weight 1, bias 0, running_mean 0, running_var 1 (PyTorch's init).
template <Scalar T>
Var<T> batch_norm2d(Var<T> x, const std::string& name, const BatchNormOptions& o = {}) {
    spade::detail::norm::expect_builder_rank(x, "batch_norm2d", name, 4, 4);
    const Shape c{x.channels()};
    std::vector<ParamSpec> ps;
    if (o.affine) ps = {{c, Init::ones}, {c, Init::zeros}};
    ps.push_back({c, Init::zeros});
    ps.push_back({c, Init::ones});
    return x.builder->apply(name, std::make_unique<BatchNorm2d<T>>(o), {x}, ps);
}

/// Adds a GroupNorm named `name` (weight 1, bias 0 if affine); channels must divide into num_groups.
template <Scalar T>
Var<T> group_norm(Var<T> x, const std::string& name, const GroupNormOptions& o) {
    spade::detail::norm::expect_builder_rank(x, "group_norm", name, 2, 64);
    if (o.num_groups < 1 || x.channels() % o.num_groups != 0)
        fail<ShapeError>("group_norm '", name, "': ", x.channels(), " channels are not divisible by num_groups ",
                         o.num_groups);
    std::vector<ParamSpec> ps;
    if (o.affine) ps = {{Shape{x.channels()}, Init::ones}, {Shape{x.channels()}, Init::zeros}};
    return x.builder->apply(name, std::make_unique<GroupNorm<T>>(o), {x}, ps);
}

/// Adds an InstanceNorm2d named `name` (weight 1, bias 0 if affine).
template <Scalar T>
Var<T> instance_norm2d(Var<T> x, const std::string& name, const InstanceNormOptions& o = {}) {
    spade::detail::norm::expect_builder_rank(x, "instance_norm2d", name, 4, 4);
    std::vector<ParamSpec> ps;
    if (o.affine) ps = {{Shape{x.channels()}, Init::ones}, {Shape{x.channels()}, Init::zeros}};
    return x.builder->apply(name, std::make_unique<InstanceNorm2d<T>>(o), {x}, ps);
}

/// Adds a LayerNorm2d (LayerNorm across channels) named `name` (weight 1, bias 0 if affine).
template <Scalar T>
Var<T> layer_norm2d(Var<T> x, const std::string& name, const LayerNormOptions& o = {}) {
    spade::detail::norm::expect_builder_rank(x, "layer_norm2d", name, 4, 4);
    std::vector<ParamSpec> ps;
    if (o.affine) ps = {{Shape{x.channels()}, Init::ones}, {Shape{x.channels()}, Init::zeros}};
    return x.builder->apply(name, std::make_unique<LayerNorm2d<T>>(o), {x}, ps);
}

}  // namespace nn
}  // namespace spade
