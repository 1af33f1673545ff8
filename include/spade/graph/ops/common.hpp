// Small pieces shared by op headers: 2-D pairs, attribute helpers.
#pragma once

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "spade/graph/builder.hpp"
#include "spade/graph/op.hpp"
#include "spade/graph/registry.hpp"

// Explicit instantiation of built-in ops. A header-only library instantiates
// every op for float and double in every translation unit that includes it,
// which costs about a minute of compile time per file. A project with many
// files (spade's own tests) defines SPADE_EXTERN_TEMPLATES everywhere and
// SPADE_INSTANTIATE_TEMPLATES in exactly one file, which then holds the only copy.
#if defined(SPADE_INSTANTIATE_TEMPLATES)
#define SPADE_TEMPLATE_INSTANCE(...) template class __VA_ARGS__;
#elif defined(SPADE_EXTERN_TEMPLATES)
#define SPADE_TEMPLATE_INSTANCE(...) extern template class __VA_ARGS__;
#else
#define SPADE_TEMPLATE_INSTANCE(...)
#endif
/// Declares (or defines) the float and double instances of op template `tmpl<T, extra...>`.
#define SPADE_OP_INSTANCES(tmpl, ...)                              \
    SPADE_TEMPLATE_INSTANCE(tmpl<float __VA_OPT__(, ) __VA_ARGS__>) \
    SPADE_TEMPLATE_INSTANCE(tmpl<double __VA_OPT__(, ) __VA_ARGS__>)

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

/// An activation that an op applies to its own result, so that no separate pass
/// reads and writes the tensor again (set by the inference compile step).
enum class FusedActivation { none, relu, relu6 };

/// "none", "relu" or "relu6".
inline const char* fused_activation_name(FusedActivation a) {
    switch (a) {
        case FusedActivation::relu: return "relu";
        case FusedActivation::relu6: return "relu6";
        default: return "none";
    }
}

/// Reads attribute `key` ("activation" by default) of op `op` (absent means none); throws
/// FormatError on an unknown name.
inline FusedActivation fused_activation_from(const Attributes& a, const std::string& op,
                                             const std::string& key = "activation") {
    const auto name = a.get_or<std::string>(op, key, "none");
    if (name == "none") return FusedActivation::none;
    if (name == "relu") return FusedActivation::relu;
    if (name == "relu6") return FusedActivation::relu6;
    fail<FormatError>("op ", op, ": unknown fused activation '", name, "' (expected none, relu or relu6)");
}

/// A fused activation as the bounds it clamps to, lo <= y <= hi (none: -inf and +inf), applied
/// by two branch-free compares to one value or to a vector of them (GCC vector extensions);
/// a NaN stays NaN, as the ReLU and ReLU6 ops keep it. The one definition of what a fused
/// activation does: apply_fused and the kernels' register epilogues both use it.
template <class T>
struct FusedClamp {
    T lo, hi;
    explicit FusedClamp(FusedActivation act)
        : lo(act == FusedActivation::none ? -std::numeric_limits<T>::infinity() : T(0)),
          hi(act == FusedActivation::relu6 ? T(6) : std::numeric_limits<T>::infinity()) {}
    template <class U>
    [[gnu::always_inline]] U operator()(const U& x) const {
        const U v = x < lo ? lo : x;
        return hi < v ? hi : v;
    }
};

/// Applies a fused activation to n values in place.
template <class T>
void apply_fused(FusedActivation a, T* y, Index n) {
    if (a == FusedActivation::none) return;
    const FusedClamp<T> c(a);
    for (Index i = 0; i < n; ++i) y[i] = c(y[i]);
}

}  // namespace spade
