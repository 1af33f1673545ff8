// Exceptions thrown by spade. Every message names the node, tensor or file and
// the offending numbers, so a user can act on it without a debugger.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace spade {

/// Base of every exception spade throws.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A shape, rank, index or bound does not fit.
class ShapeError : public Error {
public:
    using Error::Error;
};

/// A file or serialized object is malformed or does not match the graph.
class FormatError : public Error {
public:
    using Error::Error;
};

/// A graph is ill-formed: unknown names, duplicate names, dangling values.
class GraphError : public Error {
public:
    using Error::Error;
};

/// A pruning request cannot be carried out.
class PruneError : public Error {
public:
    using Error::Error;
};

namespace detail {

/// Concatenates streamable pieces into one message.
template <class... Args>
std::string cat(Args&&... args) {
    std::ostringstream os;
    (os << ... << std::forward<Args>(args));
    return os.str();
}

}  // namespace detail

/// Throws `E` with the pieces streamed together.
template <class E = Error, class... Args>
[[noreturn]] void fail(Args&&... args) {
    throw E(detail::cat(std::forward<Args>(args)...));
}

}  // namespace spade
