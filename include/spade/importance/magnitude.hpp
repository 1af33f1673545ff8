// Magnitude<P>: the Lp magnitude of each channel's slice of every learnable
// member, as sum |w|^P (the P-th power of the Lp norm, which ranks the same and
// adds up across members).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <span>
#include <utility>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/deps/trace.hpp"
#include "spade/importance/concepts.hpp"

namespace spade {

namespace detail {

/// out[j] = sum over k < R of f(x[j R + k]) for j < n, with R known at compile time.
template <int R, class T, class F>
void slice_sums(const T* x, Index n, F f, T* out) {
    for (Index j = 0; j < n; ++j) {
        const T* a = x + j * R;
        T acc[4] = {};
        for (int k = 0; k < R; ++k) acc[k % 4] += f(a[k]);
        out[j] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

/// Sums f(w) of a parameter per index of axis 0 and per index of axis 1 in one pass.
/// A grouped axis 1 (groups > 1) is summed per row block of axis 0, giving groups x d1
/// sums. Rank-1 parameters have axis 0 only. Slices and column sums accumulate in T
/// with independent lanes (so the loops vectorise; a column adds at most d0 slice
/// sums), row totals in double.
template <class T, class F>
void axis_sums(const Parameter<T>& p, Index groups, F f, std::vector<double>& s0, std::vector<double>& s1) {
    const Shape& s = p.shape();
    const Index d0 = s.rank() > 0 ? s[0] : 1, d1 = s.rank() > 1 ? s[1] : 1, rest = d0 * d1 > 0 ? p.numel() / (d0 * d1) : 0;
    const Index rows_per_block = groups > 1 ? d0 / groups : d0;
    s0.assign(static_cast<std::size_t>(d0), 0.0);
    std::vector<T> cols(static_cast<std::size_t>(groups * d1), T(0)), col(rest > 1 ? static_cast<std::size_t>(d1) : 0);
    const T* w = p.data();
    constexpr int lanes = 16;
    for (Index i = 0; i < d0; ++i) {
        T* row1 = cols.data() + (groups > 1 ? (i / rows_per_block) * d1 : 0);
        const T* x = w + i * d1 * rest;
        const T* v = x;  // the row's d1 slice sums
        if (rest > 1) {
            switch (rest) {  // common kernel sizes: a fully unrolled sum in four chains
                case 9: slice_sums<9>(x, d1, f, col.data()); break;
                case 25: slice_sums<25>(x, d1, f, col.data()); break;
                case 49: slice_sums<49>(x, d1, f, col.data()); break;
                case 4: slice_sums<4>(x, d1, f, col.data()); break;
                default:  // k outer: the d1 running sums are independent
                    std::fill(col.begin(), col.end(), T(0));
                    for (Index k = 0; k < rest; ++k)
                        for (Index j = 0; j < d1; ++j) col[j] += f(x[j * rest + k]);
            }
            v = col.data();
        }
        // add the slice sums g(v[j]) to the columns and to the row total
        auto add_row = [&](auto g) {
            T acc[lanes] = {};
            Index j = 0;
            for (; j + lanes <= d1; j += lanes)
                for (int l = 0; l < lanes; ++l) {
                    const T a = g(v[j + l]);
                    row1[j + l] += a;
                    acc[l] += a;
                }
            double total = 0;
            for (; j < d1; ++j) {
                const T a = g(v[j]);
                row1[j] += a;
                total += static_cast<double>(a);
            }
            for (int l = 0; l < lanes; ++l) total += static_cast<double>(acc[l]);
            return total;
        };
        if (rest == 1)  // v holds the elements themselves
            s0[static_cast<std::size_t>(i)] = add_row(f);
        else
            s0[static_cast<std::size_t>(i)] = add_row([](T a) { return a; });
    }
    s1.assign(cols.begin(), cols.end());
}

/// Spreads per-channel sums of a member over the group's units (NaN where the member has none).
inline std::vector<double> to_units(const Group& grp, const GroupMember& m, const std::vector<double>& sums) {
    std::vector<double> out(static_cast<std::size_t>(grp.units), std::numeric_limits<double>::quiet_NaN());
    for (Index e = 0; e < m.channels(); ++e) {
        double& o = out[static_cast<std::size_t>(m.unit[e])];
        o = std::isnan(o) ? sums[static_cast<std::size_t>(e)] : o + sums[static_cast<std::size_t>(e)];
    }
    return out;
}

}  // namespace detail

/// Sides of a layer a magnitude criterion reads.
enum class Side { both, output, input };

/// Lp magnitude criterion, P = 1 or 2. For each learnable member it sums |w|^P over
/// each channel's slice (a conv's output row, a next layer's input column, a norm's
/// scale or shift). `side` restricts it to output-side members (a layer's own
/// channels and the parameters that follow them) or input-side members (the next
/// layers' columns). Running statistics are buffers and are not scored.
template <int P>
class Magnitude {
    static_assert(P == 1 || P == 2, "Magnitude<P>: P must be 1 or 2");

public:
    Side side = Side::both;

    Magnitude() = default;
    explicit Magnitude(Side s) : side(s) {}

    /// Reads every scored parameter once, both axes at a time, two threads at a time.
    template <Scalar T>
    void prepare(const Graph<T>& g, std::span<const Group> groups) {
        cache_.clear();
        const auto graphs = graph_list(g);
        std::vector<std::pair<Key, const GroupMember*>> todo;
        for (const auto& grp : groups) {
            if (!grp.prunable) continue;
            for (const auto& m : grp.members)
                if (wants(g, graphs, m)) {
                    Key k{m.graph, m.id};
                    if (!cache_.count(k)) cache_[k], todo.emplace_back(k, &m);
                }
        }
        // groups of a grouped axis: one parameter has at most one grouped axis
        for (const auto& grp : groups)
            for (const auto& m : grp.members)
                if (m.is_param() && m.groups > 1 && cache_.count({m.graph, m.id})) cache_[{m.graph, m.id}].groups = m.groups;
        auto param = [&](const Key& k) -> const Parameter<T>& { return graphs[k.first].graph->parameter(k.second); };
        std::sort(todo.begin(), todo.end(),
                  [&](const auto& a, const auto& b) { return param(a.first).numel() > param(b.first).numel(); });
        parallel_for_dynamic(static_cast<long>(todo.size()), [&](long i) {
            auto& entry = cache_.at(todo[i].first);
            detail::axis_sums(param(todo[i].first), entry.groups, power<T>, entry.axis0, entry.axis1);
        });
        version_ = g.version();
        graph_ = &g;
    }

    template <Scalar T>
    std::vector<double> member_scores(const Graph<T>& g, const Group& grp, const GroupMember& m) const {
        if (!m.is_param() || m.axis > 1) return {};
        const auto graphs = m.graph == 0 ? std::vector<GraphEntry<const Graph<T>>>{{&g, ""}} : graph_list(g);
        if (!wants(g, graphs, m)) return {};
        auto it = cache_.find({m.graph, m.id});
        std::vector<double> a0, a1;
        const std::vector<double>* sums;
        if (graph_ == &g && version_ == g.version() && it != cache_.end() &&
            (m.axis == 0 || it->second.groups == m.groups)) {
            sums = m.axis == 0 ? &it->second.axis0 : &it->second.axis1;
        } else {
            detail::axis_sums(graphs[m.graph].graph->parameter(m.id), m.groups, power<T>, a0, a1);
            sums = m.axis == 0 ? &a0 : &a1;
        }
        return detail::to_units(grp, m, *sums);
    }

private:
    using Key = std::pair<int, ParamId>;
    struct Entry {
        Index groups = 1;
        std::vector<double> axis0, axis1;
    };
    template <class T>
    static T power(T v) {
        if constexpr (P == 1) return std::abs(v);
        else return v * v;
    }
    template <Scalar T, class List>
    bool wants(const Graph<T>&, const List& graphs, const GroupMember& m) const {
        if (!m.is_param() || m.axis > 1) return false;
        if (!graphs[m.graph].graph->parameter(m.id).learnable()) return false;
        const bool input = m.label == "in";
        return side == Side::both || (side == Side::input) == input;
    }

    std::map<Key, Entry> cache_;
    std::uint64_t version_ = 0;
    const void* graph_ = nullptr;
};

}  // namespace spade
