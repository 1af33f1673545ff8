// FixedPoint: an op that owns a subgraph f and iterates z <- f(z, extras...)
// from z0 until the relative update ||z_{k+1} - z_k|| / ||z_{k+1}|| falls below
// `tol` or `max_iter` iterations have run. Deep-equilibrium networks (DEQ) are
// this op around a physics step and a CNN prior; with tol = 0 it is an
// unrolled network of max_iter iterations that share every weight.
// It lives in exec/ because running a subgraph needs the executor.
#pragma once

#include <cmath>
#include <memory>

#include "spade/exec/executor.hpp"
#include "spade/graph/ops/common.hpp"
#include "spade/graph/shape_inference.hpp"

namespace spade {

/// Settings of a FixedPoint op.
struct FixedPointOptions {
    Index max_iter = 10;  ///< iterations at most (exactly, when tol = 0)
    double tol = 0.0;     ///< stop when the relative update is below this
};

/// z* = f(z*, extras...), found by plain iteration; see the file comment.
/// Inputs: z0 then the extras; the body graph takes (z, extras...) and returns z'.
/// Not safe to run one graph object from several threads at once (it caches an executor).
template <class T>
class FixedPoint : public Op<T> {
public:
    FixedPoint(Graph<T> body, const FixedPointOptions& o) : body_(std::move(body)), o_(o) {
        if (o.max_iter < 1 || !(o.tol >= 0)) fail<ShapeError>("FixedPoint: max_iter must be >= 1 and tol >= 0");
        if (body_.outputs().size() != 1 || body_.inputs().empty())
            fail<GraphError>("FixedPoint: body must have at least one input and exactly one output, has ",
                             body_.inputs().size(), " and ", body_.outputs().size());
    }
    FixedPoint(const FixedPoint& o) : body_(o.body_), o_(o.o_) {}
    static FixedPoint from_attributes(const Attributes& a, std::vector<Graph<T>> sub) {
        if (sub.size() != 1) fail<FormatError>("op FixedPoint: needs 1 subgraph, got ", sub.size());
        return FixedPoint(std::move(sub[0]), {a.get<Index>("FixedPoint", "max_iter"), a.get<double>("FixedPoint", "tol")});
    }

    std::string type() const override { return "FixedPoint"; }
    Attributes attributes() const override { return Attributes{}.set("max_iter", o_.max_iter).set("tol", o_.tol); }
    std::vector<const Graph<T>*> subgraphs() const override { return {&body_}; }
    std::vector<Graph<T>*> mutable_subgraphs() override {
        exec_.reset();  // the body is about to change
        return {&body_};
    }
    /// z0, z and the output are one space; extra input k is body input k.
    void channel_rule(ChannelRules& r) const override {
        r.same(ChannelAxis::input(0), ChannelAxis::output(0));
        r.same(ChannelAxis::output(0), ChannelAxis::sub_output(0, 0));
        for (int k = 0; k < static_cast<int>(r.inputs().size()); ++k)
            r.same(ChannelAxis::input(k), ChannelAxis::sub_input(0, k));
    }
    std::unique_ptr<Op<T>> clone() const override { return std::make_unique<FixedPoint>(*this); }
    /// The iterated subgraph.
    const Graph<T>& body() const { return body_; }
    Graph<T>& body() { return body_; }
    /// Iterations the last forward pass ran.
    Index iterations() const { return iterations_; }

    std::vector<Shape> infer_shapes(const ShapeContext& ctx) const override {
        if (ctx.inputs.size() != body_.inputs().size())
            fail<ShapeError>("node '", ctx.node, "' (FixedPoint): body takes ", body_.inputs().size(), " input(s), got ",
                             ctx.inputs.size());
        auto shapes = infer_value_shapes(body_, ctx.inputs);
        const Shape& out = shapes[body_.outputs()[0]];
        if (out != ctx.inputs[0])
            fail<ShapeError>("node '", ctx.node, "' (FixedPoint): body maps z of shape ", ctx.inputs[0], " to ", out,
                             "; a fixed point needs the same shape");
        return {out};
    }
    Index macs(const ShapeContext& ctx, std::span<const Shape>) const override {
        return o_.max_iter * total_macs(body_, ctx.inputs);
    }

    void forward(const ForwardContext<T>& ctx) const override {
        if (!exec_) exec_ = std::make_unique<Executor<T>>(body_);
        const auto& y = ctx.outputs[0];
        const Index n = y.numel();
        z_.assign(ctx.inputs[0].data, ctx.inputs[0].data + n);
        std::vector<TensorRef<const T>> in(ctx.inputs.begin(), ctx.inputs.end());
        in[0] = {z_.data(), ctx.inputs[0].shape};
        iterations_ = 0;
        for (Index k = 0; k < o_.max_iter; ++k) {
            exec_->run(in);
            const T* next = exec_->value(body_.outputs()[0]).data;
            double diff = 0, norm = 0;
            for (Index i = 0; i < n; ++i) {
                const double d = static_cast<double>(next[i]) - static_cast<double>(z_[i]);
                diff += d * d, norm += static_cast<double>(next[i]) * static_cast<double>(next[i]);
            }
            if (next != z_.data()) std::copy(next, next + n, z_.begin());  // an identity body returns z itself
            ++iterations_;
            if (o_.tol > 0 && std::sqrt(diff) <= o_.tol * std::sqrt(norm)) break;
        }
        std::copy(z_.begin(), z_.end(), y.data);
    }

private:
    Graph<T> body_;
    FixedPointOptions o_;
    mutable std::unique_ptr<Executor<T>> exec_;
    mutable std::vector<T> z_;
    mutable Index iterations_ = 0;
};

inline const bool fixed_point_registered = register_op<FixedPoint>("FixedPoint");
SPADE_OP_INSTANCES(FixedPoint)
SPADE_OP_INSTANCES(Executor)

namespace nn {

/// Adds a FixedPoint node iterating `body` from inputs[0] with inputs[1..] as extras.
template <Scalar T>
Var<T> fixed_point(const std::vector<Var<T>>& inputs, const std::string& name, Graph<T> body,
                   const FixedPointOptions& o = {}) {
    if (inputs.empty()) fail<GraphError>("fixed_point '", name, "': needs the initial iterate as input 0");
    return inputs[0].builder->apply(name, std::make_unique<FixedPoint<T>>(std::move(body), o), inputs);
}

}  // namespace nn
}  // namespace spade
