// Group: channels of several layers that must be removed together, as found
// by trace_groups(). Plain data, independent of the scalar type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spade/tensor/shape.hpp"

namespace spade {

/// One member of a group: an axis of a parameter, or the channel axis of an activation.
struct GroupMember {
    enum class Kind : std::uint8_t { param, value };
    Kind kind = Kind::param;
    int graph = 0;      ///< 0 for the traced graph, k > 0 for the k-th subgraph in `graph_list` order
    int id = 0;         ///< ParamId or ValueId inside that graph
    int axis = 1;       ///< parameter axis (1 for values)
    Index groups = 1;   ///< > 1: a grouped parameter axis, see ChannelAxis::groups
    std::string name;   ///< parameter or value name; inside a subgraph prefixed "<node>.<k>."
    std::string label;  ///< "out" / "in" when the op named the axis
    /// Root unit of each channel along the axis (groups x extent entries for a grouped axis):
    /// removing unit u removes every channel whose entry is u.
    std::vector<Index> unit;

    bool is_param() const { return kind == Kind::param; }
    /// Channels along the member's axis (all conv groups together for a grouped axis).
    Index channels() const { return static_cast<Index>(unit.size()); }
};

/// Channels of several layers that must be removed together. The group's root
/// units are what pruning counts and scores: removing unit u removes, from every
/// member, the channels that map to u (one each for plain coupling, a block for
/// Flatten or PixelShuffle, a whole norm group for GroupNorm).
struct Group {
    std::size_t id = 0;                ///< position in trace order
    Index units = 0;                   ///< root units (channels of the root member, usually)
    std::vector<GroupMember> members;  ///< root member first, then the other parameters, then activations
    /// > 1 when a grouped conv asks the units to leave evenly from `blocks` blocks;
    /// `block[u]` is then the block of unit u.
    Index blocks = 1;
    std::vector<Index> block;
    bool prunable = true;
    std::string reason;               ///< why not, when !prunable
    std::uint64_t graph_version = 0;  ///< Graph::version() when traced; surgery refuses other versions

    /// The member whose channels the root units are (a parameter axis).
    const GroupMember& root() const { return members.front(); }
    /// "conv1.weight[out]": the root's name and axis, a key stable across identical graphs.
    std::string key() const {
        const auto& r = root();
        return r.name + "[" + (r.label.empty() ? "axis " + std::to_string(r.axis) : r.label) + "]";
    }
};

namespace detail {

// "[out 0..63]" plus how the channels map to units when that is not the identity.
inline std::string member_range(const GroupMember& m) {
    const Index n = m.channels();
    std::string s = "[" + (m.label.empty() ? std::string() : m.label + " ") + "0.." + std::to_string(n - 1) + "]";
    if (n == 0) return s;
    if (m.groups > 1) s += " (" + std::to_string(m.groups) + " conv groups)";
    // unit[e] = e / k + c for a block size k and an offset c?
    Index k = 1;
    while (k < n && m.unit[static_cast<std::size_t>(k)] == m.unit[0]) ++k;
    const Index c = m.unit[0];
    bool regular = n % k == 0;
    for (Index e = 0; regular && e < n; ++e) regular = m.unit[static_cast<std::size_t>(e)] == e / k + c;
    if (!regular) return s + " (mapped)";
    if (k > 1) s += " (" + std::to_string(k) + " per unit)";
    if (c != 0 || k > 1) s += " = units " + std::to_string(c) + ".." + std::to_string(c + n / k - 1);
    return s;
}

}  // namespace detail

/// Readable listing of a group: a header line, then one line per parameter
/// member such as `layer1.0.conv2.weight[out 0..63]` (and activations too if
/// `with_values`).
inline std::string describe(const Group& g, bool with_values = false) {
    std::string s = "group " + std::to_string(g.id) + ": " + std::to_string(g.units) + " units";
    if (g.blocks > 1) s += " in " + std::to_string(g.blocks) + " even blocks";
    s += g.prunable ? ", prunable\n" : ", not prunable: " + g.reason + "\n";
    for (const auto& m : g.members) {
        if (!m.is_param() && !with_values) continue;
        s += "  " + m.name + detail::member_range(m) + (m.is_param() ? "" : " (activation)") + "\n";
    }
    return s;
}

}  // namespace spade
