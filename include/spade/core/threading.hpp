// One thread setting for the whole library. spade's kernels and Eigen's GEMM
// share OpenMP's pool; the count defaults to the machine's cores.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace spade {

/// Number of threads spade's kernels and GEMMs use.
inline int num_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/// Sets the thread count for spade kernels and Eigen products (n < 1 means all cores).
inline void set_num_threads(int n) {
    if (n < 1) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#if defined(_OPENMP)
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
}

/// Runs `body(i)` for i in [0, n), split across threads when the work is large enough.
/// `work_per_item` is a rough cost estimate (e.g. elements touched) used to avoid
/// spawning threads for tiny loops.
template <class F>
void parallel_for(long n, F&& body, long work_per_item = 1 << 16) {
#if defined(_OPENMP)
    if (n > 1 && n * work_per_item >= (1 << 15) && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(static)
        for (long i = 0; i < n; ++i) body(i);
        return;
    }
#else
    (void)work_per_item;
#endif
    for (long i = 0; i < n; ++i) body(i);
}

/// Scratch memory for a parallel_for body: one slice of `per_thread` elements (set
/// to `init`) for each thread that may run the body, allocated up front (outside
/// the parallel region, so a failed allocation throws where the caller can catch it).
/// slice() is the calling thread's. Slices start on separate cache lines (for element
/// sizes that divide 64 bytes) with a spare line between them, so two threads writing
/// their own small slices (a depthwise channel's planes at 7 x 7, once per channel)
/// never write the same line. Inside an enclosing parallel region, parallel_for runs
/// serially, and so one slice is enough.
template <class T>
class ThreadScratch {
public:
    explicit ThreadScratch(std::size_t per_thread, T init = T(0))
        : per_(padded(per_thread)), slices_(nested() ? 1 : static_cast<std::size_t>(num_threads())),
          data_(slices_ * per_ + line, init),
          first_(data_.data() + (line - reinterpret_cast<std::uintptr_t>(data_.data()) % 64 / sizeof(T)) % line) {}
    ThreadScratch(const ThreadScratch&) = delete;  // first_ points into data_
    ThreadScratch& operator=(const ThreadScratch&) = delete;
    T* slice() {
#if defined(_OPENMP)
        if (slices_ > 1) return first_ + static_cast<std::size_t>(omp_get_thread_num()) * per_;
#endif
        return first_;
    }

private:
    static constexpr std::size_t line = 64 / sizeof(T) > 0 ? 64 / sizeof(T) : 1;  // elements per cache line
    // whole cache lines, plus one that no thread writes
    static std::size_t padded(std::size_t n) { return (n + line - 1) / line * line + line; }
    static bool nested() {
#if defined(_OPENMP)
        return omp_in_parallel();
#else
        return true;
#endif
    }
    std::size_t per_, slices_;
    std::vector<T> data_;
    T* first_;  // the first element of data_ on a cache line
};

/// Runs `body(i)` for i in [0, n) with items handed out one at a time, for a few
/// items of very different cost (whole tensors); put the largest first. An
/// exception thrown by `body` is rethrown on the calling thread (the first one).
template <class F>
void parallel_for_dynamic(long n, F&& body) {
#if defined(_OPENMP)
    if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel()) {
        std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
        for (long i = 0; i < n; ++i) {
            try {
                body(i);
            } catch (...) {
#pragma omp critical(spade_parallel_error)
                if (!error) error = std::current_exception();
            }
        }
        if (error) std::rethrow_exception(error);
        return;
    }
#endif
    for (long i = 0; i < n; ++i) body(i);
}

}  // namespace spade
