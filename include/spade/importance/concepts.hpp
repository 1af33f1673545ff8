// The policy families of importance scoring and what each must provide.
//
// A group's score comes in three steps, one policy each:
//   1. a Criterion scores the channels of each member of the group (a weight's
//      output rows, a BN scale, the next layer's input columns, ...);
//   2. a Reduction folds the scores that the members give one unit into one;
//   3. a Normalizer rescales the group's scores, so that groups compare in
//      global pruning.
// GroupImportance<Criterion, Reduction, Normalizer> chains them into an
// Importance, which is what prune_groups() takes. Any class meeting a concept
// plugs in, built-in or the user's own.
#pragma once

#include <concepts>
#include <span>
#include <vector>

#include "spade/deps/group.hpp"
#include "spade/graph/graph.hpp"

namespace spade {

/// A criterion scores the channels of one member of a group:
///
///     std::vector<double> member_scores(const Graph<T>& g, const Group& group,
///                                       const GroupMember& m) const;
///
/// returns one score per unit of `group` (group.units entries), NaN for the
/// units that `m` has no channel of, or an empty vector to leave `m` out (an
/// activation, a buffer). It may also provide
///
///     void prepare(const Graph<T>& g, std::span<const Group> groups);
///
/// which is called once before the groups of one pruning step are scored (to
/// read every parameter once, say). Criteria that need data beyond the weights
/// (Taylor: gradients; Hessian, OBS: curvature) read it from the parameter's
/// states (Parameter::state), which surgery keeps in step with the weights.
template <class C, class T>
concept Criterion = Scalar<T> && requires(const C& c, const Graph<T>& g, const Group& grp, const GroupMember& m) {
    { c.member_scores(g, grp, m) } -> std::convertible_to<std::vector<double>>;
};

/// A reduction folds the scores the members give one unit, in member order (root
/// first), into one: `double operator()(std::span<const double> scores) const`.
/// It is called only with at least one score.
template <class R>
concept Reduction = requires(const R& r, std::span<const double> s) {
    { r(s) } -> std::convertible_to<double>;
};

/// A normalizer rescales one group's unit scores in place:
/// `void operator()(std::span<double> scores) const`. The built-in ones expect
/// non-negative scores (magnitudes); they never reverse the ranking within a group.
template <class N>
concept Normalizer = requires(const N& n, std::span<double> s) { n(s); };

/// An importance gives each unit of a group one score (higher = more important):
///
///     std::vector<double> scores(const Graph<T>& g, const Group& group);
///
/// optionally with `void prepare(const Graph<T>&, std::span<const Group>)` as for
/// a Criterion. Scores are compared across groups in global pruning.
template <class I, class T>
concept Importance = Scalar<T> && requires(I& imp, const Graph<T>& g, const Group& grp) {
    { imp.scores(g, grp) } -> std::convertible_to<std::vector<double>>;
};

namespace detail {

/// Calls `p.prepare(g, groups)` if the policy has it.
template <class P, class T>
void prepare_policy(P& p, const Graph<T>& g, std::span<const Group> groups) {
    if constexpr (requires { p.prepare(g, groups); }) p.prepare(g, groups);
}

}  // namespace detail
}  // namespace spade
