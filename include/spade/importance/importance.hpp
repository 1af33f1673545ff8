// GroupImportance: a Criterion, a Reduction and a Normalizer chained into an
// Importance (see concepts.hpp), and the ready-made magnitude importances.
#pragma once

#include <cmath>
#include <span>
#include <vector>

#include "spade/importance/concepts.hpp"
#include "spade/importance/magnitude.hpp"
#include "spade/importance/reduce.hpp"

namespace spade {

/// A Criterion, a Reduction and a Normalizer chained into an Importance.
template <class C, Reduction R = MeanReduce, Normalizer N = MeanNormalize>
struct GroupImportance {
    C criterion{};
    R reduce{};
    N normalize{};

    template <Scalar T>
    void prepare(const Graph<T>& g, std::span<const Group> groups) {
        detail::prepare_policy(criterion, g, groups);
    }

    /// Unit scores of `grp`: members reduced per unit (0 for a unit no member scores), then normalized.
    template <Scalar T>
    std::vector<double> scores(const Graph<T>& g, const Group& grp) {
        static_assert(Criterion<C, T>, "GroupImportance: C must satisfy spade::Criterion");
        std::vector<std::vector<double>> per_member;
        for (const auto& m : grp.members) {
            std::vector<double> s = criterion.member_scores(g, grp, m);
            if (s.empty()) continue;
            if (static_cast<Index>(s.size()) != grp.units)
                fail<PruneError>("criterion gave ", s.size(), " scores for member '", m.name, "' of group ", grp.id,
                                 ", which has ", grp.units, " units");
            per_member.push_back(std::move(s));
        }
        std::vector<double> out(static_cast<std::size_t>(grp.units), 0.0), unit;
        unit.reserve(per_member.size());
        for (std::size_t u = 0; u < out.size(); ++u) {
            unit.clear();
            for (const auto& s : per_member)
                if (!std::isnan(s[u])) unit.push_back(s[u]);
            if (!unit.empty()) out[u] = reduce(std::span<const double>(unit));
        }
        normalize(std::span<double>(out));
        return out;
    }
};

/// L1 and L2 magnitude with the default mean reduction and mean normalization.
using L1Importance = GroupImportance<Magnitude<1>>;
using L2Importance = GroupImportance<Magnitude<2>>;

}  // namespace spade
