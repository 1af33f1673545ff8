// Shape: the extents of a tensor, of any rank, printable in error messages.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "spade/core/error.hpp"

namespace spade {

/// Signed index type used for extents, strides and offsets.
using Index = std::int64_t;

/// Extents of a tensor, outermost first (NCHW for activations).
class Shape {
public:
    Shape() = default;
    Shape(std::initializer_list<Index> dims) : dims_(dims) { check(); }
    explicit Shape(std::vector<Index> dims) : dims_(std::move(dims)) { check(); }

    /// Number of axes.
    int rank() const { return static_cast<int>(dims_.size()); }
    /// Extent of axis `i`; negative `i` counts from the back.
    Index operator[](int i) const { return dims_[static_cast<std::size_t>(axis(i))]; }
    /// Mutable extent of axis `i`.
    Index& operator[](int i) { return dims_[static_cast<std::size_t>(axis(i))]; }
    /// Product of all extents (1 for a scalar shape).
    Index numel() const {
        Index n = 1;
        for (Index d : dims_) n *= d;
        return n;
    }
    /// The extents as a vector.
    const std::vector<Index>& dims() const { return dims_; }
    /// Checks an axis and turns a negative one into its positive index.
    int axis(int i) const {
        int r = rank();
        if (i < -r || i >= r) fail<ShapeError>("axis ", i, " is out of range for shape ", *this);
        return i < 0 ? i + r : i;
    }

    friend bool operator==(const Shape&, const Shape&) = default;

    friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
        os << '[';
        for (std::size_t i = 0; i < s.dims_.size(); ++i) os << (i ? ", " : "") << s.dims_[i];
        return os << ']';
    }
    /// The shape as text, e.g. "[1, 64, 56, 56]".
    std::string str() const {
        std::ostringstream os;
        os << *this;
        return os.str();
    }

private:
    void check() const {
        for (Index d : dims_)
            if (d < 0) fail<ShapeError>("negative extent in shape ", *this);
    }
    std::vector<Index> dims_;
};

}  // namespace spade
