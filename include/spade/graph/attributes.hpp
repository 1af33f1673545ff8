// Attributes: an op's settings as a small typed map, so the graph file format
// and the op registry can describe any op without knowing it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "spade/core/error.hpp"

namespace spade {

/// One attribute value.
using Attribute = std::variant<bool, std::int64_t, double, std::string, std::vector<std::int64_t>, std::vector<double>>;

/// Named attributes of an op, ordered by name.
class Attributes {
public:
    Attributes() = default;
    Attributes(std::initializer_list<std::pair<const std::string, Attribute>> kv) : map_(kv) {}

    /// Sets `key`; integers of any width are stored as int64.
    template <class V>
    Attributes& set(const std::string& key, V v) {
        if constexpr (std::is_same_v<V, bool>) map_[key] = v;
        else if constexpr (std::is_integral_v<V>) map_[key] = static_cast<std::int64_t>(v);
        else if constexpr (std::is_floating_point_v<V>) map_[key] = static_cast<double>(v);
        else if constexpr (std::is_convertible_v<V, std::string>) map_[key] = std::string(v);
        else map_[key] = std::move(v);
        return *this;
    }
    bool has(const std::string& key) const { return map_.count(key) != 0; }

    /// Reads `key` as `V`; throws FormatError naming the op, key and the expected type.
    template <class V>
    V get(const std::string& op, const std::string& key) const {
        auto it = map_.find(key);
        if (it == map_.end()) fail<FormatError>("op ", op, ": missing attribute '", key, "'");
        return convert<V>(op, key, it->second);
    }
    /// Reads `key` as `V`, or `fallback` when absent.
    template <class V>
    V get_or(const std::string& op, const std::string& key, V fallback) const {
        auto it = map_.find(key);
        return it == map_.end() ? fallback : convert<V>(op, key, it->second);
    }

    const std::map<std::string, Attribute>& items() const { return map_; }
    friend bool operator==(const Attributes&, const Attributes&) = default;

private:
    template <class V>
    static V convert(const std::string& op, const std::string& key, const Attribute& a) {
        if constexpr (std::is_same_v<V, bool>) {
            if (auto p = std::get_if<bool>(&a)) return *p;
        } else if constexpr (std::is_integral_v<V>) {
            if (auto p = std::get_if<std::int64_t>(&a)) return static_cast<V>(*p);
        } else if constexpr (std::is_floating_point_v<V>) {
            if (auto p = std::get_if<double>(&a)) return static_cast<V>(*p);
            if (auto p = std::get_if<std::int64_t>(&a)) return static_cast<V>(*p);
        } else if constexpr (std::is_same_v<V, std::vector<double>>) {
            if (auto p = std::get_if<std::vector<double>>(&a)) return *p;
            if (auto p = std::get_if<std::vector<std::int64_t>>(&a)) return V(p->begin(), p->end());
        } else {
            if (auto p = std::get_if<V>(&a)) return *p;
        }
        fail<FormatError>("op ", op, ": attribute '", key, "' has the wrong type");
    }
    std::map<std::string, Attribute> map_;
};

}  // namespace spade
