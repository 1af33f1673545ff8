// Channel surgery: removes root units of groups from a graph in place. Every
// member parameter keeps its buffer: the kept slices move to the front and the
// view shrinks, so a buffer the caller owns stays valid and holds the pruned
// tensor at its start. States registered on a parameter (gradient, optimizer
// moments) are rewritten the same way, ops update the attributes that count
// channels, and activation shapes follow.
//
// Strong exception guarantee: everything is checked and every new shape, op
// and index list is built before the first element moves; the moving itself
// cannot fail. A throw leaves the graph exactly as it was.
#pragma once

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "spade/core/error.hpp"
#include "spade/core/threading.hpp"
#include "spade/deps/trace.hpp"
#include "spade/prune/history.hpp"

namespace spade {

/// Root units to remove from one group.
struct GroupCut {
    const Group* group = nullptr;
    std::vector<Index> units;  ///< any order; must be distinct
};

namespace detail::surgery {

// What to keep along each axis of one parameter: an empty list keeps the whole axis.
// A grouped axis (axis 1 split by row blocks of axis 0) keeps `grouped[b]` in block b.
// `prepare` builds everything `compact` needs, so that compacting allocates nothing.
struct ParamPlan {
    int graph = 0;
    ParamId id = 0;
    std::vector<std::vector<Index>> keep;
    std::vector<std::vector<Index>> grouped;
    Shape shape;  // after surgery
    // filled by prepare():
    std::vector<Index> dims, stride, idx;
    std::vector<std::vector<Index>> lists;  // kept indices of axes [0, q), all of them when untouched
    int q = 0;                              // axes [q, rank) are kept whole and copied as one block
    Index inner = 1, rows_per_block = 1;

    void prepare(const Shape& old) {
        dims = old.dims();
        const int rank = static_cast<int>(dims.size());
        auto touched = [&](int a) { return !keep[a].empty() || (a == 1 && !grouped.empty()); };
        q = rank;
        while (q > 0 && !touched(q - 1)) --q;
        inner = 1;
        for (int a = q; a < rank; ++a) inner *= dims[a];
        stride.assign(static_cast<std::size_t>(rank), 1);
        for (int a = rank - 2; a >= 0; --a) stride[a] = stride[a + 1] * dims[a + 1];
        lists.assign(static_cast<std::size_t>(q), {});
        for (int a = 0; a < q; ++a) {
            if (!keep[a].empty()) {
                lists[a] = keep[a];
            } else if (!(a == 1 && !grouped.empty())) {
                lists[a].resize(static_cast<std::size_t>(dims[a]));
                for (Index i = 0; i < dims[a]; ++i) lists[a][i] = i;
            }
        }
        rows_per_block = grouped.empty() ? 1 : dims[0] / static_cast<Index>(grouped.size());
        idx.assign(static_cast<std::size_t>(q), 0);
    }
    const std::vector<Index>& list(int a) const {
        if (a == 1 && !grouped.empty()) return grouped[lists[0][idx[0]] / rows_per_block];
        return lists[a];
    }
};

// Copies blocks of N elements src[k step ...] for k in `which` to consecutive places
// from dst (dst never after the source, blocks may overlap: each is read whole first).
template <int N, class T>
T* copy_blocks(const T* src, Index step, const std::vector<Index>& which, T* dst) {
    for (Index k : which) {
        T block[N];
        for (int t = 0; t < N; ++t) block[t] = src[k * step + t];
        for (int t = 0; t < N; ++t) dst[t] = block[t];
        dst += N;
    }
    return dst;
}

// Moves the kept part of the tensor to the front of `data`, row-major. Destinations
// never run ahead of sources, so a forward copy is safe in place.
template <class T>
void compact(T* data, ParamPlan& plan) {
    const int q = plan.q;
    if (q == 0) return;
    std::fill(plan.idx.begin(), plan.idx.end(), 0);
    T* dst = data;
    while (true) {  // odometer over axes [0, q - 1); axis q - 1 is the inner loop
        Index base = 0;
        for (int a = 0; a + 1 < q; ++a) base += plan.list(a)[plan.idx[a]] * plan.stride[a];
        const auto& last = plan.list(q - 1);
        const T* src = data + base;
        const Index step = plan.stride[q - 1], inner = plan.inner;
        switch (inner) {  // small blocks (3x3, 5x5 kernels) copied inline: a call each would dominate
            case 1:
                for (Index k : last) *dst++ = src[k * step];
                break;
            case 9: dst = copy_blocks<9>(src, step, last, dst); break;
            case 25: dst = copy_blocks<25>(src, step, last, dst); break;
            default:
                for (Index k : last) {
                    std::memmove(dst, src + k * step, sizeof(T) * static_cast<std::size_t>(inner));
                    dst += inner;
                }
        }
        int a = q - 2;
        while (a >= 0) {
            if (++plan.idx[a] < static_cast<Index>(plan.list(a).size())) break;
            plan.idx[a] = 0;
            --a;
        }
        if (a < 0) break;
    }
}

// Checks that a group's members fit the graph (a group traced on another model
// of the same version would otherwise index outside its buffers).
template <class List>
void check_members(const List& graphs, const Group& grp, const std::string& who) {
    if (grp.blocks > 1 && static_cast<Index>(grp.block.size()) != grp.units)
        fail<PruneError>(who, ": has ", grp.block.size(), " block entries for ", grp.units, " units");
    for (const auto& m : grp.members) {
        if (m.graph < 0 || m.graph >= static_cast<int>(graphs.size()))
            fail<PruneError>(who, ": member '", m.name, "' lives in subgraph ", m.graph, " of ", graphs.size());
        const auto& g = *graphs[static_cast<std::size_t>(m.graph)].graph;
        Index expect = -1;
        if (m.is_param()) {
            if (m.id >= 0 && m.id < static_cast<int>(g.num_parameters())) {
                const Shape& s = g.parameter(m.id).shape();
                if (m.axis >= 0 && m.axis < s.rank() && (m.groups == 1 || m.axis == 1)) expect = s[m.axis] * m.groups;
            }
        } else if (m.id >= 0 && m.id < static_cast<int>(g.values().size()) && g.value(m.id).shape.rank() >= 2) {
            expect = g.value(m.id).shape[1];
        }
        if (expect != m.channels())
            fail<PruneError>(who, ": member '", m.name, "' (", m.channels(),
                             " channels) does not match the graph; was the group traced on another graph?");
        for (Index u : m.unit)
            if (u < 0 || u >= grp.units)
                fail<PruneError>(who, ": member '", m.name, "' maps a channel to unit ", u, " of ", grp.units);
    }
}

}  // namespace detail::surgery

/// Removes the given units of each group from `g`, all at once. Each group must
/// come from trace_groups on the graph as it is now (same version) and be
/// prunable; every member must keep at least one channel; a group with conv-group
/// blocks must lose equally many units from each block. Throws PruneError naming
/// the group and the numbers otherwise, leaving `g` unchanged. If `history` is
/// given, the cuts are appended to it as one step.
template <Scalar T>
void remove_channels(Graph<T>& g, std::span<const GroupCut> cuts, PruningHistory* history = nullptr) {
    using detail::surgery::ParamPlan;
    const auto graphs = graph_list(std::as_const(g));
    std::map<std::pair<int, ParamId>, ParamPlan> params;
    std::map<std::pair<int, ValueId>, std::vector<Index>> values;  // removed channels per activation
    std::vector<std::size_t> seen_groups;
    for (const auto& cut : cuts) {
        if (!cut.group) fail<PruneError>("remove_channels: a cut has no group");
        const Group& grp = *cut.group;
        const std::string who = "group " + std::to_string(grp.id) + " (" + grp.key() + ")";
        if (grp.graph_version != g.version())
            fail<PruneError>(who, " was traced on graph version ", grp.graph_version, " but the graph is at version ",
                             g.version(), "; trace again after changing the graph");
        if (!grp.prunable) fail<PruneError>(who, " is not prunable: ", grp.reason);
        if (std::find(seen_groups.begin(), seen_groups.end(), grp.id) != seen_groups.end())
            fail<PruneError>(who, " appears in two cuts");
        seen_groups.push_back(grp.id);
        std::vector<char> gone(static_cast<std::size_t>(grp.units), 0);
        for (Index u : cut.units) {
            if (u < 0 || u >= grp.units) fail<PruneError>(who, ": unit ", u, " is out of range [0, ", grp.units, ")");
            if (gone[u]) fail<PruneError>(who, ": unit ", u, " is listed twice");
            gone[u] = 1;
        }
        if (cut.units.empty()) continue;
        detail::surgery::check_members(graphs, grp, who);
        if (grp.blocks > 1) {
            std::vector<Index> per_block(static_cast<std::size_t>(grp.blocks));
            for (Index u : cut.units) ++per_block[grp.block[u]];
            for (Index b = 1; b < grp.blocks; ++b)
                if (per_block[b] != per_block[0])
                    fail<PruneError>(who, ": its ", grp.blocks, " conv-group blocks must lose equally many units; block 0 loses ",
                                     per_block[0], ", block ", b, " loses ", per_block[b]);
        }
        for (const auto& m : grp.members) {
            const Graph<T>& mg = *graphs.at(static_cast<std::size_t>(m.graph)).graph;
            std::vector<Index> removed;
            for (Index e = 0; e < m.channels(); ++e)
                if (gone[m.unit[e]]) removed.push_back(e);
            if (removed.empty()) continue;
            const Index left = m.channels() - static_cast<Index>(removed.size());
            if (left < m.groups)
                fail<PruneError>(who, ": removing ", cut.units.size(), " of ", grp.units, " units would leave '", m.name,
                                 "' with ", left, " channels");
            if (!m.is_param()) {
                values[{m.graph, m.id}] = std::move(removed);
                continue;
            }
            auto [it, fresh] = params.try_emplace({m.graph, m.id});
            ParamPlan& plan = it->second;
            const Shape& shape = mg.parameter(m.id).shape();
            if (fresh) plan.graph = m.graph, plan.id = m.id, plan.keep.resize(shape.rank()), plan.shape = shape;
            if (m.groups == 1) {
                for (Index e = 0, r = 0; e < m.channels(); ++e)
                    if (r < static_cast<Index>(removed.size()) && removed[r] == e)
                        ++r;
                    else
                        plan.keep[m.axis].push_back(e);
                plan.shape[m.axis] = left;
                continue;
            }
            // grouped axis: block b of the rows uses channels [b d, (b+1) d) of the member
            const Index d = shape[m.axis];
            plan.grouped.assign(static_cast<std::size_t>(m.groups), {});
            for (Index b = 0; b < m.groups; ++b) {
                for (Index j = 0; j < d; ++j)
                    if (!gone[m.unit[b * d + j]]) plan.grouped[b].push_back(j);
                if (plan.grouped[b].size() != plan.grouped[0].size())
                    fail<PruneError>(who, ": conv group ", b, " of '", m.name, "' would keep ", plan.grouped[b].size(),
                                     " channels but group 0 keeps ", plan.grouped[0].size());
            }
            plan.shape[m.axis] = static_cast<Index>(plan.grouped[0].size());
        }
    }
    if (params.empty() && values.empty()) return;
    std::vector<CutRecord> records;
    for (const auto& cut : cuts) {
        if (cut.units.empty()) continue;
        CutRecord r{cut.group->key(), cut.group->units, cut.units};
        std::sort(r.removed.begin(), r.removed.end());
        records.push_back(std::move(r));
    }
    if (history) history->steps.reserve(history->steps.size() + 1);

    // every node that sees a change: new op (if its attributes count channels), checked shapes
    struct NodePlan {
        int graph;
        NodeId id;
        std::unique_ptr<Op<T>> op;
    };
    std::vector<NodePlan> ops;
    std::map<std::pair<int, ValueId>, Shape> new_values;
    for (const auto& [key, removed] : values) {
        Shape s = graphs[key.first].graph->value(key.second).shape;
        s[1] -= static_cast<Index>(removed.size());
        new_values.emplace(key, std::move(s));
    }
    auto value_shape = [&](int gi, ValueId v) -> const Shape& {
        auto it = new_values.find({gi, v});
        return it != new_values.end() ? it->second : graphs[gi].graph->value(v).shape;
    };
    static const std::vector<Index> none;
    for (std::size_t gi = 0; gi < graphs.size(); ++gi) {
        const Graph<T>& sg = *graphs[gi].graph;
        for (std::size_t ni = 0; ni < sg.nodes().size(); ++ni) {
            const auto& n = sg.nodes()[ni];
            bool changed = false;
            std::vector<Shape> in, out, ps;
            std::vector<std::vector<Index>> rin, rout;
            for (ValueId v : n.inputs) {
                auto it = values.find({static_cast<int>(gi), v});
                rin.push_back(it == values.end() ? none : it->second);
                changed |= it != values.end();
                in.push_back(value_shape(static_cast<int>(gi), v));
            }
            for (ValueId v : n.outputs) {
                auto it = values.find({static_cast<int>(gi), v});
                rout.push_back(it == values.end() ? none : it->second);
                changed |= it != values.end();
                out.push_back(value_shape(static_cast<int>(gi), v));
            }
            for (ParamId p : n.params) {
                auto it = params.find({static_cast<int>(gi), p});
                changed |= it != params.end();
                ps.push_back(it == params.end() ? sg.parameter(p).shape() : it->second.shape);
            }
            if (!changed) continue;
            const std::string node = graphs[gi].prefix + n.name;
            auto op = n.op->resized(ChannelChange{node, rin, rout, in, out, ps});
            if (!n.op->subgraphs().empty()) {  // its subgraphs' nodes are checked one by one instead
                if (op) ops.push_back({static_cast<int>(gi), static_cast<NodeId>(ni), std::move(op)});
                continue;
            }
            std::vector<Shape> got;
            try {
                got = (op ? *op : *n.op).infer_shapes(ShapeContext{node, in, ps});
            } catch (const ShapeError& e) {
                fail<PruneError>("channel surgery would break node '", node, "': ", e.what());
            }
            if (got != out)
                fail<PruneError>("channel surgery would break node '", node, "' (", n.op->type(),
                                 "): its channel rule and its shapes disagree after surgery");
            if (op) ops.push_back({static_cast<int>(gi), static_cast<NodeId>(ni), std::move(op)});
        }
    }

    auto mg = mutable_graph_list(g);
    bool same_list = mg.size() == graphs.size();
    for (std::size_t i = 0; same_list && i < mg.size(); ++i) same_list = mg[i].graph == graphs[i].graph;
    if (!same_list)
        fail<PruneError>("remove_channels: an op's mutable_subgraphs() does not return the graphs its subgraphs() does");
    std::vector<ParamPlan*> plans;
    for (auto& [key, plan] : params) {
        plan.prepare(graphs[key.first].graph->parameter(key.second).shape());
        plans.push_back(&plan);
    }

    std::sort(plans.begin(), plans.end(), [](const ParamPlan* a, const ParamPlan* b) {
        return Shape(a->dims).numel() > Shape(b->dims).numel();
    });

    // commit: nothing below allocates or throws
    parallel_for_dynamic(static_cast<long>(plans.size()), [&](long i) {
        ParamPlan& plan = *plans[i];
        Parameter<T>& p = mg[plan.graph].graph->parameter(plan.id);
        p.for_each_buffer([&](T* data) { detail::surgery::compact(data, plan); });
        p.shrink_to(std::move(plan.shape));
    });
    for (auto& [key, shape] : new_values) mg[key.first].graph->set_value_shape(key.second, std::move(shape));
    for (auto& np : ops) std::swap(mg[np.graph].graph->mutable_node(np.id).op, np.op);
    for (auto& e : mg) e.graph->touch();
    if (history) history->steps.push_back(std::move(records));  // capacity reserved above
}

/// Removes `units` of one group; see the overload for several groups.
template <Scalar T>
void remove_channels(Graph<T>& g, const Group& group, std::vector<Index> units, PruningHistory* history = nullptr) {
    GroupCut cut{&group, std::move(units)};
    remove_channels(g, std::span<const GroupCut>(&cut, 1), history);
}

/// Redoes the surgeries of `history` on `g`, which must be the graph the history
/// started from (a freshly built or loaded unpruned model): step by step, it traces
/// the groups, finds each recorded group by its key and removes the same units.
/// Throws PruneError naming the step and group if the graph does not match; each
/// step is all or nothing, but the steps before a failing one stay applied.
template <Scalar T>
void replay(Graph<T>& g, const PruningHistory& history) {
    for (std::size_t s = 0; s < history.steps.size(); ++s) {
        const auto groups = trace_groups(g);
        std::vector<GroupCut> cuts;
        for (const auto& r : history.steps[s]) {
            auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& grp) { return grp.key() == r.group; });
            if (it == groups.end()) fail<PruneError>("replay, step ", s, ": the graph has no group '", r.group, "'");
            if (it->units != r.units)
                fail<PruneError>("replay, step ", s, ": group '", r.group, "' has ", it->units, " units, the history says ",
                                 r.units);
            cuts.push_back({&*it, r.removed});
        }
        remove_channels(g, std::span<const GroupCut>(cuts));
    }
}

// One compiled copy for float and double where a project asks for it (see
// SPADE_TEMPLATE_INSTANCE in graph/ops/common.hpp).
#if defined(SPADE_INSTANTIATE_TEMPLATES) || defined(SPADE_EXTERN_TEMPLATES)
#if defined(SPADE_INSTANTIATE_TEMPLATES)
#define SPADE_FN_INSTANCE template
#else
#define SPADE_FN_INSTANCE extern template
#endif
SPADE_FN_INSTANCE std::vector<Group> trace_groups<float>(const Graph<float>&, const TraceOptions&);
SPADE_FN_INSTANCE std::vector<Group> trace_groups<double>(const Graph<double>&, const TraceOptions&);
SPADE_FN_INSTANCE void remove_channels<float>(Graph<float>&, std::span<const GroupCut>, PruningHistory*);
SPADE_FN_INSTANCE void remove_channels<double>(Graph<double>&, std::span<const GroupCut>, PruningHistory*);
SPADE_FN_INSTANCE void replay<float>(Graph<float>&, const PruningHistory&);
SPADE_FN_INSTANCE void replay<double>(Graph<double>&, const PruningHistory&);
#undef SPADE_FN_INSTANCE
#endif

}  // namespace spade
