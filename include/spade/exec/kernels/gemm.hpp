// GEMM on row-major raw buffers through Eigen maps: the one matrix product
// every dense layer (conv via im2col, 1x1 conv, linear) goes through. Each Eigen
// product runs on the calling thread alone; the *_parallel forms split a
// product into bands over spade's threads.
#pragma once

#include <algorithm>

#include <Eigen/Core>

#include "spade/core/threading.hpp"
#include "spade/tensor/shape.hpp"

namespace spade::kernels {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowMap = Eigen::Map<RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstRowMap = Eigen::Map<const RowMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

/// C[m x n] (=|+=) A[m x k] * B[k x n], all row-major with leading dimensions
/// lda, ldb, ldc, on the calling thread.
template <class T>
void gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc, bool accumulate = false) {
    const ThreadCountScope one(1);  // Eigen asks OpenMP's count; its threads would fight spade's
    ConstRowMap<T> A(a, m, k, Eigen::OuterStride<>(lda));
    ConstRowMap<T> B(b, k, n, Eigen::OuterStride<>(ldb));
    RowMap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
    if (accumulate) C.noalias() += A * B;
    else C.noalias() = A * B;
}

/// Does nothing: the default epilogue of gemm_parallel.
struct NoEpilogue {
    void operator()(Index, Index, Index, Index) const {}
};

/// C = A * B as gemm(), split over spade's threads into independent single-threaded
/// products: bands of rows of A when each thread gets at least 16, else bands of
/// columns (at least 64 each), else one product on the calling thread. Independent
/// bands need no synchronisation inside the product, which measured faster than
/// Eigen's own split. Rows come first because in a network A is the weights, read cold from
/// memory, and B the activations the previous layer just wrote: row bands read each
/// weight once, column bands once per thread (pruned ResNet-50's 1x1 convs ran 1.3x
/// faster on rows).
/// `epilogue(i0, i1, j0, j1)` runs on each band of C (rows [i0, i1), columns [j0, j1))
/// right after its product, on the same thread, while the band is still in cache.
template <class T, class Epilogue = NoEpilogue>
void gemm_parallel(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
                   Epilogue&& epilogue = {}) {
    const Index threads = num_threads();
    if (threads > 1 && m / threads >= 16) {
        const Index band = (m + threads - 1) / threads;
        parallel_for(threads, [&](long t) {
            const Index i0 = t * band, i1 = std::min(m, i0 + band);
            if (i1 <= i0) return;
            gemm(i1 - i0, n, k, a + i0 * lda, lda, b, ldb, c + i0 * ldc, ldc);
            epilogue(i0, i1, 0, n);
        }, 1 << 20);
    } else if (threads > 1 && n / threads >= 64) {
        const Index band = (n + threads - 1) / threads;
        parallel_for(threads, [&](long t) {
            const Index j0 = t * band, j1 = std::min(n, j0 + band);
            if (j1 <= j0) return;
            gemm(m, j1 - j0, k, a, lda, b + j0, ldb, c + j0, ldc);
            epilogue(0, m, j0, j1);
        }, 1 << 20);
    } else {
        gemm(m, n, k, a, lda, b, ldb, c, ldc);
        epilogue(0, m, 0, n);
    }
}

/// C[m x n] (=|+=) A[m x k] * B[n x k]^T (B row-major as stored, e.g. a Linear weight), on the calling thread.
template <class T>
void gemm_bt(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
             bool accumulate = false) {
    const ThreadCountScope one(1);
    ConstRowMap<T> A(a, m, k, Eigen::OuterStride<>(lda));
    ConstRowMap<T> B(b, n, k, Eigen::OuterStride<>(ldb));
    RowMap<T> C(c, m, n, Eigen::OuterStride<>(ldc));
    if (accumulate) C.noalias() += A * B.transpose();
    else C.noalias() = A * B.transpose();
}

/// C[m x n] = A[k x m]^T * B[k x n] (row-major, leading dimensions lda, ldb, ldc), in
/// bands of columns over spade's threads (at least 64 columns each).
template <class T>
void gemm_at_parallel(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc) {
    const Index bands = std::max<Index>(1, std::min<Index>(num_threads(), n / 64));
    const Index band = (n + bands - 1) / bands;
    parallel_for(bands, [&](long t) {
        const Index j0 = t * band, j1 = std::min(n, j0 + band);
        if (j1 <= j0) return;
        const ThreadCountScope one(1);
        ConstRowMap<T> A(a, k, m, Eigen::OuterStride<>(lda));
        ConstRowMap<T> B(b + j0, k, j1 - j0, Eigen::OuterStride<>(ldb));
        RowMap<T> C(c + j0, m, j1 - j0, Eigen::OuterStride<>(ldc));
        C.noalias() = A.transpose() * B;
    }, 1 << 20);
}

}  // namespace spade::kernels
