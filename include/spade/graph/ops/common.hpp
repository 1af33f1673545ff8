// Small pieces shared by op headers: 2-D pairs, attribute helpers.
#pragma once

#include <vector>

#include "spade/graph/builder.hpp"
#include "spade/graph/op.hpp"
#include "spade/graph/registry.hpp"

namespace spade {

/// A (height, width) pair that also converts from a single number: `.kernel = 3`, `.kernel = {1, 7}`.
struct Pair2 {
    Index h = 0, w = 0;
    constexpr Pair2() = default;
    constexpr Pair2(Index v) : h(v), w(v) {}  // NOLINT: implicit by design
    constexpr Pair2(Index h_, Index w_) : h(h_), w(w_) {}
    friend bool operator==(const Pair2&, const Pair2&) = default;
    std::vector<std::int64_t> vec() const { return {h, w}; }
    /// Reads a [h, w] attribute.
    static Pair2 from(const Attributes& a, const std::string& op, const std::string& key) {
        auto v = a.get<std::vector<std::int64_t>>(op, key);
        if (v.size() != 2) fail<FormatError>("op ", op, ": attribute '", key, "' needs 2 values, got ", v.size());
        return {v[0], v[1]};
    }
};

}  // namespace spade
