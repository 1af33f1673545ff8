// Typed reads of JSON fields with messages that say where in which file a
// value is wrong, shared by the safetensors header and the graph file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "spade/core/error.hpp"
#include "spade/tensor/shape.hpp"

namespace spade::detail {

/// A JSON value shortened for an error message.
inline std::string json_brief(const nlohmann::json& j) {
    std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

/// Indented JSON text with arrays of numbers and strings kept on one line, so a
/// shape reads as [1, 3, 224, 224] rather than five lines. Throws nlohmann's
/// type_error for strings that are not UTF-8.
inline void write_json_pretty(std::string& out, const nlohmann::json& j, int indent = 0) {
    const std::string pad(static_cast<std::size_t>(indent + 2), ' ');
    if (j.is_object() && !j.empty()) {
        out += "{\n";
        std::size_t i = 0;
        for (const auto& [k, v] : j.items()) {
            out += pad + nlohmann::json(k).dump() + ": ";
            write_json_pretty(out, v, indent + 2);
            out += ++i < j.size() ? ",\n" : "\n";
        }
        out += std::string(static_cast<std::size_t>(indent), ' ') + "}";
    } else if (j.is_array() && !j.empty() && std::any_of(j.begin(), j.end(), [](const auto& e) { return e.is_structured(); })) {
        out += "[\n";
        for (std::size_t i = 0; i < j.size(); ++i) {
            out += pad;
            write_json_pretty(out, j[i], indent + 2);
            out += i + 1 < j.size() ? ",\n" : "\n";
        }
        out += std::string(static_cast<std::size_t>(indent), ' ') + "]";
    } else if (j.is_array()) {
        out += "[";
        for (std::size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + j[i].dump();
        out += "]";
    } else {
        out += j.dump();
    }
}

/// Parses `text`; throws FormatError prefixed with `where` if it is not JSON.
inline nlohmann::json parse_json(std::string_view text, const std::string& where) {
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        fail<FormatError>(where, ": not valid JSON: ", e.what());
    }
}

/// Member `key` of object `obj`; throws FormatError if `obj` is not an object or lacks it.
inline const nlohmann::json& json_field(const nlohmann::json& obj, const char* key, const std::string& where) {
    if (!obj.is_object()) fail<FormatError>(where, ": expected a JSON object, got ", json_brief(obj));
    auto it = obj.find(key);
    if (it == obj.end()) fail<FormatError>(where, ": missing field '", key, "'");
    return *it;
}

/// A string value; `what` names it in the message.
inline std::string json_string(const nlohmann::json& j, const std::string& what) {
    if (!j.is_string()) fail<FormatError>(what, " must be a string, got ", json_brief(j));
    return j.get<std::string>();
}

/// A boolean value.
inline bool json_bool(const nlohmann::json& j, const std::string& what) {
    if (!j.is_boolean()) fail<FormatError>(what, " must be true or false, got ", json_brief(j));
    return j.get<bool>();
}

/// A non-negative integer (64-bit unsigned); rejects fractions, negatives and floats such as 2.0.
inline std::uint64_t json_uint(const nlohmann::json& j, const std::string& what) {
    if (!j.is_number_integer()) fail<FormatError>(what, " must be a non-negative integer, got ", json_brief(j));
    if (!j.is_number_unsigned()) {
        const auto v = j.get<std::int64_t>();
        if (v < 0) fail<FormatError>(what, " must be a non-negative integer, got ", v);
        return static_cast<std::uint64_t>(v);
    }
    return j.get<std::uint64_t>();
}

/// A signed integer that fits int64.
inline std::int64_t json_int(const nlohmann::json& j, const std::string& what) {
    if (!j.is_number_integer()) fail<FormatError>(what, " must be an integer, got ", json_brief(j));
    if (j.is_number_unsigned() && j.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail<FormatError>(what, " = ", j.get<std::uint64_t>(), " does not fit a signed 64-bit integer");
    return j.get<std::int64_t>();
}

/// An array of non-negative extents.
inline Shape json_shape(const nlohmann::json& j, const std::string& what) {
    if (!j.is_array()) fail<FormatError>(what, " must be an array of extents, got ", json_brief(j));
    std::vector<Index> dims;
    for (std::size_t i = 0; i < j.size(); ++i) {
        const std::string item = what + "[" + std::to_string(i) + "]";
        const std::uint64_t d = json_uint(j[i], item);
        if (d > static_cast<std::uint64_t>(std::numeric_limits<Index>::max())) fail<FormatError>(item, " = ", d, " is too large");
        dims.push_back(static_cast<Index>(d));
    }
    return Shape(std::move(dims));
}

/// An array of strings.
inline std::vector<std::string> json_strings(const nlohmann::json& j, const std::string& what) {
    if (!j.is_array()) fail<FormatError>(what, " must be an array of strings, got ", json_brief(j));
    std::vector<std::string> out;
    for (std::size_t i = 0; i < j.size(); ++i) out.push_back(json_string(j[i], what + "[" + std::to_string(i) + "]"));
    return out;
}

}  // namespace spade::detail
