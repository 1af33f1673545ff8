// Resampling of NCHW activations with PyTorch's semantics: Upsample (nearest,
// bilinear with or without align_corners) by a real scale factor, and
// PixelShuffle / PixelUnshuffle (sub-pixel convolution, Shi et al. 2016).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

/// How Upsample reads between input pixels.
enum class UpsampleMode { nearest, bilinear };

/// A (height, width) pair of real scale factors that also converts from one number.
struct Scale2 {
    double h = 1, w = 1;
    constexpr Scale2() = default;
    constexpr Scale2(double v) : h(v), w(v) {}  // NOLINT: implicit by design, `.scale = 2.0`
    constexpr Scale2(double h_, double w_) : h(h_), w(w_) {}
    friend bool operator==(const Scale2&, const Scale2&) = default;
};

/// Settings of Upsample, as torch.nn.Upsample(scale_factor, mode, align_corners).
struct UpsampleOptions {
    Scale2 scale = 2.0;
    UpsampleMode mode = UpsampleMode::nearest;
    bool align_corners = false;  ///< bilinear only
};

/// Resizes by `scale` to floor(in * scale) pixels per axis. Source pixels follow
/// PyTorch given a scale factor: nearest reads floor(dst / scale); bilinear maps
/// dst to (dst + 0.5) / scale - 0.5 (clamped at 0), or to dst (in-1)/(out-1) with
/// align_corners.
template <class T>
class Upsample : public OpBase<Upsample<T>, T> {
public:
    explicit Upsample(const UpsampleOptions& o) : o_(o) {}
    static Upsample from_attributes(const Attributes& a) {
        const std::string op = "Upsample", mode = a.get<std::string>(op, "mode");
        if (mode != "nearest" && mode != "bilinear")
            fail<FormatError>("op Upsample: mode '", mode, "' is not 'nearest' or 'bilinear'");
        return Upsample(UpsampleOptions{.scale = {a.get<double>(op, "scale_h"), a.get<double>(op, "scale_w")},
                                        .mode = mode == "nearest" ? UpsampleMode::nearest : UpsampleMode::bilinear,
                                        .align_corners = a.get<bool>(op, "align_corners")});
    }

    std::string type() const override { return "Upsample"; }
    /// The settings.
    const UpsampleOptions& options() const { return o_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("scale_h", o_.scale.h).set("scale_w", o_.scale.w);
        a.set("mode", o_.mode == UpsampleMode::nearest ? "nearest" : "bilinear").set("align_corners", o_.align_corners);
        return a;
    }

    void channel_rule(ChannelRules& r) const override { r.per_channel(); }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Upsample", 1);
        ctx.expect_rank("Upsample", 0, 4);
        const Shape& x = ctx.inputs[0];
        if (!(o_.scale.h > 0) || !(o_.scale.w > 0) || !std::isfinite(o_.scale.h) || !std::isfinite(o_.scale.w))
            fail<ShapeError>("node '", ctx.node, "' (Upsample): scale ", o_.scale.h, "x", o_.scale.w, " must be positive");
        if (o_.align_corners && o_.mode == UpsampleMode::nearest)
            fail<ShapeError>("node '", ctx.node, "' (Upsample): align_corners only applies to bilinear mode");
        const Index oh = out_extent(x[2], o_.scale.h), ow = out_extent(x[3], o_.scale.w);
        if (oh < 1 || ow < 1)
            fail<ShapeError>("node '", ctx.node, "' (Upsample): input ", x, " scaled by ", o_.scale.h, "x", o_.scale.w,
                             " leaves an empty image");
        return {Shape{x[0], x[1], oh, ow}};
    }
    /// Bilinear: one per output element (PyTorch-ecosystem counting); nearest only moves data.
    Index macs(const ShapeContext&, std::span<const Shape> out) const override {
        return o_.mode == UpsampleMode::bilinear ? out[0].numel() : 0;
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const Shape& x = ctx.inputs[0].shape;
        const Shape& y = ctx.outputs[0].shape;
        if (o_.mode == UpsampleMode::nearest) nearest(ctx.inputs[0].data, x, y, ctx.outputs[0].data);
        else bilinear(ctx.inputs[0].data, x, y, ctx.outputs[0].data);
    }

private:
    static Index out_extent(Index in, double scale) {
        return static_cast<Index>(std::floor(static_cast<double>(in) * scale));
    }

    // PyTorch's nearest source index: exact shortcuts for x1 and x2, otherwise
    // floor(dst * (1/scale)) in single precision, as ATen computes it.
    static std::vector<Index> nearest_index(Index in, Index out, double scale) {
        std::vector<Index> src(static_cast<std::size_t>(out));
        const float s = static_cast<float>(1.0 / scale);
        for (Index d = 0; d < out; ++d) {
            if (out == in) src[d] = d;
            else if (out == 2 * in) src[d] = d >> 1;
            else src[d] = std::min(static_cast<Index>(std::floor(static_cast<float>(d) * s)), in - 1);
        }
        return src;
    }

    // Gathers each output row once per distinct source row and copies it to the
    // rows that repeat it (every other row at x2).
    void nearest(const T* in, const Shape& x, const Shape& y, T* out) const {
        const auto ih = nearest_index(x[2], y[2], o_.scale.h), iw = nearest_index(x[3], y[3], o_.scale.w);
        const Index in_plane = x[2] * x[3], out_plane = y[2] * y[3], ow = y[3];
        const bool doubled = ow == 2 * x[3];
        parallel_for(
            x[0] * x[1],
            [&](long c) {
                const T* src = in + c * in_plane;
                T* dst = out + c * out_plane;
                const Index* cols = iw.data();
                for (Index oh = 0; oh < y[2]; ++oh) {
                    T* d = dst + oh * ow;
                    if (oh > 0 && ih[oh] == ih[oh - 1]) {
                        std::copy(d - ow, d, d);
                        continue;
                    }
                    const T* row = src + ih[oh] * x[3];
                    if (doubled)
                        for (Index j = 0; j < x[3]; ++j) d[2 * j] = d[2 * j + 1] = row[j];
                    else
                        for (Index j = 0; j < ow; ++j) d[j] = row[cols[j]];
                }
            },
            out_plane);
    }

    // Two source indices and the weight of the second, per output index along one axis.
    struct Taps {
        std::vector<Index> i0, i1;
        std::vector<T> w1;
    };
    Taps linear_taps(Index in, Index out, double scale) const {
        Taps t{std::vector<Index>(out), std::vector<Index>(out), std::vector<T>(out)};
        const T s = o_.align_corners ? (out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0))
                                     : static_cast<T>(1.0 / scale);
        for (Index d = 0; d < out; ++d) {
            T src = o_.align_corners ? s * static_cast<T>(d) : s * (static_cast<T>(d) + T(0.5)) - T(0.5);
            if (src < 0) src = 0;
            const Index i0 = std::min(static_cast<Index>(std::floor(src)), in - 1);
            t.i0[d] = i0;
            t.i1[d] = i0 + (i0 < in - 1 ? 1 : 0);
            t.w1[d] = std::clamp(src - static_cast<T>(i0), T(0), T(1));
        }
        return t;
    }

    // w[j] = (1 - q_j) s[i0_j] + q_j s[i1_j]: one row interpolated along the width.
    // Unaliased pointers let the compiler vectorize the gathers.
    static void lerp_row(const T* __restrict s, const Taps& t, Index n, T* __restrict w) {
        const Index* __restrict i0 = t.i0.data();
        const Index* __restrict i1 = t.i1.data();
        const T* __restrict q = t.w1.data();
        for (Index j = 0; j < n; ++j) w[j] = (T(1) - q[j]) * s[i0[j]] + q[j] * s[i1[j]];
    }

    // Separable: each source row is interpolated along the width once (a gather),
    // then output rows blend two of those rows (a contiguous, vectorizable loop).
    void bilinear(const T* in, const Shape& x, const Shape& y, T* out) const {
        const Taps th = linear_taps(x[2], y[2], o_.scale.h), tw = linear_taps(x[3], y[3], o_.scale.w);
        const Index in_plane = x[2] * x[3], out_plane = y[2] * y[3], ow = y[3];
        parallel_for(
            x[0] * x[1],
            [&](long c) {
                const T* src = in + c * in_plane;
                T* dst = out + c * out_plane;
                // two width-interpolated source rows; output rows walk down the source
                // monotonically, so each source row is widened about once
                std::vector<T> wide(static_cast<std::size_t>(2 * ow));
                Index held[2] = {-1, -1};
                auto widen = [&](Index r, Index keep) -> const T* {
                    for (int k = 0; k < 2; ++k)
                        if (held[k] == r) return wide.data() + k * ow;
                    const int k = held[0] == keep ? 1 : 0;
                    T* w = wide.data() + k * ow;
                    lerp_row(src + r * x[3], tw, ow, w);
                    held[k] = r;
                    return w;
                };
                for (Index oh = 0; oh < y[2]; ++oh) {
                    const T* r0 = widen(th.i0[oh], th.i1[oh]);
                    const T* r1 = widen(th.i1[oh], th.i0[oh]);
                    const T b = th.w1[oh], a = T(1) - b;
                    T* d = dst + oh * ow;
                    for (Index j = 0; j < ow; ++j) d[j] = a * r0[j] + b * r1[j];
                }
            },
            out_plane * 4);
    }

    UpsampleOptions o_;
};

namespace detail {

// Throws ShapeError naming the node unless the block factor r is >= 1.
inline void expect_factor(const ShapeContext& ctx, std::string_view op, Index r) {
    if (r < 1) fail<ShapeError>("node '", ctx.node, "' (", op, "): factor ", r, " must be >= 1");
}

}  // namespace detail

/// [N, C r^2, H, W] -> [N, C, H r, W r]: channel c r^2 + i r + j becomes pixel
/// offset (i, j) of channel c, as torch.nn.PixelShuffle.
template <class T>
class PixelShuffle : public OpBase<PixelShuffle<T>, T> {
public:
    explicit PixelShuffle(Index r) : r_(r) {}
    static PixelShuffle from_attributes(const Attributes& a) {
        return PixelShuffle(a.get<Index>("PixelShuffle", "upscale_factor"));
    }

    std::string type() const override { return "PixelShuffle"; }
    /// The block size r.
    Index factor() const { return r_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("upscale_factor", r_);
        return a;
    }

    /// Output channel c is made of input channels [c r^2, (c+1) r^2).
    void channel_rule(ChannelRules& r) const override {
        r.blocks(ChannelAxis::output(0), ChannelAxis::input(0), r_ * r_);
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("PixelShuffle", 1);
        ctx.expect_rank("PixelShuffle", 0, 4);
        detail::expect_factor(ctx, "PixelShuffle", r_);
        const Shape& x = ctx.inputs[0];
        if (x[1] % (r_ * r_) != 0)
            fail<ShapeError>("node '", ctx.node, "' (PixelShuffle): ", x[1], " channels of input ", x,
                             " are not divisible by factor^2 = ", r_ * r_);
        return {Shape{x[0], x[1] / (r_ * r_), x[2] * r_, x[3] * r_}};
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const Shape& x = ctx.inputs[0].shape;
        const Index r = r_, h = x[2], w = x[3], in_plane = h * w, out_w = w * r;
        parallel_for(
            ctx.outputs[0].shape[0] * ctx.outputs[0].shape[1],
            [&](long c) {
                const T* src = ctx.inputs[0].data + c * r * r * in_plane;  // the r^2 planes of output plane c
                T* dst = ctx.outputs[0].data + c * r * r * in_plane;
                for (Index ih = 0; ih < h; ++ih)
                    for (Index i = 0; i < r; ++i) {
                        T* d = dst + (ih * r + i) * out_w;
                        for (Index j = 0; j < r; ++j) {
                            const T* s = src + (i * r + j) * in_plane + ih * w;
                            for (Index iw = 0; iw < w; ++iw) d[iw * r + j] = s[iw];
                        }
                    }
            },
            r * r * in_plane);
    }

private:
    Index r_;
};

/// [N, C, H r, W r] -> [N, C r^2, H, W], the inverse of PixelShuffle (torch.nn.PixelUnshuffle).
template <class T>
class PixelUnshuffle : public OpBase<PixelUnshuffle<T>, T> {
public:
    explicit PixelUnshuffle(Index r) : r_(r) {}
    static PixelUnshuffle from_attributes(const Attributes& a) {
        return PixelUnshuffle(a.get<Index>("PixelUnshuffle", "downscale_factor"));
    }

    std::string type() const override { return "PixelUnshuffle"; }
    /// The block size r.
    Index factor() const { return r_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("downscale_factor", r_);
        return a;
    }

    /// Input channel c becomes output channels [c r^2, (c+1) r^2).
    void channel_rule(ChannelRules& r) const override {
        r.blocks(ChannelAxis::input(0), ChannelAxis::output(0), r_ * r_);
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("PixelUnshuffle", 1);
        ctx.expect_rank("PixelUnshuffle", 0, 4);
        detail::expect_factor(ctx, "PixelUnshuffle", r_);
        const Shape& x = ctx.inputs[0];
        if (x[2] % r_ != 0 || x[3] % r_ != 0)
            fail<ShapeError>("node '", ctx.node, "' (PixelUnshuffle): image ", x[2], "x", x[3], " of input ", x,
                             " is not divisible by factor ", r_);
        return {Shape{x[0], x[1] * r_ * r_, x[2] / r_, x[3] / r_}};
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const Shape& y = ctx.outputs[0].shape;
        const Index r = r_, h = y[2], w = y[3], out_plane = h * w, in_w = w * r;
        parallel_for(
            ctx.inputs[0].shape[0] * ctx.inputs[0].shape[1],
            [&](long c) {
                const T* src = ctx.inputs[0].data + c * r * r * out_plane;
                T* dst = ctx.outputs[0].data + c * r * r * out_plane;  // the r^2 planes made from input plane c
                for (Index oh = 0; oh < h; ++oh)
                    for (Index i = 0; i < r; ++i) {
                        const T* s = src + (oh * r + i) * in_w;
                        for (Index j = 0; j < r; ++j) {
                            T* d = dst + (i * r + j) * out_plane + oh * w;
                            for (Index ow = 0; ow < w; ++ow) d[ow] = s[ow * r + j];
                        }
                    }
            },
            r * r * out_plane);
    }

private:
    Index r_;
};

inline const bool upsample_registered = register_op<Upsample>("Upsample");
SPADE_OP_INSTANCES(Upsample)
inline const bool pixel_shuffle_registered = register_op<PixelShuffle>("PixelShuffle");
SPADE_OP_INSTANCES(PixelShuffle)
inline const bool pixel_unshuffle_registered = register_op<PixelUnshuffle>("PixelUnshuffle");
SPADE_OP_INSTANCES(PixelUnshuffle)

namespace nn {

/// Adds an Upsample named `name`, e.g. `{.scale = 2.0, .mode = UpsampleMode::bilinear}`.
template <Scalar T>
Var<T> upsample(Var<T> x, const std::string& name, const UpsampleOptions& o) {
    return x.builder->apply(name, std::make_unique<Upsample<T>>(o), {x});
}

/// Adds a PixelShuffle with upscale factor `r`.
template <Scalar T>
Var<T> pixel_shuffle(Var<T> x, const std::string& name, Index r) {
    return x.builder->apply(name, std::make_unique<PixelShuffle<T>>(r), {x});
}

/// Adds a PixelUnshuffle with downscale factor `r`.
template <Scalar T>
Var<T> pixel_unshuffle(Var<T> x, const std::string& name, Index r) {
    return x.builder->apply(name, std::make_unique<PixelUnshuffle<T>>(r), {x});
}

}  // namespace nn
}  // namespace spade
