// Tensor: owning, contiguous, any rank; TensorRef: the same without ownership,
// which is how the executor hands activations and parameters to ops.
#pragma once

#include <algorithm>
#include <vector>

#include "spade/tensor/shape.hpp"
#include "spade/tensor/view.hpp"

namespace spade {

namespace detail {
template <int Rank>
std::array<Index, Rank> extents_of(const Shape& s, const char* what) {
    if (s.rank() != Rank) fail<ShapeError>(what, ": shape ", s, " has rank ", s.rank(), ", expected rank ", Rank);
    std::array<Index, Rank> e{};
    for (int i = 0; i < Rank; ++i) e[i] = s[i];
    return e;
}
}  // namespace detail

/// Non-owning contiguous tensor of any rank: a pointer and a shape.
template <class T>
struct TensorRef {
    T* data = nullptr;
    Shape shape;

    Index numel() const { return shape.numel(); }
    /// Fixed-rank view; throws ShapeError if the rank differs.
    template <int Rank>
    TensorView<T, Rank> view() const {
        return TensorView<T, Rank>(data, detail::extents_of<Rank>(shape, "TensorRef::view"));
    }
    operator TensorRef<const std::remove_const_t<T>>() const
        requires(!std::is_const_v<T>)
    {
        return {data, shape};
    }
    T* begin() const { return data; }
    T* end() const { return data + numel(); }
};

/// Owning contiguous tensor of any rank.
template <class T>
class Tensor {
public:
    Tensor() = default;
    /// Zero-filled tensor of the given shape.
    explicit Tensor(Shape shape) : shape_(std::move(shape)), data_(static_cast<std::size_t>(shape_.numel())) {}
    /// Tensor filled with `value`.
    Tensor(Shape shape, T value) : shape_(std::move(shape)), data_(static_cast<std::size_t>(shape_.numel()), value) {}
    /// Tensor taking over `data`; throws ShapeError if its size does not match.
    Tensor(Shape shape, std::vector<T> data) : shape_(std::move(shape)), data_(std::move(data)) {
        if (static_cast<Index>(data_.size()) != shape_.numel())
            fail<ShapeError>("Tensor: ", data_.size(), " values given for shape ", shape_, " (", shape_.numel(), ")");
    }
    /// Copy of the memory behind a reference.
    explicit Tensor(TensorRef<const T> r) : shape_(r.shape), data_(r.data, r.data + r.numel()) {}

    const Shape& shape() const { return shape_; }
    Index numel() const { return shape_.numel(); }
    T* data() { return data_.data(); }
    const T* data() const { return data_.data(); }
    std::vector<T>& values() { return data_; }
    const std::vector<T>& values() const { return data_; }
    T* begin() { return data_.data(); }
    T* end() { return data_.data() + data_.size(); }
    const T* begin() const { return data_.data(); }
    const T* end() const { return data_.data() + data_.size(); }
    T& operator[](Index i) { return data_[static_cast<std::size_t>(i)]; }
    const T& operator[](Index i) const { return data_[static_cast<std::size_t>(i)]; }

    TensorRef<T> ref() { return {data_.data(), shape_}; }
    TensorRef<const T> ref() const { return {data_.data(), shape_}; }
    operator TensorRef<const T>() const { return ref(); }

    /// Fixed-rank view; throws ShapeError if the rank differs.
    template <int Rank>
    TensorView<T, Rank> view() {
        return ref().template view<Rank>();
    }
    template <int Rank>
    TensorView<const T, Rank> view() const {
        return ref().template view<Rank>();
    }
    /// Reinterprets the same elements under another shape of equal size.
    void reshape(Shape s) {
        if (s.numel() != numel()) fail<ShapeError>("Tensor::reshape: ", shape_, " cannot become ", s);
        shape_ = std::move(s);
    }

private:
    Shape shape_;
    std::vector<T> data_;
};

}  // namespace spade
