// Channel plumbing along axis 1 of NCHW (or [N, F], or any rank >= 2)
// activations: Concat, Split, Slice, and Flatten to [N, features]. Pure data
// movement: no MACs. Each copies whole contiguous blocks, one per image and
// input/output, since axis 1 is the outermost axis after the batch.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/graph/ops/common.hpp"

namespace spade {

namespace detail {

// Elements behind one channel of one image: the product of the axes after 1.
inline Index channel_stride(const Shape& s) {
    Index n = 1;
    for (int i = 2; i < s.rank(); ++i) n *= s[i];
    return n;
}

// "[a, b, c]", for messages about lists that need not be valid shapes.
inline std::string list_str(const std::vector<Index>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

// Throws ShapeError unless input `i` has rank >= 2 (a batch axis and a channel axis).
inline void expect_channels(const ShapeContext& ctx, std::string_view op, std::size_t i) {
    if (ctx.inputs[i].rank() < 2)
        fail<ShapeError>("node '", ctx.node, "' (", op, "): input ", i, " has shape ", ctx.inputs[i],
                         ", expected rank >= 2 with channels on axis 1");
}

// Copies `count` blocks of `block` elements from a stride of `src_stride` to one of `dst_stride`.
template <class T>
void copy_blocks(const T* src, Index src_stride, T* dst, Index dst_stride, Index count, Index block) {
    parallel_for(
        count,
        [&](long b) {
            std::memcpy(dst + b * dst_stride, src + b * src_stride, sizeof(T) * static_cast<std::size_t>(block));
        },
        block);
}

}  // namespace detail

/// Joins its inputs along channels (axis 1), in input order; other axes must agree.
/// The same value may appear several times (DenseNet-style reuse).
template <class T>
class Concat : public OpBase<Concat<T>, T> {
public:
    Concat() = default;
    static Concat from_attributes(const Attributes&) { return Concat(); }

    std::string type() const override { return "Concat"; }

    /// Input i is the part of the output at its channel offset.
    void channel_rule(ChannelRules& r) const override {
        Index off = 0;
        for (int i = 0; i < static_cast<int>(r.inputs().size()); ++i) {
            r.offset(ChannelAxis::input(i), ChannelAxis::output(0), off);
            off += r.inputs()[i][1];
        }
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        if (ctx.inputs.empty()) fail<ShapeError>("node '", ctx.node, "' (Concat): expects at least one input");
        detail::expect_channels(ctx, "Concat", 0);
        Shape out = ctx.inputs[0];
        for (std::size_t i = 1; i < ctx.inputs.size(); ++i) {
            const Shape& s = ctx.inputs[i];
            bool ok = s.rank() == out.rank();
            for (int a = 0; ok && a < s.rank(); ++a) ok = a == 1 || s[a] == out[a];
            if (!ok)
                fail<ShapeError>("node '", ctx.node, "' (Concat): input ", i, " has shape ", s, ", which does not match input 0 ",
                                 ctx.inputs[0], " outside axis 1");
            out[1] += s[1];
        }
        return {out};
    }

    /// One image: the inputs follow each other in the output.
    std::vector<Index> input_placement(std::span<const Shape> inputs, std::span<const Shape> outputs) const override {
        if (outputs[0][0] != 1) return {};
        std::vector<Index> at;
        Index off = 0;
        for (const Shape& s : inputs) at.push_back(off), off += s.numel();
        return at;
    }

    void forward(const ForwardContext<T>& ctx) const override {
        // every (image, input) block cut into pieces of at most 16K elements, all copied in one
        // parallel loop: a concat of few large blocks still uses every thread; an input the
        // executor placed in the output already (input_placement) is not copied
        const Shape& y = ctx.outputs[0].shape;
        const Index inner = detail::channel_stride(y), out_image = y[1] * inner;
        constexpr Index piece = Index(1) << 14;
        struct Copy {
            const T* src;
            T* dst;
            Index n;
        };
        std::vector<Copy> copies;
        for (Index b = 0; b < y[0]; ++b) {
            Index offset = b * out_image;
            for (const auto& x : ctx.inputs) {
                const Index block = x.shape[1] * inner;
                const T* src = x.data + b * block;
                T* dst = ctx.outputs[0].data + offset;
                if (src != dst)
                    for (Index i = 0; i < block; i += piece) copies.push_back({src + i, dst + i, std::min(piece, block - i)});
                offset += block;
            }
        }
        parallel_for(
            static_cast<long>(copies.size()),
            [&](long k) { std::memcpy(copies[k].dst, copies[k].src, sizeof(T) * static_cast<std::size_t>(copies[k].n)); },
            piece);
    }
};

/// Cuts its input along channels into consecutive parts of the given sizes.
/// The sizes are channel counts, so channel surgery rewrites them.
template <class T>
class Split : public OpBase<Split<T>, T> {
public:
    explicit Split(std::vector<Index> sizes) : sizes_(std::move(sizes)) {}
    static Split from_attributes(const Attributes& a) {
        auto v = a.get<std::vector<std::int64_t>>("Split", "sizes");
        return Split(std::vector<Index>(v.begin(), v.end()));
    }

    std::string type() const override { return "Split"; }
    /// Channels of each output, in order.
    const std::vector<Index>& sizes() const { return sizes_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("sizes", std::vector<std::int64_t>(sizes_.begin(), sizes_.end()));
        return a;
    }

    /// Output k is the part of the input at its channel offset.
    void channel_rule(ChannelRules& r) const override {
        Index off = 0;
        for (int k = 0; k < static_cast<int>(r.outputs().size()); ++k) {
            r.offset(ChannelAxis::output(k), ChannelAxis::input(0), off);
            off += r.outputs()[k][1];
        }
    }
    /// Each part keeps what surgery left of it.
    std::unique_ptr<Op<T>> resized(const ChannelChange& c) const override {
        std::vector<Index> sizes;
        for (const auto& s : c.outputs) sizes.push_back(s[1]);
        return std::make_unique<Split>(std::move(sizes));
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Split", 1);
        detail::expect_channels(ctx, "Split", 0);
        const Shape& x = ctx.inputs[0];
        Index total = 0;
        for (Index s : sizes_) total += s;
        const bool positive = std::all_of(sizes_.begin(), sizes_.end(), [](Index s) { return s >= 1; });
        if (sizes_.empty() || !positive || total != x[1])
            fail<ShapeError>("node '", ctx.node, "' (Split): sizes ", detail::list_str(sizes_),
                             " must be >= 1 and sum to the ", x[1], " channels of input ", x, " (they sum to ", total, ")");
        std::vector<Shape> out;
        for (Index s : sizes_) {
            Shape o = x;
            o[1] = s;
            out.push_back(std::move(o));
        }
        return out;
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const Shape& x = ctx.inputs[0].shape;
        const Index inner = detail::channel_stride(x), in_image = x[1] * inner;
        Index offset = 0;
        for (const auto& y : ctx.outputs) {
            const Index block = y.shape[1] * inner;
            detail::copy_blocks(ctx.inputs[0].data + offset, in_image, y.data, block, x[0], block);
            offset += block;
        }
    }

private:
    std::vector<Index> sizes_;
};

/// Keeps channels [start, end) of its input.
/// The bounds are channel indices, so channel surgery rewrites them.
template <class T>
class Slice : public OpBase<Slice<T>, T> {
public:
    Slice(Index start, Index end) : start_(start), end_(end) {}
    static Slice from_attributes(const Attributes& a) {
        return Slice(a.get<Index>("Slice", "start"), a.get<Index>("Slice", "end"));
    }

    std::string type() const override { return "Slice"; }
    /// First kept channel.
    Index start() const { return start_; }
    /// One past the last kept channel.
    Index end() const { return end_; }
    Attributes attributes() const override {
        Attributes a;
        a.set("start", start_).set("end", end_);
        return a;
    }

    /// The output is the part of the input at `start`.
    void channel_rule(ChannelRules& r) const override {
        r.offset(ChannelAxis::output(0), ChannelAxis::input(0), start_);
    }
    /// The bounds move down by the channels removed below them.
    std::unique_ptr<Op<T>> resized(const ChannelChange& c) const override {
        const auto& gone = c.removed_inputs[0];
        auto below = [&](Index i) { return static_cast<Index>(std::lower_bound(gone.begin(), gone.end(), i) - gone.begin()); };
        return std::make_unique<Slice>(start_ - below(start_), end_ - below(end_));
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Slice", 1);
        detail::expect_channels(ctx, "Slice", 0);
        Shape y = ctx.inputs[0];
        if (start_ < 0 || end_ <= start_ || end_ > y[1])
            fail<ShapeError>("node '", ctx.node, "' (Slice): channels [", start_, ", ", end_,
                             ") are not a non-empty range inside the ", y[1], " channels of input ", ctx.inputs[0]);
        y[1] = end_ - start_;
        return {y};
    }

    void forward(const ForwardContext<T>& ctx) const override {
        const Shape& x = ctx.inputs[0].shape;
        const Index inner = detail::channel_stride(x), block = (end_ - start_) * inner;
        detail::copy_blocks(ctx.inputs[0].data + start_ * inner, x[1] * inner, ctx.outputs[0].data, block, x[0], block);
    }

private:
    Index start_, end_;
};

/// [N, C, H, W] -> [N, C*H*W] (torch.flatten(x, 1)); any rank >= 2, a copy for rank 2.
template <class T>
class Flatten : public OpBase<Flatten<T>, T> {
public:
    Flatten() = default;
    static Flatten from_attributes(const Attributes&) { return Flatten(); }

    std::string type() const override { return "Flatten"; }

    /// Channel c becomes features [c s, (c+1) s) with s the elements behind one channel.
    void channel_rule(ChannelRules& r) const override {
        r.blocks(ChannelAxis::input(0), ChannelAxis::output(0), detail::channel_stride(r.inputs()[0]));
    }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        ctx.expect_inputs("Flatten", 1);
        detail::expect_channels(ctx, "Flatten", 0);
        const Shape& x = ctx.inputs[0];
        return {Shape{x[0], x[1] * detail::channel_stride(x)}};
    }

    void forward(const ForwardContext<T>& ctx) const override {
        // NCHW is already laid out as [N, C*H*W]; the executor gives every value its own buffer
        std::memcpy(ctx.outputs[0].data, ctx.inputs[0].data, sizeof(T) * static_cast<std::size_t>(ctx.inputs[0].numel()));
    }
};

inline const bool concat_registered = register_op<Concat>("Concat");
SPADE_OP_INSTANCES(Concat)
inline const bool split_registered = register_op<Split>("Split");
SPADE_OP_INSTANCES(Split)
inline const bool slice_registered = register_op<Slice>("Slice");
SPADE_OP_INSTANCES(Slice)
inline const bool flatten_registered = register_op<Flatten>("Flatten");
SPADE_OP_INSTANCES(Flatten)

namespace nn {

/// Adds a Concat of `xs` along channels.
template <Scalar T>
Var<T> concat(std::vector<Var<T>> xs, const std::string& name = "") {
    if (xs.empty()) fail<GraphError>("concat '", name, "': needs at least one input");
    return xs[0].builder->apply(name, std::make_unique<Concat<T>>(), xs);
}

/// Adds a Concat of a braced list, `nn::concat({a, b}, "cat")`.
template <Scalar T>
Var<T> concat(std::initializer_list<Var<T>> xs, const std::string& name = "") {
    return concat(std::vector<Var<T>>(xs), name);
}

/// Adds a Split of `x` into parts of `sizes` channels; returns one value per part.
template <Scalar T>
std::vector<Var<T>> split(Var<T> x, const std::string& name, std::vector<Index> sizes) {
    return x.builder->apply_multi(name, std::make_unique<Split<T>>(std::move(sizes)), {x});
}

/// Adds a Slice keeping channels [start, end) of `x`.
template <Scalar T>
Var<T> slice(Var<T> x, const std::string& name, Index start, Index end) {
    return x.builder->apply(name, std::make_unique<Slice<T>>(start, end), {x});
}

/// Adds a Flatten of `x` to [N, features].
template <Scalar T>
Var<T> flatten(Var<T> x, const std::string& name = "") {
    return x.builder->apply(name, std::make_unique<Flatten<T>>(), {x});
}

}  // namespace nn
}  // namespace spade
