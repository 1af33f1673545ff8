// prune_groups(): trace the groups, score them with an importance policy,
// choose the weakest units and remove them by channel surgery, in one step or
// several with a linear schedule.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "spade/graph/shape_inference.hpp"
#include "spade/importance/importance.hpp"
#include "spade/metrics/count.hpp"
#include "spade/prune/surgery.hpp"

namespace spade {

/// Settings of prune_groups. Counts are in units of a group (Group::units: one
/// channel of its root layer, or a block of channels that leave together such as
/// a GroupNorm group). A ratio r keeps floor(n (1 - r)) of a group's n units, then
/// at least n (1 - max_ratio) of them and at least one, then rounds the kept count
/// up to a multiple of `round_to` (and of the conv-group blocks, if any), never above n.
struct PruneOptions {
    double ratio = 0.5;  ///< fraction of units to remove, in [0, 1)
    Index round_to = 1;  ///< kept units are a multiple of this (e.g. 8 or 16 for SIMD)
    /// false: every group loses its own ratio (local). true: one threshold over the
    /// normalized scores of all groups decides (global), so groups lose unequally.
    bool global = false;
    double max_ratio = 1.0;  ///< no group loses more than this fraction of its units
    int steps = 1;           ///< iterative pruning: step k of s reaches ratio r k / s
    std::vector<std::string> ignore{};  ///< node or parameter names left untouched (see TraceOptions)
    /// Ratio for the group of a layer's own channels, named by node, parameter or
    /// name scope ("layer4" covers "layer4.*"; input-side weights do not count);
    /// the longest matching name wins. Local only.
    std::map<std::string, double> layer_ratios{};
    /// Ratio for a group by its id (trace order); overrides layer_ratios. Local only.
    std::map<std::size_t, double> group_ratios{};
    /// Called after each step's surgery with the step number (1-based), e.g. to fine-tune.
    std::function<void(int)> after_step{};
};

/// Units of one group before and after pruning.
struct GroupReport {
    std::size_t group = 0;
    std::string key;  ///< Group::key(), the root layer
    Index before = 0, after = 0;
};

/// What prune_groups did.
struct PruneReport {
    std::vector<GroupReport> groups;  ///< every prunable group, in trace order
    Index macs_before = 0, macs_after = 0;
    Index params_before = 0, params_after = 0;
    PruningHistory history;
    double trace_seconds = 0, score_seconds = 0, surgery_seconds = 0;

    /// The report as an aligned text table.
    std::string table() const {
        std::size_t w = 4;
        for (const auto& g : groups) w = std::max(w, g.key.size());
        std::ostringstream os;
        char line[512];
        std::snprintf(line, sizeof line, "%5s  %-*s  %8s  %8s\n", "group", static_cast<int>(w), "root", "before", "after");
        os << line;
        for (const auto& g : groups) {
            std::snprintf(line, sizeof line, "%5zu  %-*s  %8lld  %8lld\n", g.group, static_cast<int>(w), g.key.c_str(),
                          static_cast<long long>(g.before), static_cast<long long>(g.after));
            os << line;
        }
        auto human = [](Index v) {  // 4.13 G, 25.6 M, 7.81 k
            const double x = static_cast<double>(v);
            char buf[32];
            if (x >= 1e9) std::snprintf(buf, sizeof buf, "%.3f G", x / 1e9);
            else if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.3f M", x / 1e6);
            else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.3f k", x / 1e3);
            else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
            return std::string(buf);
        };
        auto row = [&](const char* what, Index a, Index b) {
            std::snprintf(line, sizeof line, "%-7s %11s -> %11s  (%.1f%%)\n", what, human(a).c_str(), human(b).c_str(),
                          a > 0 ? 100.0 * static_cast<double>(b) / static_cast<double>(a) : 0.0);
            os << line;
        };
        row("MACs", macs_before, macs_after);
        row("params", params_before, params_after);
        return os.str();
    }
    friend std::ostream& operator<<(std::ostream& os, const PruneReport& r) { return os << r.table(); }
};

namespace detail::prune {

inline double clock_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Units of n0 a group keeps at ratio r, before the cap by its current size.
inline Index kept_units(Index n0, double r, const PruneOptions& o, Index blocks) {
    Index kept = static_cast<Index>(std::floor(static_cast<double>(n0) * (1.0 - r) + 1e-9));
    const Index floor_kept = static_cast<Index>(std::ceil(static_cast<double>(n0) * (1.0 - o.max_ratio) - 1e-9));
    kept = std::max({kept, floor_kept, Index(1)});
    if (o.round_to >= n0 || blocks >= n0) return n0;
    const Index step = std::lcm(o.round_to, blocks);
    if (step >= n0) return n0;
    kept = (kept + step - 1) / step * step;
    return std::min(kept, n0);
}

// The `count` lowest-scoring units (ties: lower index first), evenly from each block
// if blocked, skipping a unit whose removal would leave some member without channels
// (a concat part, a dense layer's few channels): then fewer units go.
inline std::vector<Index> weakest(const std::vector<double>& s, Index count, const Group& grp) {
    std::vector<Index> order(s.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return s[a] < s[b]; });
    // Members holding every unit equally often (c channels each) can lose all but
    // ceil(floor / c) units; the others (concat parts) are checked unit by unit.
    Index most_removable = grp.units;
    struct Partial {
        std::vector<Index> count;  // channels per unit
        Index left, floor;
    };
    std::vector<Partial> partial;
    std::vector<Index> per_unit(static_cast<std::size_t>(grp.units));
    for (const auto& m : grp.members) {
        std::fill(per_unit.begin(), per_unit.end(), 0);
        for (Index u : m.unit) ++per_unit[static_cast<std::size_t>(u)];
        const Index c = per_unit[0];
        if (c > 0 && std::all_of(per_unit.begin(), per_unit.end(), [c](Index x) { return x == c; }))
            most_removable = std::min(most_removable, grp.units - (m.groups + c - 1) / c);
        else
            partial.push_back({per_unit, m.channels(), m.groups});
    }
    auto removable = [&](Index u, Index removed) {
        if (removed + 1 > most_removable) return false;
        for (const auto& p : partial)
            if (p.left - p.count[u] < p.floor) return false;
        return true;
    };
    const Index blocks = std::max<Index>(grp.blocks, 1), per_block = count / blocks;
    std::vector<Index> taken(static_cast<std::size_t>(blocks), 0), out;
    for (Index u : order) {
        const Index b = grp.blocks > 1 ? grp.block[u] : 0;
        if (taken[b] >= (grp.blocks > 1 ? per_block : count)) continue;
        if (!removable(u, static_cast<Index>(out.size()))) continue;
        for (auto& p : partial) p.left -= p.count[u];
        ++taken[b], out.push_back(u);
    }
    if (grp.blocks > 1) {  // blocks must stay even: trim to the smallest block's count
        const Index even = *std::min_element(taken.begin(), taken.end());
        std::vector<Index> kept_count(static_cast<std::size_t>(blocks), 0), trimmed;
        for (Index u : out)
            if (kept_count[grp.block[u]] < even) ++kept_count[grp.block[u]], trimmed.push_back(u);
        out = std::move(trimmed);
    }
    std::sort(out.begin(), out.end());
    return out;
}

inline void check_ratio(double r, const std::string& what) {
    if (!(r >= 0.0 && r < 1.0)) fail<PruneError>(what, " must be in [0, 1), got ", r);
}

// The ratio of each group (local pruning): group_ratios, else the longest matching layer name, else `ratio`.
inline std::vector<double> group_ratios(const std::vector<Group>& groups, const PruneOptions& o) {
    std::vector<double> r(groups.size(), o.ratio);
    std::vector<std::size_t> best(groups.size(), 0);
    std::map<std::string, bool> matched;
    for (const auto& [name, ratio] : o.layer_ratios) {
        check_ratio(ratio, "layer_ratios['" + name + "']");
        matched[name] = false;
        for (const auto& grp : groups)
            for (const auto& m : grp.members) {
                if (!m.is_param() || m.label == "in") continue;  // a layer's ratio is for its own channels
                const bool hit = m.name == name || (m.name.size() > name.size() && m.name.compare(0, name.size(), name) == 0 &&
                                                     m.name[name.size()] == '.');
                if (!hit) continue;
                matched[name] = true;
                if (name.size() > best[grp.id]) best[grp.id] = name.size(), r[grp.id] = ratio;
            }
    }
    for (const auto& [name, hit] : matched)
        if (!hit) fail<PruneError>("layer_ratios: no parameter is named '", name, "' or lies under it");
    for (const auto& [id, ratio] : o.group_ratios) {
        check_ratio(ratio, "group_ratios[" + std::to_string(id) + "]");
        if (id >= groups.size()) fail<PruneError>("group_ratios: no group ", id, " (the graph has ", groups.size(), ")");
        r[id] = ratio;
    }
    return r;
}

}  // namespace detail::prune

/// Prunes `g` in place: traces its groups, scores every prunable group with
/// `importance` (an Importance, or a Criterion used with mean reduction and mean
/// normalization) and removes the weakest units of each, as `o` says. Returns
/// the per-group channel counts, MACs and params before and after, and the
/// history of the surgeries. Throws PruneError for invalid options; a failed
/// step leaves the graph as the previous step left it.
template <Scalar T, class I>
PruneReport prune_groups(Graph<T>& g, I&& importance, const PruneOptions& o = {}) {
    using Policy = std::remove_cvref_t<I>;
    if constexpr (!Importance<Policy, T>) {
        static_assert(Criterion<Policy, T>, "prune_groups: the policy must satisfy spade::Importance or spade::Criterion");
        GroupImportance<Policy> wrapped{importance};
        return prune_groups(g, wrapped, o);
    } else {
        using namespace detail::prune;
        check_ratio(o.ratio, "ratio");
        if (!(o.max_ratio >= 0.0 && o.max_ratio <= 1.0)) fail<PruneError>("max_ratio must be in [0, 1], got ", o.max_ratio);
        if (o.round_to < 1) fail<PruneError>("round_to must be >= 1, got ", o.round_to);
        if (o.steps < 1) fail<PruneError>("steps must be >= 1, got ", o.steps);
        if (o.global && (!o.layer_ratios.empty() || !o.group_ratios.empty()))
            fail<PruneError>("layer_ratios and group_ratios apply to local pruning, not global");

        PruneReport rep;
        const auto inputs = example_input_shapes(g);
        rep.macs_before = total_macs(g, inputs);
        rep.params_before = count_params(g);
        // units and ratio of each group at step 1, by key: later steps find their groups
        // by key (a group may split, e.g. when a depthwise conv is down to one channel)
        std::map<std::string, std::pair<Index, double>> first;
        std::vector<Index> n0;
        std::vector<double> ratios;
        std::vector<Group> groups;
        std::vector<Index> last_removed;
        for (int step = 1; step <= o.steps; ++step) {
            double t0 = clock_seconds();
            groups = trace_groups(g, TraceOptions{o.ignore});
            if (step == 1) {
                const auto r = group_ratios(groups, o);
                for (const auto& grp : groups)
                    if (grp.prunable) first[grp.key()] = {grp.units, r[grp.id]};
            }
            n0.assign(groups.size(), 0);
            ratios.assign(groups.size(), o.ratio);
            for (const auto& grp : groups) {
                if (!grp.prunable) continue;
                auto it = first.find(grp.key());
                n0[grp.id] = it == first.end() ? grp.units : it->second.first;
                ratios[grp.id] = it == first.end() ? o.ratio : it->second.second;
            }
            double t1 = clock_seconds();
            rep.trace_seconds += t1 - t0;

            std::vector<std::size_t> live;  // groups that can lose units
            for (const auto& grp : groups)
                if (grp.prunable && grp.units > 1 && n0[grp.id] > 1) live.push_back(grp.id);
            detail::prepare_policy(importance, std::as_const(g), std::span<const Group>(groups));
            std::vector<std::vector<double>> scores(groups.size());
            for (std::size_t id : live) {
                scores[id] = importance.scores(std::as_const(g), groups[id]);
                if (static_cast<Index>(scores[id].size()) != groups[id].units)
                    fail<PruneError>("importance gave ", scores[id].size(), " scores for group ", id, " (",
                                     groups[id].key(), "), which has ", groups[id].units, " units");
            }
            const double frac = static_cast<double>(step) / static_cast<double>(o.steps);
            std::vector<Index> remove(groups.size(), 0);
            if (!o.global) {
                for (std::size_t id : live) {
                    const Index kept = kept_units(n0[id], ratios[id] * frac, o, groups[id].blocks);
                    remove[id] = std::max<Index>(0, groups[id].units - kept);
                }
            } else {
                // one threshold: the lowest scores overall go first, within each group's floor
                Index total0 = 0, total = 0;
                std::vector<std::pair<double, std::pair<std::size_t, Index>>> all;
                for (std::size_t id : live) {
                    total0 += n0[id], total += groups[id].units;
                    for (Index u = 0; u < groups[id].units; ++u) all.push_back({scores[id][u], {id, u}});
                }
                const Index target = static_cast<Index>(std::floor(static_cast<double>(total0) * (1.0 - o.ratio * frac) + 1e-9));
                Index to_remove = total - target;
                std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
                std::vector<Index> floor_kept(groups.size());
                for (std::size_t id : live) floor_kept[id] = kept_units(n0[id], o.max_ratio, o, 1);
                for (const auto& [s, who] : all) {
                    if (to_remove <= 0) break;
                    const std::size_t id = who.first;
                    if (groups[id].units - remove[id] > floor_kept[id]) ++remove[id], --to_remove;
                }
                for (std::size_t id : live) {  // round the kept count up to the step
                    const Index step_units = std::lcm(o.round_to, groups[id].blocks);
                    Index kept = groups[id].units - remove[id];
                    kept = std::min(groups[id].units, (kept + step_units - 1) / step_units * step_units);
                    remove[id] = groups[id].units - kept;
                }
            }
            std::vector<GroupCut> cuts;
            for (std::size_t id : live) {
                if (remove[id] <= 0) continue;
                auto units = weakest(scores[id], remove[id], groups[id]);
                remove[id] = static_cast<Index>(units.size());
                if (!units.empty()) cuts.push_back({&groups[id], std::move(units)});
            }
            double t2 = clock_seconds();
            rep.score_seconds += t2 - t1;
            remove_channels(g, std::span<const GroupCut>(cuts), &rep.history);
            last_removed = remove;
            rep.surgery_seconds += clock_seconds() - t2;
            if (o.after_step) o.after_step(step);
        }
        for (const auto& grp : groups)  // the last step's groups, less what it removed
            if (grp.prunable) rep.groups.push_back({grp.id, grp.key(), n0[grp.id], grp.units - last_removed[grp.id]});
        rep.macs_after = total_macs(g, inputs);
        rep.params_after = count_params(g);
        return rep;
    }
}

}  // namespace spade
