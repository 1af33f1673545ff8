// GEMM on row-major raw buffers through Eigen maps: the one matrix product
// every dense layer (conv via im2col, 1x1 conv, linear) goes through.
#pragma once

#include <Eigen/Core>

#include "spade/tensor/shape.hpp"

namespace spade::kernels {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstRowMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// C[m x n] (=|+=) A[m x k] * B[k x n], all row-major with leading dimensions
/// lda, ldb, ldc. Eigen splits large products over spade's threads.
template <class T>
void gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc, bool accumulate = false) {
    ConstRowMap<T> A(a, m, k, Eigen::OuterStride<>(lda));
    ConstRowMap<T> B(b, k, n, Eigen::OuterStride<>(ldb));
    RowMap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
    if (accumulate) C.noalias() += A * B;
    else C.noalias() = A * B;
}

/// C[m x n] (=|+=) A[m x k] * B[n x k]^T (B row-major as stored, e.g. a Linear weight).
template <class T>
void gemm_bt(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
             bool accumulate = false) {
    ConstRowMap<T> A(a, m, k, Eigen::OuterStride<>(lda));
    ConstRowMap<T> B(b, n, k, Eigen::OuterStride<>(ldb));
    RowMap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
    if (accumulate) C.noalias() += A * B.transpose();
    else C.noalias() = A * B.transpose();
}

}  // namespace spade::kernels
