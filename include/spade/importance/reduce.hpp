// Reductions (how the members' scores of one unit combine) and normalizers
// (how a group's scores are rescaled); see concepts.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <vector>

namespace spade {

/// Mean of the members' scores.
struct MeanReduce {
    double operator()(std::span<const double> s) const {
        return std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size());
    }
};
/// Largest member score.
struct MaxReduce {
    double operator()(std::span<const double> s) const { return *std::max_element(s.begin(), s.end()); }
};
/// Sum of the member scores.
struct SumReduce {
    double operator()(std::span<const double> s) const { return std::accumulate(s.begin(), s.end(), 0.0); }
};
/// Product of the member scores.
struct ProdReduce {
    double operator()(std::span<const double> s) const {
        return std::accumulate(s.begin(), s.end(), 1.0, [](double a, double b) { return a * b; });
    }
};
/// The first member's score (the root layer's, for units the root has).
struct FirstReduce {
    double operator()(std::span<const double> s) const { return s.front(); }
};

/// Leaves the scores as they are.
struct NoNormalize {
    void operator()(std::span<double>) const {}
};

namespace detail {
// Divides by a positive finite d; anything else would flip or destroy the ranking.
inline void divide_by(std::span<double> s, double d) {
    if (d > 0.0 && std::isfinite(d))
        for (double& x : s) x /= d;
}
}  // namespace detail

/// Divides by the group's mean score.
struct MeanNormalize {
    void operator()(std::span<double> s) const {
        if (!s.empty()) detail::divide_by(s, std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size()));
    }
};
/// Divides by the group's largest score.
struct MaxNormalize {
    void operator()(std::span<double> s) const {
        if (!s.empty()) detail::divide_by(s, *std::max_element(s.begin(), s.end()));
    }
};
/// Divides by the sum of the group's scores.
struct SumNormalize {
    void operator()(std::span<double> s) const { detail::divide_by(s, std::accumulate(s.begin(), s.end(), 0.0)); }
};
/// Standardizes: (s - mean) / standard deviation (population), so each group has mean 0 and variance 1.
struct StandardNormalize {
    void operator()(std::span<double> s) const {
        if (s.empty()) return;
        const double n = static_cast<double>(s.size());
        const double mean = std::accumulate(s.begin(), s.end(), 0.0) / n;
        double var = 0;
        for (double x : s) var += (x - mean) * (x - mean);
        const double sd = std::sqrt(var / n);
        for (double& x : s) x -= mean;
        detail::divide_by(s, sd);
    }
};
/// LAMP (Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning", ICLR 2021):
/// with the scores sorted ascending, s_i / (s_i + s_{i+1} + ... + s_n), the unit's share of
/// everything at least as important. The largest score becomes 1.
struct LampNormalize {
    void operator()(std::span<double> s) const {
        std::vector<std::size_t> order(s.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return s[a] < s[b]; });
        std::vector<double> out(s.size());
        double tail = 0;
        for (std::size_t k = order.size(); k-- > 0;) {
            tail += s[order[k]];
            out[order[k]] = tail > 0 ? s[order[k]] / tail : 0.0;
        }
        std::copy(out.begin(), out.end(), s.begin());
    }
};

}  // namespace spade
