// Fixtures for the file-format tests: a scratch directory and raw file bytes.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "fixtures.hpp"

namespace spade::test {

/// A fresh directory under the system temp directory, removed with everything in it.
class TempDir {
public:
    TempDir() {
        std::random_device rd;
        const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
        path_ = std::filesystem::temp_directory_path() /
                ("spade_test_" + std::to_string(stamp) + "_" + std::to_string(rd()));
        std::filesystem::create_directories(path_);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    /// Path of `name` inside the directory.
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
    /// The directory itself.
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

/// Writes `bytes` to `path` verbatim.
inline void write_bytes(const std::filesystem::path& path, const std::vector<unsigned char>& bytes) {
    std::ofstream os(path, std::ios::binary | std::ios::trunc);
    os.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

/// Reads `path` verbatim.
inline std::vector<unsigned char> read_bytes(const std::filesystem::path& path) {
    std::ifstream is(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>()};
}

/// A safetensors file by hand: 8-byte little-endian length of `header`, `header`, `data`.
inline std::vector<unsigned char> safetensors_bytes(const std::string& header, const std::vector<unsigned char>& data) {
    std::vector<unsigned char> out;
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(n >> (8 * i)));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

/// Runs `f`, requiring a FormatError whose message contains every one of `parts`.
template <class F>
void require_format_error(F&& f, const std::vector<std::string>& parts) {
    try {
        f();
    } catch (const FormatError& e) {
        const std::string msg = e.what();
        INFO("message: " << msg);
        for (const auto& p : parts) CHECK(msg.find(p) != std::string::npos);
        return;
    }
    FAIL("no FormatError thrown; expected one mentioning " << parts.front());
}

}  // namespace spade::test
