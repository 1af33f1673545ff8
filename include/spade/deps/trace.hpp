// trace_groups(): from every node's channel rule to the groups of coupled
// channels. Each channel space (the channel axis of an activation, or an axis
// of a parameter) is a run of elements; the rules' links (same, offset, blocks,
// tie) unite single channels in a union-find. A class of united channels is one
// removable unit, and spaces that share a unit form a group. A parameter used
// by several nodes is one space, so weight sharing needs nothing special.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <tuple>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "spade/core/error.hpp"
#include "spade/deps/group.hpp"
#include "spade/graph/graph.hpp"

namespace spade {

/// Settings of trace_groups.
struct TraceOptions {
    /// Node or parameter names to leave untouched (inside a subgraph: "<node>.<k>.<name>").
    /// An ignored node keeps every channel of its inputs, outputs and parameters.
    std::vector<std::string> ignore{};
};

/// One graph of a model with its subgraphs: where it sits and how its names are prefixed.
template <class G>
struct GraphEntry {
    G* graph;
    std::string prefix;  ///< "" for the top graph, "<node>.<k>." for subgraph k of a node
};

/// The graph and every subgraph its ops own, breadth first in node order. Index 0 is
/// `g`; GroupMember::graph indexes this list.
template <Scalar T>
std::vector<GraphEntry<const Graph<T>>> graph_list(const Graph<T>& g) {
    std::vector<GraphEntry<const Graph<T>>> out{{&g, ""}};
    for (std::size_t i = 0; i < out.size(); ++i) {
        const auto entry = out[i];
        for (const auto& n : entry.graph->nodes()) {
            auto subs = n.op->subgraphs();
            for (std::size_t k = 0; k < subs.size(); ++k)
                out.push_back({subs[k], entry.prefix + n.name + "." + std::to_string(k) + "."});
        }
    }
    return out;
}

/// The same list with mutable graphs (for surgery); the order equals the const one.
template <Scalar T>
std::vector<GraphEntry<Graph<T>>> mutable_graph_list(Graph<T>& g) {
    std::vector<GraphEntry<Graph<T>>> out{{&g, ""}};
    for (std::size_t i = 0; i < out.size(); ++i) {
        const auto entry = out[i];
        for (std::size_t ni = 0; ni < entry.graph->nodes().size(); ++ni) {
            auto& n = entry.graph->mutable_node(static_cast<NodeId>(ni));
            auto subs = n.op->mutable_subgraphs();
            for (std::size_t k = 0; k < subs.size(); ++k)
                out.push_back({subs[k], entry.prefix + n.name + "." + std::to_string(k) + "."});
        }
    }
    return out;
}

namespace detail::trace {

// One channel space: a run of elements [base, base + size) in the union-find.
struct Space {
    int graph;
    GroupMember::Kind kind;
    int id, axis;
    Index groups, size, base;
    std::string name, label;
    std::string pinned;  // reason, empty when free
};

template <Scalar T>
class Tracer {
public:
    Tracer(const Graph<T>& g, const TraceOptions& o) : graphs_(graph_list(g)) {
        first_sub_.resize(graphs_.size());
        // subgraph k of node n of graph gi is entry first_sub_[gi][n] + k (graph_list order)
        std::size_t next = 1;
        for (std::size_t gi = 0; gi < graphs_.size(); ++gi)
            for (const auto& n : graphs_[gi].graph->nodes()) {
                first_sub_[gi].push_back(static_cast<int>(next));
                next += n.op->subgraphs().size();
            }
        for (const auto& name : o.ignore) ignore_.insert(name);
        std::unordered_set<std::string> used;
        for (std::size_t gi = 0; gi < graphs_.size(); ++gi) walk(static_cast<int>(gi), used);
        for (const auto& name : o.ignore)
            if (!used.count(name)) fail<PruneError>("ignore: no node or parameter named '", name, "'");
        const Graph<T>& top = g;
        for (ValueId v : top.inputs()) pin_value(0, v, "'" + top.value(v).name + "' is a graph input");
        for (ValueId v : top.outputs()) pin_value(0, v, "'" + top.value(v).name + "' is a graph output");
        for (const auto& [key, reason] : param_marks_) {
            auto it = index_.find(key);
            if (it != index_.end()) pin(it->second, reason);
        }
    }

    std::vector<Group> groups(std::uint64_t version) {
        const Index total = static_cast<Index>(parent_.size());
        std::vector<int> root(static_cast<std::size_t>(total));
        for (Index e = 0; e < total; ++e) root[static_cast<std::size_t>(e)] = find(static_cast<int>(e));
        // spaces that share a class are one group
        std::vector<int> owner(static_cast<std::size_t>(total));
        for (std::size_t s = 0; s < spaces_.size(); ++s)
            std::fill_n(owner.begin() + spaces_[s].base, spaces_[s].size, static_cast<int>(s));
        std::vector<int> sp(spaces_.size());
        std::iota(sp.begin(), sp.end(), 0);
        auto sfind = [&](int s) {
            while (sp[s] != s) s = sp[s] = sp[sp[s]];
            return s;
        };
        for (Index e = 0; e < total; ++e) {
            int a = sfind(owner[static_cast<std::size_t>(e)]), b = sfind(owner[static_cast<std::size_t>(root[e])]);
            if (a != b) sp[std::max(a, b)] = std::min(a, b);
        }
        std::vector<std::vector<int>> comps;
        std::vector<int> comp_of(spaces_.size(), -1);
        for (std::size_t s = 0; s < spaces_.size(); ++s) {
            const int r = sfind(static_cast<int>(s));
            if (comp_of[r] < 0) comp_of[r] = static_cast<int>(comps.size()), comps.emplace_back();
            comps[comp_of[r]].push_back(static_cast<int>(s));
        }
        std::vector<Group> out;
        std::vector<Index> unit_of(static_cast<std::size_t>(total), -1);  // by class root
        std::vector<int> seen(static_cast<std::size_t>(total), -1);
        for (const auto& comp : comps) {
            Group grp;
            grp.id = out.size();
            grp.graph_version = version;
            // root: the parameter axis holding the most classes; on ties a layer's own
            // output axis before others, plain before grouped, then the earliest
            int best = -1;
            std::tuple<Index, int, int, int> best_key{-1, 0, 0, 0};
            for (int s : comp) {
                const Space& sc = spaces_[s];
                if (sc.kind != GroupMember::Kind::param) continue;
                Index classes = 0;
                for (Index e = sc.base; e < sc.base + sc.size; ++e) {
                    int& mark = seen[static_cast<std::size_t>(root[e])];
                    if (mark != s) mark = s, ++classes;
                }
                const std::tuple<Index, int, int, int> key{classes, sc.label == "out", sc.groups == 1, -s};
                if (key > best_key) best = s, best_key = key;
            }
            std::vector<int> order;  // root, other parameters, values; creation order inside each
            if (best >= 0) order.push_back(best);
            for (int s : comp)
                if (s != best && spaces_[s].kind == GroupMember::Kind::param) order.push_back(s);
            for (int s : comp)
                if (spaces_[s].kind == GroupMember::Kind::value) order.push_back(s);
            Index units = 0;
            for (int s : order) {
                const Space& sc = spaces_[s];
                GroupMember m{sc.kind, sc.graph, sc.id, sc.axis, sc.groups, sc.name, sc.label, {}};
                m.unit.resize(static_cast<std::size_t>(sc.size));
                for (Index e = 0; e < sc.size; ++e) {
                    Index& u = unit_of[static_cast<std::size_t>(root[sc.base + e])];
                    if (u < 0) u = units++;
                    m.unit[static_cast<std::size_t>(e)] = u;
                }
                grp.members.push_back(std::move(m));
                if (grp.prunable && !sc.pinned.empty()) grp.prunable = false, grp.reason = sc.pinned;
            }
            grp.units = units;
            if (best < 0 && grp.prunable) grp.prunable = false, grp.reason = "it holds no parameter";
            apply_even(grp, comp);
            out.push_back(std::move(grp));
        }
        return out;
    }

private:
    using Kind = GroupMember::Kind;

    static std::uint64_t key(int graph, Kind kind, int id, int axis) {
        return (static_cast<std::uint64_t>(graph) << 44) | (static_cast<std::uint64_t>(kind) << 40) |
               (static_cast<std::uint64_t>(axis & 0xff) << 32) | static_cast<std::uint32_t>(id);
    }

    int space(int graph, Kind kind, int id, int axis, Index groups, Index extent, std::string name, const char* label) {
        const auto k = key(graph, kind, id, axis);
        auto it = index_.find(k);
        std::string shared_reason;  // set when this reading of a weight must stay apart from an earlier one
        if (it != index_.end()) {
            Space& s = spaces_[it->second];
            if (s.groups == groups) {
                if (s.label.empty() && label) s.label = label;
                return it->second;
            }
            // the same weight read with other conv groups: both readings stay whole
            shared_reason = "parameter '" + s.name + "' is used with " + std::to_string(s.groups) + " and " +
                            std::to_string(groups) + " conv groups";
            pin(it->second, shared_reason);
        }
        const int sid = static_cast<int>(spaces_.size());
        const Index size = extent * groups;
        if (static_cast<Index>(parent_.size()) + size > Index(std::numeric_limits<int>::max()))
            fail<GraphError>("trace_groups: more than 2^31 channel elements");
        spaces_.push_back({graph, kind, id, axis, groups, size, static_cast<Index>(parent_.size()), std::move(name),
                           label ? label : "", ""});
        parent_.resize(parent_.size() + static_cast<std::size_t>(size));
        std::iota(parent_.end() - size, parent_.end(), static_cast<int>(spaces_[sid].base));
        if (shared_reason.empty()) index_[k] = sid;
        else pin(sid, shared_reason);
        return sid;
    }
    int value_space(int gi, ValueId v) {
        const auto& val = graphs_[gi].graph->value(v);
        return space(gi, Kind::value, v, 1, 1, val.shape[1], graphs_[gi].prefix + val.name, nullptr);
    }
    void pin(int s, const std::string& reason) {
        if (spaces_[s].pinned.empty()) spaces_[s].pinned = reason;
    }
    void pin_value(int gi, ValueId v, const std::string& reason) {
        if (graphs_[gi].graph->value(v).shape.rank() >= 2) pin(value_space(gi, v), reason);
    }

    int find(int e) {
        while (parent_[e] != e) e = parent_[e] = parent_[parent_[e]];
        return e;
    }
    void unite(Index a, Index b) {
        int ra = find(static_cast<int>(a)), rb = find(static_cast<int>(b));
        if (ra != rb) parent_[std::max(ra, rb)] = std::min(ra, rb);  // the earliest element stays the root
    }

    // Resolves an axis a rule names to a space, or -1 for a value without a channel axis.
    int resolve(int gi, NodeId ni, const ChannelAxis& a, std::vector<char>& in_seen, std::vector<char>& out_seen,
                std::unordered_set<std::uint64_t>& sub_seen) {
        const Graph<T>& g = *graphs_[gi].graph;
        const auto& n = g.node(ni);
        auto bad = [&](const char* what, int i, std::size_t count) {
            fail<GraphError>("node '", graphs_[gi].prefix, n.name, "' (", n.op->type(), "): channel rule names ", what, " ",
                             i, " of ", count);
        };
        switch (a.kind) {
            case ChannelAxis::Kind::input:
            case ChannelAxis::Kind::output: {
                const bool in = a.kind == ChannelAxis::Kind::input;
                const auto& vals = in ? n.inputs : n.outputs;
                if (a.index < 0 || a.index >= static_cast<int>(vals.size())) bad(in ? "input" : "output", a.index, vals.size());
                (in ? in_seen : out_seen)[static_cast<std::size_t>(a.index)] = 1;
                const ValueId v = vals[static_cast<std::size_t>(a.index)];
                return g.value(v).shape.rank() >= 2 ? value_space(gi, v) : -1;
            }
            case ChannelAxis::Kind::param: {
                if (a.index < 0 || a.index >= static_cast<int>(n.params.size())) bad("parameter", a.index, n.params.size());
                const ParamId p = n.params[static_cast<std::size_t>(a.index)];
                const auto& par = g.parameter(p);
                if (a.axis < 0 || a.axis >= par.shape().rank() || a.groups < 1 ||
                    (a.groups > 1 && (a.axis != 1 || par.shape()[0] % a.groups != 0)))
                    fail<GraphError>("node '", graphs_[gi].prefix, n.name, "' (", n.op->type(), "): channel rule names axis ",
                                     a.axis, " (", a.groups, " groups) of parameter '", par.name(), "' of shape ",
                                     par.shape(), "; a grouped axis must be axis 1 with axis 0 divisible by the groups");
                mentioned_params_.insert(key(gi, Kind::param, p, a.axis));
                return space(gi, Kind::param, p, a.axis, a.groups, par.shape()[a.axis], graphs_[gi].prefix + par.name(),
                             a.label);
            }
            case ChannelAxis::Kind::sub_input:
            case ChannelAxis::Kind::sub_output: {
                const auto subs = n.op->subgraphs();
                if (a.sub < 0 || a.sub >= static_cast<int>(subs.size())) bad("subgraph", a.sub, subs.size());
                const int sg = first_sub_[gi][static_cast<std::size_t>(ni)] + a.sub;
                const bool in = a.kind == ChannelAxis::Kind::sub_input;
                const auto& vals = in ? subs[a.sub]->inputs() : subs[a.sub]->outputs();
                if (a.index < 0 || a.index >= static_cast<int>(vals.size()))
                    bad(in ? "subgraph input" : "subgraph output", a.index, vals.size());
                const ValueId v = vals[static_cast<std::size_t>(a.index)];
                sub_seen.insert(key(sg, Kind::value, v, 1));
                return subs[a.sub]->value(v).shape.rank() >= 2 ? value_space(sg, v) : -1;
            }
        }
        return -1;
    }

    void walk(int gi, std::unordered_set<std::string>& used) {
        const Graph<T>& g = *graphs_[gi].graph;
        const std::string& prefix = graphs_[gi].prefix;
        std::vector<Shape> in, out, ps;
        for (std::size_t ni = 0; ni < g.nodes().size(); ++ni) {
            const auto& n = g.nodes()[ni];
            const std::string where = "node '" + prefix + n.name + "' (" + n.op->type() + ")";
            in.clear(), out.clear();
            for (ValueId v : n.inputs) in.push_back(g.value(v).shape);
            for (ValueId v : n.outputs) out.push_back(g.value(v).shape);
            ps = g.param_shapes(static_cast<NodeId>(ni));
            ChannelRules rules(n.name, in, out, ps);
            n.op->channel_rule(rules);
            std::vector<char> in_seen(in.size()), out_seen(out.size());
            std::unordered_set<std::uint64_t> sub_seen;
            for (const auto& l : rules.links()) {
                const int a = resolve(gi, static_cast<NodeId>(ni), l.a, in_seen, out_seen, sub_seen);
                const int b = resolve(gi, static_cast<NodeId>(ni), l.b, in_seen, out_seen, sub_seen);
                if (a < 0 || b < 0) continue;
                link(l, a, b, where);
            }
            const bool ignored = ignore_.count(prefix + n.name) != 0;
            if (ignored) used.insert(prefix + n.name);
            for (std::size_t i = 0; i < in.size(); ++i)
                if (ignored || !in_seen[i])
                    pin_value(gi, n.inputs[i], ignored ? where + " is ignored"
                                                       : where + " has no channel rule for input " + std::to_string(i));
            for (std::size_t i = 0; i < out.size(); ++i)
                if (ignored || !out_seen[i])
                    pin_value(gi, n.outputs[i], ignored ? where + " is ignored"
                                                        : where + " has no channel rule for output " + std::to_string(i));
            for (std::size_t pi = 0; pi < n.params.size(); ++pi) {
                const ParamId p = n.params[pi];
                const auto& par = g.parameter(p);
                const bool pignored = ignore_.count(prefix + par.name()) != 0;
                if (pignored) used.insert(prefix + par.name());
                for (int ax = 0; ax < par.shape().rank(); ++ax) {
                    const auto k = key(gi, Kind::param, p, ax);
                    if (ignored)
                        param_marks_.emplace_back(k, where + " is ignored");
                    else if (pignored)
                        param_marks_.emplace_back(k, "'" + prefix + par.name() + "' is ignored");
                    else if (!mentioned_params_.count(k))
                        param_marks_.emplace_back(k, where + " keeps axis " + std::to_string(ax) + " of '" + prefix +
                                                         par.name() + "' whole");
                }
            }
            mentioned_params_.clear();
            // subgraph inputs and outputs the op did not relate stay as they are
            const auto subs = n.op->subgraphs();
            for (std::size_t k = 0; k < subs.size(); ++k) {
                const int sg = first_sub_[gi][ni] + static_cast<int>(k);
                for (const auto* vals : {&subs[k]->inputs(), &subs[k]->outputs()})
                    for (ValueId v : *vals)
                        if (!sub_seen.count(key(sg, Kind::value, v, 1)))
                            pin_value(sg, v, where + " has no channel rule for this input/output of its subgraph");
            }
        }
    }

    void link(const ChannelLink& l, int a, int b, const std::string& where) {
        const Space &sa = spaces_[a], &sb = spaces_[b];
        auto mismatch = [&](const char* rel) {
            fail<GraphError>(where, ": channel rule '", rel, "' links '", sa.name, "' (", sa.size, " channels) and '",
                             sb.name, "' (", sb.size, " channels) with n = ", l.n);
        };
        switch (l.kind) {
            case ChannelLink::Kind::same:
                if (sa.size != sb.size) mismatch("same");
                for (Index i = 0; i < sa.size; ++i) unite(sa.base + i, sb.base + i);
                break;
            case ChannelLink::Kind::offset:
                if (l.n < 0 || l.n + sa.size > sb.size) mismatch("offset");
                for (Index i = 0; i < sa.size; ++i) unite(sa.base + i, sb.base + l.n + i);
                break;
            case ChannelLink::Kind::blocks:
                if (l.n < 1 || sa.size * l.n != sb.size) mismatch("blocks");
                for (Index c = 0; c < sa.size; ++c)
                    for (Index j = 0; j < l.n; ++j) unite(sa.base + c, sb.base + c * l.n + j);
                break;
            case ChannelLink::Kind::tie:
                if (l.n < 1 || sa.size % l.n != 0) mismatch("tie");
                for (Index c = 0; c < sa.size; c += l.n)
                    for (Index j = 1; j < l.n; ++j) unite(sa.base + c, sa.base + c + j);
                break;
            case ChannelLink::Kind::even:
                if (l.n < 1 || sa.size % l.n != 0) mismatch("even");
                if (l.n > 1) even_.push_back({a, l.n, where});
                break;
            case ChannelLink::Kind::fixed:
                pin(a, where + ": " + l.reason);
                break;
        }
    }

    // Turns the even-removal requests on the group's spaces into one block per unit,
    // or marks the group not prunable when they cannot be met together.
    void apply_even(Group& grp, const std::vector<int>& comp) {
        if (even_.empty()) return;
        std::unordered_set<int> in_group(comp.begin(), comp.end());
        for (const auto& req : even_) {
            if (!in_group.count(req.space)) continue;
            const Space& sc = spaces_[req.space];
            const GroupMember* m = nullptr;
            for (const auto& mm : grp.members)
                if (mm.kind == sc.kind && mm.graph == sc.graph && mm.id == sc.id && mm.axis == sc.axis) m = &mm;
            std::vector<Index> blk(static_cast<std::size_t>(grp.units), -1);
            const Index width = sc.size / req.blocks;
            bool ok = true;
            for (Index e = 0; e < sc.size && ok; ++e) {
                Index& b = blk[static_cast<std::size_t>(m->unit[static_cast<std::size_t>(e)])];
                if (b >= 0 && b != e / width) ok = false;
                b = e / width;
            }
            ok = ok && std::none_of(blk.begin(), blk.end(), [](Index b) { return b < 0; });
            if (ok && grp.blocks > 1) {  // a second request must split the units the same way
                std::unordered_map<Index, Index> map;
                for (Index u = 0; u < grp.units && ok; ++u) {
                    auto [it, fresh] = map.emplace(grp.block[u], blk[u]);
                    ok = fresh || it->second == blk[u];
                }
                ok = ok && static_cast<Index>(map.size()) == req.blocks && req.blocks == grp.blocks;
            }
            if (ok) {
                std::vector<Index> count(static_cast<std::size_t>(req.blocks));
                for (Index b : blk) ++count[static_cast<std::size_t>(b)];
                ok = std::all_of(count.begin(), count.end(), [&](Index c) { return c == count[0]; });
            }
            if (!ok) {
                if (grp.prunable)
                    grp.prunable = false,
                    grp.reason = req.where + ": its " + std::to_string(req.blocks) +
                                 " conv groups cannot lose channels evenly with the rest of the group";
                continue;
            }
            grp.blocks = req.blocks;
            grp.block = std::move(blk);
        }
    }

    struct Even {
        int space;
        Index blocks;
        std::string where;
    };
    std::vector<GraphEntry<const Graph<T>>> graphs_;
    std::vector<std::vector<int>> first_sub_;
    std::vector<Space> spaces_;
    std::unordered_map<std::uint64_t, int> index_;
    std::vector<int> parent_;
    std::vector<Even> even_;
    std::unordered_set<std::string> ignore_;
    std::unordered_set<std::uint64_t> mentioned_params_;
    std::vector<std::pair<std::uint64_t, std::string>> param_marks_;
};

}  // namespace detail::trace

/// The dependency groups of `g`: every set of channels that must be removed
/// together, in trace order (the order of the nodes that first touch them).
/// Groups touching a graph input or output, an ignored node or parameter, or an
/// axis some op keeps whole are returned too, with `prunable == false` and the reason.
/// Throws PruneError for an unknown name in `o.ignore` and GraphError for a channel
/// rule that names axes which do not exist or do not fit together.
template <Scalar T>
std::vector<Group> trace_groups(const Graph<T>& g, const TraceOptions& o = {}) {
    detail::trace::Tracer<T> t(g, o);
    return t.groups(g.version());
}

}  // namespace spade
