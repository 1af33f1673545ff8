// TensorView: a non-owning, strided view of fixed rank over memory the caller
// owns, with zero-copy Eigen access to 2-D slices (like Eigen::Map).
#pragma once

#include <array>
#include <cstddef>
#include <type_traits>

#include <Eigen/Core>

#include "spade/tensor/shape.hpp"

namespace spade {

/// Non-owning view of `Rank` axes over someone else's memory. `T` may be const.
template <class T, int Rank>
class TensorView {
    static_assert(Rank >= 1, "TensorView needs at least one axis");

public:
    using value_type = std::remove_const_t<T>;
    using Extents = std::array<Index, Rank>;

    TensorView() = default;

    /// Contiguous row-major view of `extents` starting at `data`.
    TensorView(T* data, const Extents& extents) : data_(data), extents_(extents) {
        Index s = 1;
        for (int i = Rank - 1; i >= 0; --i) {
            if (extents_[i] < 0) fail<ShapeError>("TensorView: negative extent ", extents_[i], " on axis ", i);
            strides_[i] = s;
            s *= extents_[i];
        }
    }
    /// Strided view; strides are in elements.
    TensorView(T* data, const Extents& extents, const Extents& strides)
        : data_(data), extents_(extents), strides_(strides) {
        for (int i = 0; i < Rank; ++i)
            if (extents_[i] < 0) fail<ShapeError>("TensorView: negative extent ", extents_[i], " on axis ", i);
    }
    /// Contiguous view over a container with `.data()` and `.size()` (std::vector, Eigen matrix);
    /// throws ShapeError if the container holds fewer elements than the extents need.
    template <class Container>
        requires requires(Container& c) { c.data(); c.size(); }
    TensorView(Container& c, const Extents& extents) : TensorView(c.data(), extents) {
        if (static_cast<Index>(c.size()) < size())
            fail<ShapeError>("TensorView: container holds ", c.size(), " elements but shape ", shape(),
                             " needs ", size());
    }

    /// Const view of the same memory.
    operator TensorView<const value_type, Rank>() const
        requires(!std::is_const_v<T>)
    {
        return TensorView<const value_type, Rank>(data_, extents_, strides_);
    }

    T* data() const { return data_; }
    Index extent(int i) const { return extents_[i]; }
    Index stride(int i) const { return strides_[i]; }
    const Extents& extents() const { return extents_; }
    const Extents& strides() const { return strides_; }
    /// Extents as a Shape.
    Shape shape() const { return Shape(std::vector<Index>(extents_.begin(), extents_.end())); }
    /// Number of elements viewed.
    Index size() const {
        Index n = 1;
        for (Index e : extents_) n *= e;
        return n;
    }
    /// True when the view is densely packed row-major.
    bool contiguous() const {
        Index s = 1;
        for (int i = Rank - 1; i >= 0; --i) {
            if (extents_[i] != 1 && strides_[i] != s) return false;
            s *= extents_[i];
        }
        return true;
    }

    /// Unchecked element access.
    template <class... I>
        requires(sizeof...(I) == Rank)
    T& operator()(I... idx) const {
        const std::array<Index, Rank> ix{static_cast<Index>(idx)...};
        Index off = 0;
        for (int i = 0; i < Rank; ++i) off += ix[i] * strides_[i];
        return data_[off];
    }
    /// Bounds-checked element access; throws ShapeError naming index and shape.
    template <class... I>
        requires(sizeof...(I) == Rank)
    T& at(I... idx) const {
        const std::array<Index, Rank> ix{static_cast<Index>(idx)...};
        for (int i = 0; i < Rank; ++i)
            if (ix[i] < 0 || ix[i] >= extents_[i])
                fail<ShapeError>("TensorView::at: index ", ix[i], " on axis ", i, " is outside shape ", shape());
        return (*this)(idx...);
    }

    /// The sub-view with axis 0 fixed at `i` (bounds-checked).
    TensorView<T, Rank - 1> operator[](Index i) const
        requires(Rank > 1)
    {
        if (i < 0 || i >= extents_[0]) fail<ShapeError>("TensorView: index ", i, " outside axis 0 of shape ", shape());
        typename TensorView<T, Rank - 1>::Extents e{}, s{};
        for (int k = 1; k < Rank; ++k) e[k - 1] = extents_[k], s[k - 1] = strides_[k];
        return TensorView<T, Rank - 1>(data_ + i * strides_[0], e, s);
    }

    /// Zero-copy Eigen map of a 2-D view (row-major, any strides).
    auto matrix() const
        requires(Rank == 2)
    {
        using M = std::conditional_t<std::is_const_v<T>,
                                     const Eigen::Matrix<value_type, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                                     Eigen::Matrix<value_type, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
        using S = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
        return Eigen::Map<M, Eigen::Unaligned, S>(data_, extents_[0], extents_[1], S(strides_[0], strides_[1]));
    }
    /// Zero-copy Eigen map of the 2-D slice at `i` along axis 0 of a 3-D view.
    auto matrix(Index i) const
        requires(Rank == 3)
    {
        return (*this)[i].matrix();
    }

private:
    T* data_ = nullptr;
    Extents extents_{};
    Extents strides_{};
};

}  // namespace spade
