// Fixtures of the pruning tests: small graphs with one kind of channel coupling
// each, and helpers to find groups, kill channels and cut at random.
#pragma once

#include <map>
#include <random>
#include <string>
#include <vector>

#include "fixtures.hpp"

namespace spade::test {

/// "name[label]" of each parameter member of a group, in member order.
inline std::vector<std::string> param_members(const Group& grp) {
    std::vector<std::string> out;
    for (const auto& m : grp.members)
        if (m.is_param()) out.push_back(m.name + (m.label.empty() ? "" : "[" + m.label + "]"));
    return out;
}

/// The group that has parameter `name`'s axis `axis` as a member.
inline const Group& group_of(const std::vector<Group>& groups, const std::string& name, int axis) {
    for (const auto& grp : groups)
        for (const auto& m : grp.members)
            if (m.is_param() && m.name == name && m.axis == axis) return grp;
    FAIL("no group holds " << name << " axis " << axis);
    return groups.front();
}

/// The member of `grp` for parameter `name` (and `axis`).
inline const GroupMember& member(const Group& grp, const std::string& name, int axis = -1) {
    for (const auto& m : grp.members)
        if (m.name == name && (axis < 0 || m.axis == axis)) return m;
    FAIL("group " << grp.id << " has no member " << name);
    return grp.members.front();
}

/// Zeroes every parameter slice of `units` in `grp`: the weights that make those
/// channels, the norms that follow them and the next layers' columns that read them,
/// so the channels are dead and removing them must not change the output.
template <class T>
void kill_units(Graph<T>& g, const Group& grp, const std::vector<Index>& units) {
    std::vector<char> dead(static_cast<std::size_t>(grp.units), 0);
    for (Index u : units) dead[u] = 1;
    const auto graphs = mutable_graph_list(g);
    for (const auto& m : grp.members) {
        if (!m.is_param()) continue;
        auto& p = graphs[m.graph].graph->parameter(m.id);
        const Shape& s = p.shape();
        const Index d0 = s[0], d1 = s.rank() > 1 ? s[1] : 1, rest = p.numel() / (d0 * d1);
        const Index rows_per_block = m.groups > 1 ? d0 / m.groups : d0;
        for (Index i = 0; i < d0; ++i)
            for (Index j = 0; j < d1; ++j) {
                const Index e = m.axis == 0 ? i : (m.groups > 1 ? (i / rows_per_block) * d1 + j : j);
                if (!dead[m.unit[e]]) continue;
                for (Index k = 0; k < rest; ++k) p.data()[(i * d1 + j) * rest + k] = T(0);
            }
    }
}

/// Random units to cut from a prunable group: about `fraction` of them, evenly per
/// block, leaving every member at least one channel (empty if the group is too small).
inline std::vector<Index> random_units(const Group& grp, double fraction, std::mt19937_64& rng) {
    if (!grp.prunable || grp.units < 2) return {};
    const Index per_block_units = grp.units / grp.blocks;
    Index per_block = std::max<Index>(1, static_cast<Index>(fraction * static_cast<double>(per_block_units)));
    per_block = std::min(per_block, per_block_units - 1);
    if (per_block <= 0) return {};
    std::vector<Index> order(static_cast<std::size_t>(grp.units));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<Index> taken(static_cast<std::size_t>(grp.blocks), 0), out;
    for (Index u : order) {
        const Index b = grp.blocks > 1 ? grp.block[u] : 0;
        if (taken[b] < per_block) ++taken[b], out.push_back(u);
    }
    // every member keeps a channel: drop units until it does
    for (const auto& m : grp.members) {
        std::vector<char> gone(static_cast<std::size_t>(grp.units), 0);
        for (Index u : out) gone[u] = 1;
        Index left = 0;
        for (Index e = 0; e < m.channels(); ++e) left += !gone[m.unit[e]];
        if (left < m.groups) return {};
    }
    return out;
}

/// Small graphs, one coupling kind each, in double. Names are listed by coupling_names().
Graph<double> coupling_graph(const std::string& name);
/// Every name coupling_graph knows.
std::vector<std::string> coupling_names();
/// Coupling graphs whose dead channels can be removed without changing the output
/// (all but "layernorm": LayerNorm2d's statistics mix every channel of a pixel).
std::vector<std::string> dead_channel_names();

/// Zoo models at small image sizes, in double (restoration nets too); names by zoo_names().
Graph<double> zoo_model(const std::string& name);
std::vector<std::string> zoo_names();

}  // namespace spade::test
