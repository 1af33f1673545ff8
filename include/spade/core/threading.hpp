// One thread setting for the whole library, and the threads spade's kernels run
// on. The count is OpenMP's (set per calling thread; it defaults to the
// machine's cores), but the threads are spade's own: a pool of workers that wait
// spinning for half a millisecond after each loop (unless OMP_WAIT_POLICY is
// passive), so that a loop starts and ends with one cache line passed each way
// (0.6 us on the 2-core Zen 5 cloud machine, where an OpenMP parallel region took
// 3-4 us; a pruned network runs 50-180 loops per forward). Eigen's products run
// on one thread each (spade splits them).
#pragma once

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

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

/// Sets the thread count for spade kernels (n < 1 means all cores).
inline void set_num_threads(int n) {
    if (n < 1) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#if defined(_OPENMP)
    omp_set_num_threads(n);
#endif
}

/// While alive, spade kernels called from this thread use `n` threads (n < 1: leave the count as it is); the count before is restored at the end.
class ThreadCountScope {
public:
    explicit ThreadCountScope(int n) {
#if defined(_OPENMP)
        if (n > 0 && n != (before_ = omp_get_max_threads())) omp_set_num_threads(n);
        else before_ = 0;
#else
        (void)n;
#endif
    }
    ~ThreadCountScope() {
#if defined(_OPENMP)
        if (before_ > 0) omp_set_num_threads(before_);
#endif
    }
    ThreadCountScope(const ThreadCountScope&) = delete;
    ThreadCountScope& operator=(const ThreadCountScope&) = delete;

private:
    int before_ = 0;
};

namespace detail {

// The calling thread's index in the loop it is running a share of (0 outside loops).
inline thread_local int loop_thread = 0;
// Set while this thread runs a share of a loop (always on workers): loops inside run serially.
inline thread_local bool in_loop = false;

inline bool in_parallel() {
#if defined(_OPENMP)
    if (omp_in_parallel()) return true;
#endif
    return in_loop;
}

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// The workers behind parallel_for: created as loops first need them, woken by a
// counter they spin on (and, after spin_time without a loop, sleep on). The counter
// holds the loop's number and its thread count, so a worker that takes no part
// learns so without reading anything the next loop may be writing. One loop runs at
// a time; a thread that finds the pool taken runs its loop alone. The pool is never
// destroyed (a loop may run from another static object's destructor); its workers
// end with the process.
class Pool {
public:
    static Pool& get() {
        static Pool& pool = *new Pool;
        return pool;
    }

    // Runs body(i) for i in [0, n) on up to `threads` threads, this one included: contiguous
    // equal shares, or (dynamic) one item at a time to whoever is free. A thread done with its
    // share takes the items left at the end of another's, one at a time, so a core running
    // slower (a cloud vCPU whose core is busy with another guest) does not hold the loop up.
    // Rethrows the first exception a share threw. Returns false, running nothing, if another
    // thread holds the pool.
    template <class F>
    bool run(long n, int threads, F& body, bool dynamic) {
        std::unique_lock<std::mutex> lock(owner_, std::try_to_lock);
        if (!lock) return false;
        grow(std::min(threads, max_threads) - 1);
        call_ = [](const void* f, long i) { (*static_cast<F*>(const_cast<void*>(f)))(i); };
        body_ = std::addressof(body);
        n_ = n;
        threads_ = std::min(threads, static_cast<int>(workers_.size()) + 1);
        dynamic_ = dynamic;
        next_.store(0, std::memory_order_relaxed);
        if (!dynamic)  // published by the signal below
            for (int t = 0; t < threads_; ++t) shares_[t].set(n * t / threads_, n * (t + 1) / threads_);
        error_ = nullptr;
        pending_.store(threads_ - 1, std::memory_order_relaxed);
        // seq_cst, paired with the sleepers' count
        const unsigned loop = (signal_.load(std::memory_order_relaxed) >> 8) + 1;
        signal_.store(loop << 8 | static_cast<unsigned>(threads_));
        if (sleepers_.load() > 0) signal_.notify_all();
        {
            const Member member(0);
            share(0);
        }
        for (int spins = 0; pending_.load(std::memory_order_acquire) > 0; ++spins)
            spins < 4096 ? spin_pause() : std::this_thread::yield();
        if (error_) std::rethrow_exception(error_);
        return true;
    }

private:
    static constexpr int max_threads = 255;  // the thread count takes 8 bits of the signal
    Pool()
        : spin_time_([] {
              const char* p = std::getenv("OMP_WAIT_POLICY");
              const bool passive = p && (std::strcmp(p, "passive") == 0 || std::strcmp(p, "PASSIVE") == 0);
              return passive ? std::chrono::microseconds(0) : std::chrono::microseconds(500);
          }()) {}

    // marks this thread as running share `index` of a loop (loops inside run serially)
    struct Member {
        explicit Member(int index) { loop_thread = index, in_loop = true; }
        ~Member() { loop_thread = 0, in_loop = false; }
    };
    // at least `n` workers, as far as the system lets us start them
    void grow(int n) {
        while (static_cast<int>(workers_.size()) < n) {
            try {
                // the signal now, before this loop's: the worker must not miss it
                workers_.emplace_back([this, index = static_cast<int>(workers_.size()) + 1,
                                       seen = signal_.load()] { work(index, seen); });
            } catch (...) {
                return;  // fewer threads
            }
        }
    }
    // The items [lo, hi) of one thread's share not yet taken, in one word: its owner takes
    // them from the front (lo, a fetch_add), others from the back (hi, a compare-exchange),
    // so every item is taken once. Loops have fewer than 2^31 items (parallel_for's loops
    // are far smaller; larger ones run serially).
    struct alignas(64) Share {
        std::atomic<std::uint64_t> range{0};
        void set(long lo, long hi) {
            range.store(static_cast<std::uint64_t>(hi) << 32 | static_cast<std::uint64_t>(lo), std::memory_order_relaxed);
        }
        // Up to `want` items from the front, [first, end) (empty when none are left), and how
        // many were left after them. `want` is at most what was left at the last take, so lo
        // stays below 2^32 (hi only falls).
        struct Taken {
            long first, end, left;
        };
        Taken take_front(long want) {
            const std::uint64_t r = range.fetch_add(static_cast<std::uint64_t>(want), std::memory_order_relaxed);
            const long lo = static_cast<long>(r & 0xffffffffu), hi = static_cast<long>(r >> 32);
            const long end = std::min(lo + want, hi);
            return {lo, end, hi - std::max(lo, end)};
        }
        long take_back() {
            std::uint64_t r = range.load(std::memory_order_relaxed);
            for (;;) {
                const std::uint64_t lo = r & 0xffffffffu, hi = r >> 32;
                if (lo >= hi) return -1;
                if (range.compare_exchange_weak(r, (hi - 1) << 32 | lo, std::memory_order_relaxed))
                    return static_cast<long>(hi - 1);
            }
        }
    };
    void share(int t) noexcept {
        try {
            if (dynamic_) {
                for (long i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n_;) call_(body_, i);
            } else {
                // the owner's items in batches of a quarter of what is left (an eighth on
                // four threads, ...), down to one: each atomic take waits for the stores of the
                // items before it, and one per item took 4 % of pruned MobileNet-v2's samples
                const long batch = 2 * threads_;
                for (long want = std::max(1L, (n_ * (t + 1) / threads_ - n_ * t / threads_) / batch);;) {
                    const auto taken = shares_[t].take_front(want);
                    for (long i = taken.first; i < taken.end; ++i) call_(body_, i);
                    if (taken.left <= 0) break;
                    want = std::max(1L, taken.left / batch);
                }
                for (int k = 1; k < threads_; ++k)
                    for (long i; (i = shares_[(t + k) % threads_].take_back()) >= 0;) call_(body_, i);
            }
        } catch (...) {
            std::lock_guard<std::mutex> g(error_lock_);
            if (!error_) error_ = std::current_exception();
        }
    }
    [[noreturn]] void work(int index, unsigned seen) {
        const Member member(index);
#if defined(_OPENMP)
        omp_set_num_threads(1);
#endif
        for (;;) {
            auto since = std::chrono::steady_clock::now();
            for (int spins = 1; signal_.load(std::memory_order_acquire) == seen; ++spins) {
                spin_pause();
                if (spins % 64 == 0 && std::chrono::steady_clock::now() - since >= spin_time_) {
                    sleepers_.fetch_add(1);
                    signal_.wait(seen);
                    sleepers_.fetch_sub(1);
                    since = std::chrono::steady_clock::now();
                }
            }
            seen = signal_.load(std::memory_order_acquire);
            if (index >= static_cast<int>(seen & 0xff)) continue;  // not in this loop
            share(index);
            pending_.fetch_sub(1, std::memory_order_release);
        }
    }

    const std::chrono::microseconds spin_time_;
    std::mutex owner_;  // held by the thread whose loop runs
    std::vector<std::thread> workers_;
    // the loop (written by its owner before the signal moves on, read by its workers after)
    void (*call_)(const void*, long) = nullptr;
    const void* body_ = nullptr;
    long n_ = 0;
    int threads_ = 1;
    bool dynamic_ = false;
    Share shares_[max_threads];  // a static loop's shares
    std::exception_ptr error_;
    std::mutex error_lock_;
    alignas(64) std::atomic<long> next_{0};        // the next item of a dynamic loop
    alignas(64) std::atomic<unsigned> signal_{0};  // loop number << 8 | its thread count
    alignas(64) std::atomic<int> pending_{0};      // workers not done with the loop
    std::atomic<int> sleepers_{0};
};

// Runs body(i) for i in [0, n) on spade's threads (at most n) unless one thread is
// all there is or this one is inside a loop already; returns whether it did.
template <class F>
bool run_parallel(long n, F& body, bool dynamic) {
    const int threads = static_cast<int>(std::min<long>(num_threads(), n));
    return threads > 1 && n <= std::numeric_limits<std::int32_t>::max() && !in_parallel() &&
           Pool::get().run(n, threads, body, dynamic);
}

}  // namespace detail

/// Runs `body(i)` for i in [0, n), split across threads when the work is large enough
/// (each thread a contiguous share; a thread done early takes items from the end of
/// another's, so which thread runs an item is not fixed). `work_per_item` is a rough
/// cost estimate (e.g. elements touched) used to keep tiny loops on one thread. Runs on the calling thread
/// alone inside another loop or while another thread's loop holds the pool. An
/// exception thrown by `body` is rethrown on the calling thread (the first one).
template <class F>
void parallel_for(long n, F&& body, long work_per_item = 1 << 16) {
    if (n > 1 && n * work_per_item >= (1 << 15) && detail::run_parallel(n, body, false)) return;
    for (long i = 0; i < n; ++i) body(i);
}

/// Scratch memory for a parallel_for body: one slice of `per_thread` elements for
/// each thread that may run the body, taken up front (outside the parallel region, so
/// a failed allocation throws where the caller can catch it). slice() is the calling
/// thread's, set to `init` on that thread's first call (left as it is with
/// std::nullopt, for a body that writes what it reads first): the thread that uses a
/// slice writes it first, in parallel with the others, where setting every slice up
/// front on the calling thread took 1.4 % of the samples of pruned MobileNet-v2 at 75 %
/// while the other core waited. Each slice starts a 4 KiB page (so kernels may lay out
/// aligned vectors in it) and, with several threads, owns its pages whole (for element
/// sizes that divide 4096 bytes): slices one cache line apart had the cores'
/// prefetchers pull each other's lines, and a 1440-channel depthwise conv at 14 x 14
/// (each channel's planes written into a 1 KiB slice) ran 1.3x faster on two threads
/// than on one instead of 1.9x (Intel, AVX-512). Inside an enclosing parallel region,
/// parallel_for runs serially, and so one slice is enough.
///
/// Slices come from arenas of the constructing thread, one per slice index, kept from
/// one scratch to the next: the slice of loop thread t lies in memory only thread t
/// wrote, call after call. Allocated anew each time, one kernel's slice of the second
/// thread lay where the first had written another kernel's, and the second core took
/// those lines from the first before writing them: with the arenas MobileNet-v2 ran
/// 4.3 % faster pruned by three quarters, 1.6 % by half and 3.4 % dense (two threads,
/// the Intel AMX machine, paired runs). Scratches nest: one made while another lives
/// takes the room above it, so they must be locals, destroyed in the reverse order of
/// their making on their thread. One that does not fit above a scratch in use gets
/// memory of its own, and the arena grows to hold both the next time it is free. An
/// arena keeps the most its thread's scratches have held at once, until
/// release_scratch() on that thread or the thread's end; scratches made inside a
/// parallel region (one slice) live in the pool workers' arenas, which last as long as
/// the process.
template <class T>
class ThreadScratch {
public:
    explicit ThreadScratch(std::size_t per_thread, std::optional<T> init = T(0))
        : slices_(nested() ? 1 : static_cast<std::size_t>(num_threads())), size_(padded(per_thread)),
          used_(per_thread), init_(init), ready_(slices_, 0), arenas_(arenas_of_thread()) {
        starts_.reserve(slices_);  // nothing below throws once an arena's top has moved
        bool fits = arenas_ != nullptr;
        if (fits) {
            if (arenas_->size() < slices_) arenas_->resize(slices_);
            for (std::size_t t = 0; t < slices_; ++t) {
                const Arena& a = (*arenas_)[t];
                if (a.top > 0 && a.top + size_ > a.size) fits = false;  // no moving a scratch in use
            }
        }
        if (!fits) {
            own_.reset(new T[slices_ * size_ + page]);
            for (std::size_t t = 0; t < slices_; ++t) starts_.push_back(page_start(own_.get()) + t * size_);
            if (arenas_)  // for the next time they are free
                for (std::size_t t = 0; t < slices_; ++t) {
                    Arena& a = (*arenas_)[t];
                    a.want = std::max(a.want, a.top + size_);
                }
            arenas_ = nullptr;
            return;
        }
        for (std::size_t t = 0; t < slices_; ++t) {
            Arena& a = (*arenas_)[t];
            const std::size_t need = std::max(a.want, a.top + size_);
            if (a.top == 0 && need > a.size) {  // free: grown to the most asked of it at once
                a.memory.reset(new T[need + page]);  // as it was, should new throw
                a.base = page_start(a.memory.get()), a.size = a.want = need;
            }
        }
        for (std::size_t t = 0; t < slices_; ++t) {
            Arena& a = (*arenas_)[t];
            starts_.push_back(a.base + a.top);
            a.top += size_;
        }
    }
    ~ThreadScratch() {
        if (!arenas_) return;
        for (std::size_t t = 0; t < slices_; ++t) {
            Arena& a = (*arenas_)[t];
            assert(a.base + a.top == starts_[t] + size_ && "ThreadScratch: not destroyed in reverse order");
            a.top -= size_;
        }
    }
    ThreadScratch(const ThreadScratch&) = delete;
    ThreadScratch& operator=(const ThreadScratch&) = delete;

    T* slice() {
        const std::size_t t = slices_ > 1 ? static_cast<std::size_t>(detail::loop_thread) : 0;
        T* s = starts_[t];
        if (init_ && !ready_[t]) std::fill(s, s + used_, *init_), ready_[t] = 1;
        return s;
    }

    /// Frees the calling thread's arenas of T where no scratch of it lives; returns the
    /// bytes freed.
    static std::size_t release() {
        std::size_t freed = 0;
        if (auto* arenas = arenas_of_thread())
            for (Arena& a : *arenas)
                if (a.top == 0) freed += a.memory ? (a.size + page) * sizeof(T) : 0, a = Arena{};
        return freed;
    }
    /// Bytes the calling thread's arenas of T hold.
    static std::size_t held() {
        std::size_t bytes = 0;
        if (const auto* arenas = arenas_of_thread())
            for (const Arena& a : *arenas)
                if (a.memory) bytes += (a.size + page) * sizeof(T);
        return bytes;
    }

private:
    struct Arena {
        std::unique_ptr<T[]> memory;
        T* base = nullptr;     // memory's first page
        std::size_t size = 0;  // elements from base
        std::size_t top = 0;   // elements in use from base
        std::size_t want = 0;  // the most asked of it at once
    };
    // The calling thread's arenas, one per slice index; null once they are gone at the
    // thread's end (a kernel run from a later destructor takes memory of its own)
    static std::vector<Arena>* arenas_of_thread() {
        thread_local bool gone = false;  // trivially destructible: still readable then
        struct Holder {
            std::vector<Arena> arenas;
            bool* gone;
            ~Holder() { *gone = true; }
        };
        if (gone) return nullptr;
        thread_local Holder holder{{}, &gone};
        return &holder.arenas;
    }
    static constexpr std::size_t page = 4096 / sizeof(T) > 0 ? 4096 / sizeof(T) : 1;  // elements per page
    static std::size_t padded(std::size_t n) { return std::max<std::size_t>(1, (n + page - 1) / page) * page; }
    static T* page_start(T* p) { return p + (page - reinterpret_cast<std::uintptr_t>(p) % 4096 / sizeof(T)) % page; }
    static bool nested() { return detail::in_parallel() || num_threads() == 1; }
    std::size_t slices_, size_, used_;  // size_: elements a slice takes, whole pages
    std::optional<T> init_;
    std::vector<char> ready_;       // slice t set to init_ (written by its thread only)
    std::vector<Arena>* arenas_;    // null with memory of its own
    std::vector<T*> starts_;        // slice t's first element
    std::unique_ptr<T[]> own_;      // the slices, where an arena in use had no room
};

/// Frees the calling thread's scratch arenas of float and double (see ThreadScratch)
/// where no scratch lives; returns the bytes freed.
inline std::size_t release_scratch() {
    return ThreadScratch<float>::release() + ThreadScratch<double>::release();
}

/// Runs `body(i)` for i in [0, n) with items handed out one at a time, for a few
/// items of very different cost (whole tensors); put the largest first. An
/// exception thrown by `body` is rethrown on the calling thread (the first one).
template <class F>
void parallel_for_dynamic(long n, F&& body) {
    if (n > 1 && detail::run_parallel(n, body, true)) return;
    for (long i = 0; i < n; ++i) body(i);
}

}  // namespace spade
