// Pointwise loops shared by activations, elementwise arithmetic, Scale and
// copies: the work is split into fixed chunks of the flat index range so that
// threads get equal shares whatever the tensor's shape, and each chunk runs a
// plain contiguous loop the compiler can vectorize (the functor is inlined).
#pragma once

#include <algorithm>

#include "spade/core/threading.hpp"
#include "spade/tensor/shape.hpp"

// Marks an inner loop as free of loop-carried dependences, so that it is vectorized
// at -O2 too (GCC's cheap cost model there skips loops needing alias checks).
#if defined(_OPENMP)
#define SPADE_POINTWISE_SIMD _Pragma("omp simd")
#else
#define SPADE_POINTWISE_SIMD
#endif

namespace spade::kernels {

/// Elements per chunk: big enough to amortize thread hand-off, small enough to split a feature map.
inline constexpr Index pointwise_chunk = Index{1} << 14;

/// Calls `body(begin, end)` on consecutive chunks covering [0, n), in parallel when n is large.
template <class F>
void for_chunks(Index n, F&& body) {
    if (n <= 0) return;
    const Index chunks = (n + pointwise_chunk - 1) / pointwise_chunk;
    parallel_for(
        chunks,
        [&](long k) {
            const Index b = static_cast<Index>(k) * pointwise_chunk;
            body(b, std::min(n, b + pointwise_chunk));
        },
        pointwise_chunk);
}

/// y[i] = f(x[i]) for i in [0, n).
template <class T, class F>
void unary(const T* x, T* y, Index n, F f) {
    for_chunks(n, [&](Index b, Index e) {
        SPADE_POINTWISE_SIMD
        for (Index i = b; i < e; ++i) y[i] = f(x[i]);
    });
}

/// y[i] = f(a[i], b[i]) for i in [0, n).
template <class T, class F>
void binary(const T* a, const T* b, T* y, Index n, F f) {
    for_chunks(n, [&](Index lo, Index hi) {
        SPADE_POINTWISE_SIMD
        for (Index i = lo; i < hi; ++i) y[i] = f(a[i], b[i]);
    });
}

/// y[i] = f(x[i], v[(i / plane) % count]) for i in [0, n): one value per plane of
/// `plane` elements, the values repeating every `count` planes. This is a
/// per-channel weight over NCHW (plane = H*W, count = C) or [N, F] (plane = 1),
/// and an [N, C, 1, 1] operand broadcast over [N, C, H, W] (count = N*C, or C when
/// the operand's batch is 1). Divisions happen once per chunk, not per element.
template <class T, class F>
void broadcast_planes(const T* x, const T* v, T* y, Index n, Index plane, Index count, F f) {
    if (plane == 1) {
        // each row of `count` elements meets the whole of v: walk rows so the inner loop is contiguous in v too
        for_chunks(n, [&](Index b, Index e) {
            Index i = b, c = b % count;
            while (i < e) {
                const Index len = std::min(count - c, e - i);
                const T* xs = x + i;
                const T* vs = v + c;
                T* ys = y + i;
                SPADE_POINTWISE_SIMD
                for (Index k = 0; k < len; ++k) ys[k] = f(xs[k], vs[k]);
                i += len, c = 0;
            }
        });
        return;
    }
    for_chunks(n, [&](Index b, Index e) {
        Index i = b, p = b / plane, off = b % plane, c = p % count;
        while (i < e) {
            const Index len = std::min(plane - off, e - i);
            const T s = v[c];
            const T* xs = x + i;
            T* ys = y + i;
            SPADE_POINTWISE_SIMD
            for (Index k = 0; k < len; ++k) ys[k] = f(xs[k], s);
            i += len, off = 0;
            if (++c == count) c = 0;
        }
    });
}

/// y = f(x, w) over a tensor of `shape`, with w either one value (`count` 1) or one
/// value per channel along axis 1 (`count` = shape[1]): learnable scales and PReLU slopes.
template <class T, class F>
void channelwise(const T* x, const T* w, Index count, T* y, const Shape& shape, F f) {
    const Index n = shape.numel();
    if (count == 1) {
        const T s = w[0];
        unary(x, y, n, [f, s](T v) { return f(v, s); });
        return;
    }
    Index plane = 1;
    for (int d = 2; d < shape.rank(); ++d) plane *= shape[d];
    broadcast_planes(x, w, y, n, plane, count, f);
}

}  // namespace spade::kernels
