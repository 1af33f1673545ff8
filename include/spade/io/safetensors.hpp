// Safetensors: the tensor file format of Hugging Face and PyTorch exporters.
// A file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON
// mapping tensor names to {dtype, shape, data_offsets}, then one byte buffer
// holding little-endian row-major data. Every header field is checked before a
// byte of data is trusted, so a malformed or hostile file gives a FormatError,
// never a read out of bounds.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "spade/core/scalar.hpp"
#include "spade/io/files.hpp"
#include "spade/io/json_fields.hpp"
#include "spade/tensor/tensor.hpp"

namespace spade {

/// Where one tensor lives in a safetensors file and what it holds.
struct TensorInfo {
    std::string dtype;        ///< safetensors dtype name: "F32", "BF16", "I64", ...
    Shape shape;              ///< extents, outermost first
    std::uint64_t begin = 0;  ///< offset of the first byte, relative to the start of the byte buffer
    std::uint64_t end = 0;    ///< offset one past the last byte

    /// Bytes the tensor occupies.
    std::uint64_t bytes() const { return end - begin; }
};

/// Bytes per element of a safetensors dtype, or 0 for a name the format does not define.
inline std::size_t safetensors_dtype_size(std::string_view dtype) {
    static const std::map<std::string_view, std::size_t> sizes{
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
        {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8}};
    auto it = sizes.find(dtype);
    return it == sizes.end() ? 0 : it->second;
}

/// True for the dtypes SafetensorsFile::read converts to float and double.
inline bool safetensors_readable_dtype(std::string_view dtype) {
    return dtype == "F32" || dtype == "F64" || dtype == "F16" || dtype == "BF16";
}

/// IEEE 754 binary16 to float. Exact: every half value, subnormals, infinities
/// and NaN payloads included, is representable as a float.
inline float half_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1Fu;
    const std::uint32_t mantissa = h & 0x3FFu;
    if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));  // inf, NaN
    if (exponent != 0)  // normal: rebias the exponent from 15 to 127
        return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    // zero or subnormal: mantissa * 2^-24, exact since mantissa has 10 bits
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
}

/// bfloat16 to float. Exact: bfloat16 is the upper half of a float's bits.
inline float bfloat16_to_float(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }

namespace detail {

/// Unsigned integer from `sizeof(U)` little-endian bytes, whatever the host order.
template <class U>
U load_le(const unsigned char* p) {
    U v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(p[i]) << (8 * i);
    return v;
}

/// Appends `sizeof(U)` little-endian bytes of `v`.
template <class U>
void store_le(U v, unsigned char* p) {
    for (std::size_t i = 0; i < sizeof(U); ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

/// Converts `n` little-endian elements of dtype `dtype` (F32, F64, F16 or BF16) to T.
template <Scalar T>
void decode_floats(std::string_view dtype, const unsigned char* src, std::size_t n, T* dst) {
    constexpr bool little = std::endian::native == std::endian::little;
    if (n == 0) return;  // an empty tensor's pointers may be null, which memcpy must not see
    if (dtype == "F32") {
        if constexpr (little && std::same_as<T, float>) {
            std::memcpy(dst, src, n * 4);
        } else {
            for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(std::bit_cast<float>(load_le<std::uint32_t>(src + 4 * i)));
        }
    } else if (dtype == "F64") {
        if constexpr (little && std::same_as<T, double>) {
            std::memcpy(dst, src, n * 8);
        } else {
            for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(std::bit_cast<double>(load_le<std::uint64_t>(src + 8 * i)));
        }
    } else if (dtype == "F16") {
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(half_to_float(load_le<std::uint16_t>(src + 2 * i)));
    } else {
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(bfloat16_to_float(load_le<std::uint16_t>(src + 2 * i)));
    }
}

}  // namespace detail

/// A safetensors file read into memory and fully validated: tensors may be
/// looked up by name and read as float or double.
class SafetensorsFile {
public:
    /// Largest header accepted; the reference implementation uses the same bound.
    static constexpr std::uint64_t max_header_bytes = 100'000'000;

    /// Reads and validates `path`; throws FormatError naming the file (and tensor) on any defect.
    static SafetensorsFile open(const std::filesystem::path& path) {
        return from_bytes(detail::read_file_bytes(path), path.string());
    }

    /// Validates a file already in memory; `source` names it in error messages.
    static SafetensorsFile from_bytes(std::vector<unsigned char> bytes, std::string source) {
        SafetensorsFile f;
        f.source_ = std::move(source);
        f.bytes_ = std::move(bytes);
        f.parse();
        return f;
    }

    /// The file name given to open() (or the source given to from_bytes()).
    const std::string& source() const { return source_; }
    /// Tensor names in the order their data lies in the file.
    std::vector<std::string> names() const { return order_; }
    /// Number of tensors.
    std::size_t size() const { return order_.size(); }
    /// True if the file holds a tensor called `name`.
    bool contains(const std::string& name) const { return infos_.count(name) != 0; }
    /// Dtype, shape and byte range of `name`; throws FormatError if absent.
    const TensorInfo& info(const std::string& name) const {
        auto it = infos_.find(name);
        if (it == infos_.end()) fail<FormatError>(where(), ": no tensor named '", name, "'");
        return it->second;
    }
    /// The "__metadata__" strings of the header (empty if it has none).
    const std::map<std::string, std::string>& metadata() const { return metadata_; }

    /// Reads tensor `name` converted to T. F32, F64, F16 and BF16 convert (F64 to
    /// float rounds to nearest); other dtypes throw FormatError naming the tensor.
    template <Scalar T>
    Tensor<T> read(const std::string& name) const {
        check_readable<T>(name);
        Tensor<T> t(info(name).shape);
        read_into<T>(name, std::span<T>(t.data(), static_cast<std::size_t>(t.numel())));
        return t;
    }

    /// As read(), into caller memory of exactly numel elements (no allocation).
    template <Scalar T>
    void read_into(const std::string& name, std::span<T> out) const {
        check_readable<T>(name);
        const TensorInfo& ti = info(name);
        const auto n = static_cast<std::size_t>(ti.shape.numel());
        if (out.size() != n)
            fail<FormatError>(where(name), ": holds ", n, " element(s) (shape ", ti.shape, "), destination has ", out.size());
        detail::decode_floats<T>(ti.dtype, bytes_.data() + data_start_ + ti.begin, n, out.data());
    }

    /// Throws FormatError unless tensor `name` exists and converts to T.
    template <Scalar T>
    void check_readable(const std::string& name) const {
        const TensorInfo& ti = info(name);
        if (!safetensors_readable_dtype(ti.dtype))
            fail<FormatError>(where(name), ": dtype ", ti.dtype, " cannot be read as ", dtype_name<T>(),
                              " (only F32, F64, F16 and BF16 convert)");
    }

private:
    SafetensorsFile() = default;

    std::string where() const { return "safetensors file '" + source_ + "'"; }
    std::string where(const std::string& name) const { return where() + ": tensor '" + name + "'"; }

    void parse() {
        const std::uint64_t size = bytes_.size();
        if (size < 8) fail<FormatError>(where(), ": file has ", size, " byte(s), too short for the 8-byte header length");
        const auto n = detail::load_le<std::uint64_t>(bytes_.data());
        if (n > max_header_bytes)
            fail<FormatError>(where(), ": header length ", n, " exceeds the limit of ", max_header_bytes, " bytes");
        if (n > size - 8)
            fail<FormatError>(where(), ": header length ", n, " runs past the end of the file (", size - 8,
                              " byte(s) after the length)");
        data_start_ = 8 + n;
        const std::uint64_t buffer = size - data_start_;
        nlohmann::json header = parse_header(
            std::string_view(reinterpret_cast<const char*>(bytes_.data()) + 8, static_cast<std::size_t>(n)));
        if (!header.is_object()) fail<FormatError>(where(), ": header is not a JSON object but ", detail::json_brief(header));

        for (const auto& [name, entry] : header.items()) {
            if (name == "__metadata__") {
                read_metadata(entry);
                continue;
            }
            infos_.emplace(name, read_entry(name, entry, buffer));
        }
        check_coverage(buffer);
    }

    // Parses the header, rejecting a tensor name given twice (JSON parsers keep
    // only one of them, which would silently hide data).
    nlohmann::json parse_header(std::string_view text) const {
        std::set<std::string> seen;
        std::string duplicate;
        auto on_event = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
            if (depth == 1 && ev == nlohmann::json::parse_event_t::key && parsed.is_string() &&
                !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
                duplicate = parsed.get<std::string>();
            return true;
        };
        nlohmann::json header;
        try {
            header = nlohmann::json::parse(text, on_event);
        } catch (const nlohmann::json::exception& e) {
            fail<FormatError>(where(), ": header is not valid JSON: ", e.what());
        }
        if (!duplicate.empty()) fail<FormatError>(where(), ": header names tensor '", duplicate, "' more than once");
        return header;
    }

    void read_metadata(const nlohmann::json& m) {
        const std::string w = where() + ": __metadata__";
        if (!m.is_object()) fail<FormatError>(w, " must be an object of strings, got ", detail::json_brief(m));
        for (const auto& [k, v] : m.items()) metadata_[k] = detail::json_string(v, w + " value of '" + k + "'");
    }

    TensorInfo read_entry(const std::string& name, const nlohmann::json& e, std::uint64_t buffer) const {
        const std::string w = where(name);
        if (!e.is_object()) fail<FormatError>(w, ": entry must be an object, got ", detail::json_brief(e));
        TensorInfo ti;
        ti.dtype = detail::json_string(detail::json_field(e, "dtype", w), w + ": dtype");
        const std::size_t elem = safetensors_dtype_size(ti.dtype);
        if (elem == 0) fail<FormatError>(w, ": unknown dtype '", ti.dtype, "'");
        ti.shape = detail::json_shape(detail::json_field(e, "shape", w), w + ": shape");

        const nlohmann::json& off = detail::json_field(e, "data_offsets", w);
        if (!off.is_array() || off.size() != 2)
            fail<FormatError>(w, ": data_offsets must be an array of 2 integers, got ", detail::json_brief(off));
        ti.begin = detail::json_uint(off[0], w + ": data_offsets[0]");
        ti.end = detail::json_uint(off[1], w + ": data_offsets[1]");
        if (ti.begin > ti.end) fail<FormatError>(w, ": data_offsets [", ti.begin, ", ", ti.end, "] are decreasing");
        if (ti.end > buffer)
            fail<FormatError>(w, ": data_offsets [", ti.begin, ", ", ti.end, "] run past the byte buffer of ", buffer,
                              " byte(s)");

        // element count and byte size, refusing anything that would overflow 64 bits
        constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
        std::uint64_t numel = 1;
        const auto& dims = ti.shape.dims();
        if (std::find(dims.begin(), dims.end(), Index(0)) != dims.end()) numel = 0;
        else
            for (Index d : dims) {
                const auto u = static_cast<std::uint64_t>(d);
                if (numel > max / u) fail<FormatError>(w, ": shape ", ti.shape, " has more elements than fit 64 bits");
                numel *= u;
            }
        if (numel > max / elem) fail<FormatError>(w, ": shape ", ti.shape, " of ", ti.dtype, " needs more bytes than fit 64 bits");
        if (numel * elem != ti.bytes())
            fail<FormatError>(w, ": shape ", ti.shape, " of ", ti.dtype, " needs ", numel * elem, " bytes but data_offsets [",
                              ti.begin, ", ", ti.end, "] hold ", ti.bytes());
        return ti;
    }

    // The format requires the tensors to tile the byte buffer exactly: no
    // overlaps (two tensors sharing bytes), no holes, no trailing bytes.
    void check_coverage(std::uint64_t buffer) {
        std::vector<std::pair<const std::string*, const TensorInfo*>> sorted;
        for (const auto& [name, ti] : infos_) sorted.emplace_back(&name, &ti);
        std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
            return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
        });
        std::uint64_t cursor = 0;
        const std::pair<const std::string*, const TensorInfo*>* prev = nullptr;
        for (const auto& cur : sorted) {
            const TensorInfo& ti = *cur.second;
            if (ti.begin < cursor)
                fail<FormatError>(where(), ": tensors '", *prev->first, "' [", prev->second->begin, ", ", prev->second->end,
                                  "] and '", *cur.first, "' [", ti.begin, ", ", ti.end, "] overlap");
            if (ti.begin > cursor)
                fail<FormatError>(where(), ": bytes [", cursor, ", ", ti.begin, ") before tensor '", *cur.first,
                                  "' belong to no tensor");
            cursor = ti.end;
            prev = &cur;
            order_.push_back(*cur.first);
        }
        if (cursor != buffer)
            fail<FormatError>(where(), ": bytes [", cursor, ", ", buffer, ") after ",
                              prev ? "the last tensor '" + *prev->first + "'" : std::string("the header"),
                              " belong to no tensor");
    }

    std::string source_;
    std::vector<unsigned char> bytes_;
    std::uint64_t data_start_ = 0;
    std::map<std::string, TensorInfo> infos_;
    std::vector<std::string> order_;
    std::map<std::string, std::string> metadata_;
};

/// Writes `tensors` to `path` in the given order as F32 (float) or F64 (double),
/// with optional `metadata` strings. The header is padded with spaces to a
/// multiple of 8 bytes so the data is aligned. The file is replaced only when
/// the write succeeded. Throws FormatError for a duplicate or reserved name.
template <Scalar T>
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, TensorRef<const T>>>& tensors,
                       const std::map<std::string, std::string>& metadata = {}) {
    const std::string where = "safetensors file '" + path.string() + "'";
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::set<std::string> seen;
    std::uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        if (name == "__metadata__") fail<FormatError>(where, ": '__metadata__' is reserved and cannot name a tensor");
        if (!seen.insert(name).second) fail<FormatError>(where, ": tensor '", name, "' is given twice");
        if (t.data == nullptr && t.numel() > 0) fail<FormatError>(where, ": tensor '", name, "' has no data");
        const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * sizeof(T);
        nlohmann::ordered_json entry;
        entry["dtype"] = dtype_name<T>();
        entry["shape"] = t.shape.dims();
        entry["data_offsets"] = {offset, offset + bytes};
        header[name] = std::move(entry);
        offset += bytes;
    }
    std::string text;
    try {
        text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    } catch (const nlohmann::json::exception& e) {
        fail<FormatError>(where, ": a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
    }
    text.append((8 - text.size() % 8) % 8, ' ');

    detail::write_file_atomically(path, [&](std::ostream& os) {
        unsigned char len[8];
        detail::store_le<std::uint64_t>(text.size(), len);
        os.write(reinterpret_cast<const char*>(len), 8);
        os.write(text.data(), static_cast<std::streamsize>(text.size()));
        std::vector<unsigned char> chunk;
        for (const auto& [name, t] : tensors) {
            const auto n = static_cast<std::size_t>(t.numel());
            if constexpr (std::endian::native == std::endian::little) {
                os.write(reinterpret_cast<const char*>(t.data), static_cast<std::streamsize>(n * sizeof(T)));
            } else {
                using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
                chunk.resize(n * sizeof(T));
                for (std::size_t i = 0; i < n; ++i) detail::store_le<Bits>(std::bit_cast<Bits>(t.data[i]), chunk.data() + i * sizeof(T));
                os.write(reinterpret_cast<const char*>(chunk.data()), static_cast<std::streamsize>(chunk.size()));
            }
        }
    });
}

}  // namespace spade
