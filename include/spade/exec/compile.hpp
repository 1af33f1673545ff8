// The inference compile step: a copy of a graph rewritten for speed, leaving
// the training graph as it is.
//   - BatchNorm2d (with its running statistics) and per-channel Scale that
//     follow a Conv2d are folded into the conv's weight and bias;
//   - a residual Add of a Conv2d's output (after folding) and another tensor of
//     its shape joins the conv's output pass (Conv2dOptions::residual);
//   - a ReLU or ReLU6 that follows a Conv2d (after folding and the residual Add)
//     or a BatchNorm2d that is not folded (DenseNet's pre-activation) becomes
//     its fused activation, and an Add followed by a ReLU becomes one AddReLU;
//   - a 1x1 conv (stride 1, no padding) followed by an average pooling without
//     padding or ceil mode, with no activation or residual between them, runs
//     after the pooling instead: both are linear and per pixel or per channel, so
//     the order does not change the result (up to rounding), and the conv runs on
//     the pooled plane (DenseNet's transitions: its MACs fall to a quarter). The
//     pooling keeps its node name but now pools the conv's input;
//   - a BatchNorm2d that cannot fold (DenseNet's pre-activation), with its fused
//     activation, whose output only a 1x1 conv (stride 1, no padding, dilation or
//     groups) reads goes into that conv's input pass (Conv2dOptions::input_norm): the
//     conv maps each block of its input as it reads it, and the normalised tensor is
//     never written out. Not where the conv runs after a pooling (above);
//   - a 1x1 conv (stride 1, no padding, dilation or groups; its norms folded and
//     its activation fused) whose output only a depthwise conv with one output per
//     channel reads goes into that conv's input pass (Conv2dOptions::expand_input),
//     where the fused kernel takes the depthwise shape (kernels::expand_depthwise_fits:
//     3x3, stride 1 or 2, padding 1, planes of 14 x 14 and more, AVX-512), or where
//     the projection below goes in too: the expanded tensor of an inverted residual
//     block (MobileNet-v2) is never written out whole;
//   - the 1x1 conv (no padding, dilation or groups, no input norm) that alone reads
//     such a depthwise conv (one with its expansion in its input pass, without a
//     residual of its own) goes into that conv's output pass with its folds,
//     activation and residual (Conv2dOptions::project_output), where the fused kernel
//     takes the depthwise shape (kernels::inverted_residual_fits: outputs of up to 56
//     rows, planes of a step of pixels or more): the whole block runs in one pass,
//     band by band, or on rows under 14 wide (7 x 7) split by the expanded channels;
//   - a stem in place of the 1x1 expansion (a 3x3 conv of stride 2 and padding 1,
//     without dilation or groups, its norms folded and its activation fused), whose
//     output only such a depthwise conv reads, goes into that conv's input pass the
//     same way (Conv2dOptions::expand_kernel, expand_stride, expand_padding), where
//     the projection goes in too and the fused kernel takes the three
//     (kernels::stem_block_fits: up to 4 input channels, a 3x3 depthwise conv of
//     stride 1 and padding 1, AVX-512): MobileNet-v2's first three layers;
//   - subgraphs (FixedPoint bodies) are compiled the same way.
// Folding needs the intermediate tensor to have no other reader: a conv whose
// output also feeds a second layer, or is a graph output, is left as it is.
// A fused conv takes the place of the last node of its chain, where the
// residual operand has been computed.
// InferenceModel keeps the compiled copy in step with its source graph: it
// recompiles when the graph's version changed (channel surgery), and refresh()
// recompiles after weights changed in place (training does not bump the version).
// Its executor pre-packs weights (Op::pack) into the layout each kernel reads,
// once per plan; a recompile repacks them.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "spade/exec/executor.hpp"
#include "spade/graph/ops.hpp"

namespace spade {

/// Settings of compile_for_inference.
struct CompileOptions {
    bool fold_norms = true;        ///< fold BatchNorm2d and per-channel Scale into the preceding Conv2d
    bool fuse_activations = true;  ///< fuse ReLU / ReLU6 into the preceding Conv2d, ReLU into a preceding Add
    bool fuse_residuals = true;    ///< fuse a residual Add into the Conv2d producing one of its operands
    bool pool_first = true;        ///< run a 1x1 Conv2d after the AvgPool2d that follows it (see the file comment)
    bool fuse_input_norms = true;  ///< fold a BatchNorm2d (and ReLU) that only feeds a 1x1 Conv2d into the conv's input pass
    bool fuse_expansions = true;   ///< fold a 1x1 Conv2d that only feeds a depthwise Conv2d into its input pass
    bool fuse_projections = true;  ///< fold the 1x1 Conv2d that only reads such a depthwise Conv2d into its output pass
    bool prepack = true;           ///< InferenceModel: pack weights once per plan (Executor::set_prepack)
    bool tune_threads = true;      ///< InferenceModel: the fastest thread count per plan, by timing (Executor::set_thread_tuning)
};

namespace detail::compile {

// Readers of each value (graph outputs count as readers).
template <Scalar T>
std::vector<int> reader_counts(const Graph<T>& g) {
    std::vector<int> n(g.values().size(), 0);
    for (const auto& node : g.nodes())
        for (ValueId v : node.inputs) ++n[static_cast<std::size_t>(v)];
    for (ValueId v : g.outputs()) ++n[static_cast<std::size_t>(v)];
    return n;
}

// How often each parameter is used by a node.
template <Scalar T>
std::vector<int> param_uses(const Graph<T>& g) {
    std::vector<int> n(g.num_parameters(), 0);
    for (const auto& node : g.nodes())
        for (ParamId p : node.params) ++n[static_cast<std::size_t>(p)];
    return n;
}

// The per-channel map y = a x + b of a BatchNorm2d (running statistics) or a per-channel Scale
// node, for its `count` channels.
template <Scalar T>
void affine_of(const Graph<T>& g, const Node<T>& fn, Index count, std::vector<double>& a, std::vector<double>& b) {
    a.assign(static_cast<std::size_t>(count), 1.0), b.assign(static_cast<std::size_t>(count), 0.0);
    if (fn.op->type() == "Scale") {
        const T* w = g.parameter(fn.params[0]).data();
        for (Index c = 0; c < count; ++c) a[c] = static_cast<double>(w[c]);
        return;
    }
    const auto& bn = static_cast<const BatchNorm2d<T>&>(*fn.op);
    const bool affine = bn.options().affine;
    const T* mean = g.parameter(fn.params[affine ? 2 : 0]).data();
    const T* var = g.parameter(fn.params[affine ? 3 : 1]).data();
    for (Index c = 0; c < count; ++c) {
        const double inv = 1.0 / std::sqrt(static_cast<double>(var[c]) + bn.options().eps);
        const double gamma = affine ? static_cast<double>(g.parameter(fn.params[0]).data()[c]) : 1.0;
        const double beta = affine ? static_cast<double>(g.parameter(fn.params[1]).data()[c]) : 0.0;
        a[c] = gamma * inv;
        b[c] = beta - static_cast<double>(mean[c]) * gamma * inv;
    }
}

}  // namespace detail::compile

/// A copy of `g` with norms folded and activations fused (see the file comment);
/// it computes the same function up to rounding. Every parameter of the copy owns
/// its storage; folded convs get parameters named "<node>.weight" and "<node>.bias".
template <Scalar T>
Graph<T> compile_for_inference(const Graph<T>& g, const CompileOptions& o = {}) {
    using namespace detail::compile;
    const auto readers = reader_counts(g);
    const auto uses = param_uses(g);
    const std::size_t n = g.nodes().size();
    // the single reader of each value that has exactly one
    std::vector<NodeId> only_reader(g.values().size(), -1);
    for (std::size_t i = 0; i < n; ++i)
        for (ValueId v : g.nodes()[i].inputs)
            if (readers[static_cast<std::size_t>(v)] == 1) only_reader[static_cast<std::size_t>(v)] = static_cast<NodeId>(i);

    // plan: for each conv, the per-channel affine layers to fold and the activation to fuse
    struct Plan {
        std::vector<NodeId> folded;  // BatchNorm2d / Scale nodes, in order
        FusedActivation act = FusedActivation::none;
        ValueId residual = -1;  // the Add's other operand, if one is fused
        NodeId pool = -1;       // an AvgPool2d to run before the conv, if so
        NodeId last = -1;       // node whose output the fused chain ends in
    };
    std::map<NodeId, Plan> plans;
    std::vector<char> absorbed(n, 0);
    std::vector<NodeId> last_of(n, -1);  // for the last node of a chain: its head, emitted in its place
    std::vector<ValueId> alias(g.values().size());
    for (std::size_t v = 0; v < alias.size(); ++v) alias[v] = static_cast<ValueId>(v);
    auto next_of = [&](NodeId id) -> NodeId {  // the one reader of a node's one output, if so and not yet in a chain
        const auto& node = g.node(id);
        if (node.outputs.size() != 1) return -1;
        const NodeId r = only_reader[static_cast<std::size_t>(node.outputs[0])];
        return r >= 0 && !absorbed[static_cast<std::size_t>(r)] ? r : -1;
    };
    for (std::size_t i = 0; i < n; ++i) {
        if (absorbed[i]) continue;
        const auto& node = g.nodes()[i];
        const std::string type = node.op->type();
        const auto* conv_op = type == "Conv2d" ? &static_cast<const Conv2d<T>&>(*node.op) : nullptr;
        // (a conv with a projection folded in, compiled before, outputs the projection's
        // channels after its own activation: nothing more goes into it)
        const bool conv = conv_op && conv_op->options().activation == FusedActivation::none &&
                          !conv_op->options().project_output;
        // a conv compiled before (it adds a residual) may still take an activation, but
        // neither a fold (the residual would not be scaled) nor a second residual
        const bool plain_conv = conv && !conv_op->options().residual;
        const bool add = type == "Add";
        const bool norm = type == "BatchNorm2d" &&
                          static_cast<const BatchNorm2d<T>&>(*node.op).options().activation == FusedActivation::none;
        if (!conv && !add && !norm) continue;
        Plan plan;
        NodeId cur = static_cast<NodeId>(i);
        const bool own_params = std::all_of(node.params.begin(), node.params.end(),
                                            [&](ParamId p) { return uses[static_cast<std::size_t>(p)] == 1; });
        if (plain_conv && o.fold_norms && own_params) {
            while (true) {
                const NodeId nx = next_of(cur);
                if (nx < 0) break;
                const auto& next = g.node(nx);
                const std::string t = next.op->type();
                const bool bn = t == "BatchNorm2d" && static_cast<const BatchNorm2d<T>&>(*next.op).options().activation ==
                                                          FusedActivation::none;
                const bool scale = t == "Scale" && static_cast<const Scale<T>&>(*next.op).per_channel();
                if (!bn && !scale) break;
                plan.folded.push_back(nx);
                cur = nx;
            }
        }
        if (plain_conv && o.fuse_residuals) {
            const NodeId nx = next_of(cur);
            if (nx >= 0 && g.node(nx).op->type() == "Add") {
                const auto& sum = g.node(nx);
                const ValueId mine = g.node(cur).outputs[0];
                const ValueId other = sum.inputs[0] == mine ? sum.inputs[1] : sum.inputs[0];
                if (other != mine && g.value(other).shape == g.value(mine).shape) {
                    plan.residual = other;
                    cur = nx;
                }
            }
        }
        if (o.fuse_activations) {
            const NodeId nx = next_of(cur);
            if (nx >= 0) {
                const std::string t = g.node(nx).op->type();
                if (t == "ReLU" || (!add && t == "ReLU6")) {
                    plan.act = t == "ReLU" ? FusedActivation::relu : FusedActivation::relu6;
                    cur = nx;
                }
            }
        }
        // (not a conv that maps its input first: the pooling would come before that map's activation)
        if (plain_conv && o.pool_first && plan.act == FusedActivation::none && plan.residual < 0 &&
            !conv_op->options().input_norm && conv_op->options().kernel == Pair2{1} && conv_op->options().stride == Pair2{1} &&
            conv_op->options().padding == Pair2{0}) {
            const NodeId nx = next_of(cur);
            if (nx >= 0 && g.node(nx).op->type() == "AvgPool2d") {
                const auto& po = static_cast<const AvgPool2d<T>&>(*g.node(nx).op).options();
                if (po.padding == Pair2{0} && !po.ceil_mode) {
                    plan.pool = nx;
                    cur = nx;
                }
            }
        }
        if ((add || norm) && plan.act == FusedActivation::none) continue;
        plan.last = cur;
        if (cur != static_cast<NodeId>(i)) {
            for (NodeId k = next_of(static_cast<NodeId>(i)); k >= 0; k = next_of(k)) {  // the chain after the head: folded norms, Add, activation
                absorbed[static_cast<std::size_t>(k)] = 1;
                if (k == cur) break;
            }
            alias[static_cast<std::size_t>(g.node(cur).outputs[0])] = node.outputs[0];
            last_of[static_cast<std::size_t>(cur)] = static_cast<NodeId>(i);
        }
        plans[static_cast<NodeId>(i)] = std::move(plan);
    }
    // a value absorbed into a chain resolves to the head's output
    auto resolve = [&](ValueId v) {
        while (alias[static_cast<std::size_t>(v)] != v) v = alias[static_cast<std::size_t>(v)];
        return v;
    };
    // a BatchNorm2d (and its activation) whose output only a 1x1 conv reads, as its input, goes
    // into that conv's input pass (not where the conv runs after a pooling: the norm and the
    // activation must come first)
    std::map<NodeId, NodeId> input_norm;  // conv -> norm
    std::vector<char> norm_into_conv(n, 0);
    for (std::size_t i = 0; i < n && o.fuse_input_norms; ++i) {
        const auto& node = g.nodes()[i];
        if (absorbed[i] || node.op->type() != "BatchNorm2d" ||
            static_cast<const BatchNorm2d<T>&>(*node.op).options().activation != FusedActivation::none)
            continue;
        const auto plan = plans.find(static_cast<NodeId>(i));
        const ValueId v = g.node(plan == plans.end() ? static_cast<NodeId>(i) : plan->second.last).outputs[0];
        const NodeId r = readers[static_cast<std::size_t>(v)] == 1 ? only_reader[static_cast<std::size_t>(v)] : -1;
        if (r < 0 || absorbed[static_cast<std::size_t>(r)] || g.node(r).op->type() != "Conv2d" || g.node(r).inputs[0] != v)
            continue;
        const auto& co = static_cast<const Conv2d<T>&>(*g.node(r).op).options();
        const auto conv_plan = plans.find(r);
        if (!co.pointwise() || co.residual || co.input_norm || conv_plan == plans.end() || conv_plan->second.pool >= 0)
            continue;
        input_norm[r] = static_cast<NodeId>(i);
        norm_into_conv[i] = 1;
    }

    // a 1x1 conv (with its folds and activation) whose output only a depthwise conv reads, where
    // the fused kernel takes the depthwise conv's shape, goes into that conv's input pass (both
    // convs have plans: every conv without an activation of its own gets one, and neither has one);
    // so does a stem (3x3, stride 2, padding 1) where stem_block_fits, kept only with its projection
    std::map<NodeId, NodeId> expand_into;  // depthwise conv -> its expansion
    std::vector<char> expansion(n, 0);
    for (std::size_t i = 0; i < n && o.fuse_expansions; ++i) {
        const auto& node = g.nodes()[i];
        if (absorbed[i] || node.op->type() != "Conv2d" || input_norm.count(static_cast<NodeId>(i))) continue;
        const auto& eo = static_cast<const Conv2d<T>&>(*node.op).options();
        const bool stem = !eo.pointwise();  // its window checked below
        if ((stem && eo.groups != 1) || eo.residual || eo.input_norm || eo.expand_input ||
            eo.activation != FusedActivation::none)
            continue;
        const Plan& plan = plans.at(static_cast<NodeId>(i));
        if (plan.residual >= 0 || plan.pool >= 0) continue;
        const ValueId v = g.node(plan.last).outputs[0];
        const NodeId r = readers[static_cast<std::size_t>(v)] == 1 ? only_reader[static_cast<std::size_t>(v)] : -1;
        if (r < 0 || g.node(r).op->type() != "Conv2d" || g.node(r).inputs[0] != v || input_norm.count(r)) continue;
        const auto& conv = static_cast<const Conv2d<T>&>(*g.node(r).op);
        const auto& co = conv.options();
        const Shape& e = g.value(v).shape;
        const Shape& w = g.parameter(g.node(r).params[0]).shape();
        if (co.groups != e[1] || w[0] != e[1] || co.input_norm || co.expand_input || co.residual ||
            co.activation != FusedActivation::none || plans.at(r).pool >= 0)
            continue;
        // where only the whole block fuses (7 x 7, stems), kept below only if the projection goes in too
        const auto dg = conv.geometry(e, g.node(r).name);
        if (stem) {
            const Shape& image = g.value(node.inputs[0]).shape;
            const auto sg = static_cast<const Conv2d<T>&>(*node.op).geometry(image, node.name);
            if (!o.fuse_projections || !kernels::stem_block_fits(image[1], sg, dg)) continue;
        } else if (!kernels::expand_depthwise_fits(dg) && !(o.fuse_projections && kernels::inverted_residual_fits(dg))) {
            continue;
        }
        expand_into[r] = static_cast<NodeId>(i);
        expansion[i] = 1;
    }
    // the 1x1 conv (with its folds, activation and residual) that alone reads such a depthwise conv
    // (without a residual), where the fused kernel takes its shape, goes into that conv's output pass
    std::map<NodeId, NodeId> project_into;  // projection -> the depthwise conv that takes it in
    std::vector<char> projected(n, 0);      // depthwise convs that take a projection in
    // (a 1x1 conv that is another block's expansion is not taken, even where that expansion is
    // dropped below: the order only ever leaves a fusion out, never makes a wrong one)
    auto projection_of = [&](NodeId r, bool block_fits) -> NodeId {  // -1: none fuses
        const Plan& plan = plans.at(r);
        if (!o.fuse_projections || plan.residual >= 0 || plan.pool >= 0 || !block_fits) return -1;
        const ValueId v = g.node(plan.last).outputs[0];
        const NodeId q = readers[static_cast<std::size_t>(v)] == 1 ? only_reader[static_cast<std::size_t>(v)] : -1;
        if (q < 0 || absorbed[static_cast<std::size_t>(q)] || g.node(q).op->type() != "Conv2d" ||
            g.node(q).inputs[0] != v || input_norm.count(q) || expansion[static_cast<std::size_t>(q)] || expand_into.count(q))
            return -1;
        const auto& po = static_cast<const Conv2d<T>&>(*g.node(q).op).options();
        const auto q_plan = plans.find(q);
        if (!po.pointwise() || po.input_norm || po.expand_input || po.project_output || q_plan == plans.end() ||
            q_plan->second.pool >= 0)
            return -1;
        return q;
    };
    std::vector<NodeId> unfused;  // depthwise convs whose expansion fuses only with a projection that does not
    for (const auto& [r, e] : expand_into) {
        const auto& conv = static_cast<const Conv2d<T>&>(*g.node(r).op);
        const ValueId x = g.node(e).outputs[0];  // the expanded tensor, the depthwise conv's own input
        const auto dg = conv.geometry(g.value(x).shape, g.node(r).name);
        // a stem's whole block was checked above
        const bool is_stem = !static_cast<const Conv2d<T>&>(*g.node(e).op).options().pointwise();
        if (const NodeId q = projection_of(r, is_stem || kernels::inverted_residual_fits(dg)); q >= 0) {
            project_into[q] = r;
            projected[static_cast<std::size_t>(r)] = 1;
        } else if (is_stem || !kernels::expand_depthwise_fits(dg)) {
            unfused.push_back(r);
        }
    }
    for (const NodeId r : unfused) {
        expansion[static_cast<std::size_t>(expand_into.at(r))] = 0;
        expand_into.erase(r);
    }
    struct Expansion {
        std::vector<ParamId> params;  // weight, bias (of the copy)
        FusedActivation act;
        Pair2 kernel, stride, padding;
    };
    std::map<NodeId, Expansion> expansions;  // by the expansion's node
    struct Waiting {  // a depthwise conv waiting for its projection
        Conv2dOptions options;
        std::vector<ParamId> params;
        ValueId input;
    };
    std::map<NodeId, Waiting> waiting;  // by the depthwise conv's node

    Graph<T> out;
    std::vector<ValueId> map(g.values().size(), -1);
    for (ValueId v : g.inputs()) map[static_cast<std::size_t>(v)] = out.add_input(g.value(v).name, g.value(v).shape);
    std::map<ParamId, ParamId> copied;  // original parameter -> its copy (shared ones stay shared)
    auto copy_param = [&](ParamId p) {
        auto it = copied.find(p);
        if (it != copied.end()) return it->second;
        return copied[p] = out.add_parameter(Parameter<T>(g.parameter(p)));
    };
    for (std::size_t at = 0; at < n; ++at) {
        if (absorbed[at] && last_of[at] < 0) continue;
        const std::size_t i = absorbed[at] ? static_cast<std::size_t>(last_of[at]) : at;
        auto it = plans.find(static_cast<NodeId>(i));
        if (i == at && it != plans.end() && it->second.last != static_cast<NodeId>(i)) continue;  // emitted at its last node
        const auto& node = g.nodes()[i];
        std::vector<ValueId> in;
        for (ValueId v : node.inputs) in.push_back(map[static_cast<std::size_t>(resolve(v))]);
        if (norm_into_conv[i]) {  // its conv reads its input
            map[static_cast<std::size_t>(node.outputs[0])] = in[0];
            continue;
        }
        std::unique_ptr<Op<T>> op;
        std::vector<ParamId> params;
        if (it == plans.end()) {
            op = node.op->clone();
            for (ParamId p : node.params) params.push_back(copy_param(p));
            for (Graph<T>* sub : op->mutable_subgraphs()) *sub = compile_for_inference(*sub, o);
        } else if (node.op->type() == "Add") {
            op = std::make_unique<AddReLU<T>>();
        } else if (node.op->type() == "BatchNorm2d") {
            auto bo = static_cast<const BatchNorm2d<T>&>(*node.op).options();
            bo.activation = it->second.act;
            op = std::make_unique<BatchNorm2d<T>>(bo);
            for (ParamId p : node.params) params.push_back(copy_param(p));
        } else {
            const auto& conv = static_cast<const Conv2d<T>&>(*node.op);
            Conv2dOptions co = conv.options();
            const auto& w0 = g.parameter(node.params[0]);
            const Index cout = w0.shape()[0], per_out = w0.numel() / std::max<Index>(cout, 1);
            std::vector<double> scale(static_cast<std::size_t>(cout), 1.0), shift(static_cast<std::size_t>(cout), 0.0);
            if (co.bias)
                for (Index c = 0; c < cout; ++c) shift[c] = static_cast<double>(g.parameter(node.params[1]).data()[c]);
            std::vector<double> a, b;
            for (NodeId f : it->second.folded) {  // y -> a y + b, composed in order
                affine_of(g, g.node(f), cout, a, b);
                for (Index c = 0; c < cout; ++c) scale[c] *= a[c], shift[c] = a[c] * shift[c] + b[c];
            }
            const bool folded = !it->second.folded.empty();
            co.activation = it->second.act;
            if (const NodeId pool = it->second.pool; pool >= 0) {  // the pooling first, on the conv's input
                const auto& pn = g.node(pool);
                const NodeId id = out.add_node(pn.name, pn.op->clone(), {in[0]}, {});
                in[0] = out.node(id).outputs[0];
            }
            if (it->second.residual >= 0) {
                co.residual = true;
                in.push_back(map[static_cast<std::size_t>(resolve(it->second.residual))]);
            }
            if (folded) {
                co.bias = true;
                Parameter<T> w(node.name + ".weight", w0.shape());
                for (Index c = 0; c < cout; ++c)
                    for (Index k = 0; k < per_out; ++k)
                        w.data()[c * per_out + k] = static_cast<T>(static_cast<double>(w0.data()[c * per_out + k]) * scale[c]);
                Parameter<T> bias(node.name + ".bias", Shape{cout});
                for (Index c = 0; c < cout; ++c) bias.data()[c] = static_cast<T>(shift[c]);
                params = {out.add_parameter(std::move(w)), out.add_parameter(std::move(bias))};
                // a conv compiled before keeps its input pass (the parameters after its bias)
                if (co.input_norm || co.expand_input)
                    for (std::size_t k = conv.options().bias ? 2 : 1; k < node.params.size(); ++k)
                        params.push_back(copy_param(node.params[k]));
            } else {
                for (ParamId p : node.params) params.push_back(copy_param(p));
            }
            if (const auto pre = input_norm.find(static_cast<NodeId>(i)); pre != input_norm.end()) {
                const auto& bn = g.node(pre->second);
                const Index cin = g.value(bn.outputs[0]).shape[1];
                affine_of(g, bn, cin, a, b);
                Parameter<T> in_scale(node.name + ".input_scale", Shape{cin}), in_shift(node.name + ".input_shift", Shape{cin});
                for (Index c = 0; c < cin; ++c)
                    in_scale.data()[c] = static_cast<T>(a[c]), in_shift.data()[c] = static_cast<T>(b[c]);
                params.push_back(out.add_parameter(std::move(in_scale)));
                params.push_back(out.add_parameter(std::move(in_shift)));
                co.input_norm = true;
                const auto norm_plan = plans.find(pre->second);
                co.input_activation = norm_plan == plans.end() ? FusedActivation::none : norm_plan->second.act;
            }
            auto zero_bias = [&] {  // for a 1x1 conv without one that goes into a depthwise conv
                if (co.bias) return;
                Parameter<T> bias(node.name + ".bias", Shape{cout});
                std::fill(bias.data(), bias.data() + cout, T(0));
                params.push_back(out.add_parameter(std::move(bias)));
            };
            if (expansion[i]) {  // its depthwise conv takes it in: its weight and bias (zero if none), its activation
                zero_bias();
                expansions[static_cast<NodeId>(i)] = {std::move(params), co.activation, co.kernel, co.stride, co.padding};
                map[static_cast<std::size_t>(node.outputs[0])] = in[0];
                continue;
            }
            if (const auto e = expand_into.find(static_cast<NodeId>(i)); e != expand_into.end()) {
                const Expansion& ex = expansions.at(e->second);
                params.insert(params.end(), ex.params.begin(), ex.params.end());
                co.expand_input = true;
                co.expand_activation = ex.act;
                co.expand_kernel = ex.kernel, co.expand_stride = ex.stride, co.expand_padding = ex.padding;
            }
            if (projected[i]) {  // emitted with its projection
                waiting[static_cast<NodeId>(i)] = {co, std::move(params), in[0]};
                continue;
            }
            if (const auto p = project_into.find(static_cast<NodeId>(i)); p != project_into.end()) {
                // its depthwise conv takes it in: its weight and bias (zero if none), activation and residual
                zero_bias();
                Waiting& dw = waiting.at(p->second);
                dw.options.project_output = true;
                dw.options.project_activation = co.activation;
                dw.options.residual = co.residual;
                dw.params.insert(dw.params.end(), params.begin(), params.end());
                in[0] = dw.input;
                const NodeId id = out.add_node(g.node(p->second).name, std::make_unique<Conv2d<T>>(dw.options), std::move(in),
                                               std::move(dw.params));
                map[static_cast<std::size_t>(node.outputs[0])] = out.node(id).outputs[0];
                continue;
            }
            op = std::make_unique<Conv2d<T>>(co);
        }
        const NodeId id = out.add_node(node.name, std::move(op), std::move(in), std::move(params));
        for (std::size_t k = 0; k < node.outputs.size(); ++k)
            map[static_cast<std::size_t>(node.outputs[k])] = out.node(id).outputs[k];
    }
    for (ValueId v : g.outputs()) out.add_output(map[static_cast<std::size_t>(resolve(v))]);
    return out;
}

/// Runs a graph through its compiled copy and keeps the copy current: a changed
/// graph version (channel surgery, new nodes) recompiles on the next forward; call
/// refresh() after changing weights in place. Holds a reference to the graph.
template <Scalar T>
class InferenceModel {
public:
    explicit InferenceModel(const Graph<T>& g, const CompileOptions& o = {}) : source_(&g), options_(o) { refresh(); }

    /// Recompiles from the source graph now.
    void refresh() {
        auto compiled = std::make_unique<Graph<T>>(compile_for_inference(*source_, options_));
        auto exec = std::make_unique<Executor<T>>(*compiled);
        exec->set_prepack(options_.prepack);
        exec->set_thread_tuning(options_.tune_threads);
        compiled_ = std::move(compiled);
        exec_ = std::move(exec);
        version_ = source_->version();
    }
    /// Output of a single-input, single-output graph.
    Tensor<T> forward(const Tensor<T>& x) {
        current();
        return exec_->forward(x);
    }
    /// Outputs for any number of inputs.
    std::vector<Tensor<T>> forward(std::span<const TensorRef<const T>> inputs) {
        current();
        return exec_->forward(inputs);
    }
    /// The compiled graph (recompiled first if the source changed).
    const Graph<T>& compiled() {
        current();
        return *compiled_;
    }
    /// The executor of the compiled graph (its plan reports peak activation memory).
    Executor<T>& executor() {
        current();
        return *exec_;
    }

private:
    void current() {
        if (source_->version() != version_) refresh();
    }
    const Graph<T>* source_;
    CompileOptions options_;
    std::unique_ptr<Graph<T>> compiled_;
    std::unique_ptr<Executor<T>> exec_;
    std::uint64_t version_ = 0;
};

}  // namespace spade
