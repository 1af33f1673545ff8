// Whole-file reads and all-or-nothing writes shared by the file formats, so a
// failed save never leaves a half-written model where a good one was.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <string>
#include <system_error>
#include <vector>

#include "spade/core/error.hpp"

namespace spade::detail {

/// Every byte of `path`; throws FormatError naming the file if it cannot be read.
inline std::vector<unsigned char> read_file_bytes(const std::filesystem::path& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) fail<FormatError>("cannot read '", path.string(), "': it is a directory");
    std::ifstream is(path, std::ios::binary);
    if (!is) fail<FormatError>("cannot open '", path.string(), "' for reading");
    is.seekg(0, std::ios::end);
    const std::streamoff size = is.tellg();
    if (size < 0) fail<FormatError>("cannot determine the size of '", path.string(), "'");
    is.seekg(0, std::ios::beg);
    std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
    is.read(reinterpret_cast<char*>(bytes.data()), size);
    if (is.gcount() != size) fail<FormatError>("reading '", path.string(), "' stopped after ", is.gcount(), " of ", size, " bytes");
    return bytes;
}

/// Writes `path` through `write` into a sibling temporary file that replaces `path`
/// only once everything is on disk; throws FormatError naming the file on failure.
inline void write_file_atomically(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write) {
    std::filesystem::path tmp = path;
    tmp += ".partial";
    std::error_code ec;
    {
        std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
        if (!os) fail<FormatError>("cannot open '", tmp.string(), "' for writing");
        try {
            write(os);
            os.flush();
        } catch (...) {
            os.close();
            std::filesystem::remove(tmp, ec);
            throw;
        }
        if (!os) {
            os.close();
            std::filesystem::remove(tmp, ec);
            fail<FormatError>("writing '", path.string(), "' failed (disk full or file system error)");
        }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        fail<FormatError>("cannot move '", tmp.string(), "' to '", path.string(), "': ", ec.message());
    }
}

}  // namespace spade::detail
