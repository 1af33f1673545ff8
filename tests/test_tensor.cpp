#include "fixtures.hpp"

#include <Eigen/Dense>

#include <atomic>
#include <chrono>
#include <thread>

using namespace spade;

TEST_CASE("TensorView views caller memory with strides and Eigen maps", "[tensor]") {
    std::vector<float> buf(2 * 3 * 4);
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
    TensorView<float, 3> v(buf, {2, 3, 4});
    CHECK(v.contiguous());
    CHECK(v(1, 2, 3) == 23.0f);
    CHECK(v[1](0, 1) == 13.0f);
    // a 2-D slice maps to Eigen without copying: writes land in the vector
    auto m = v.matrix(1);
    CHECK(m.rows() == 3);
    CHECK(m.cols() == 4);
    CHECK(m(2, 1) == 21.0f);
    m(0, 0) = -1.0f;
    CHECK(buf[12] == -1.0f);
    // a transposed (strided) view of the same memory
    TensorView<float, 2> t(buf.data(), {4, 3}, {1, 4});
    CHECK_FALSE(t.contiguous());
    CHECK(t(3, 2) == 11.0f);
    CHECK(t.matrix()(3, 2) == 11.0f);
    // Eigen matrix as backing store
    Eigen::MatrixXd e = Eigen::MatrixXd::Zero(3, 2);
    TensorView<double, 2> ev(e, {2, 3});  // column-major storage viewed row-major: element (1,0) is e(0,1)
    ev(1, 0) = 5.0;
    CHECK(e(0, 1) == 5.0);
    TensorView<const float, 3> cv = v;
    CHECK(cv(0, 0, 1) == 1.0f);
}

TEST_CASE("TensorView and Tensor report shape errors with the shapes", "[tensor]") {
    std::vector<float> small(5);
    CHECK_THROWS_WITH((TensorView<float, 2>(small, {2, 3})), Catch::Contains("5") && Catch::Contains("[2, 3]"));
    std::vector<float> buf(6);
    TensorView<float, 2> v(buf, {2, 3});
    CHECK_THROWS_AS(v.at(2, 0), ShapeError);
    CHECK_THROWS_WITH(v.at(0, 3), Catch::Contains("[2, 3]"));
    CHECK_THROWS_AS(v[2], ShapeError);
    CHECK_THROWS_AS(Tensor<float>(Shape{2, 2}, std::vector<float>(3)), ShapeError);
    Tensor<float> t(Shape{2, 3});
    CHECK_THROWS_AS(t.view<4>(), ShapeError);
    CHECK_THROWS_AS(t.reshape({4, 2}), ShapeError);
    CHECK_THROWS_AS(Shape({2, -1}), ShapeError);
    CHECK_THROWS_AS(Shape({2, 3})[2], ShapeError);
    CHECK(Shape({2, 3})[-1] == 3);
    t.reshape({3, 2});
    CHECK(t.shape() == Shape{3, 2});
}

TEST_CASE("ThreadScratch gives each thread its own pages, set to the initial value", "[tensor]") {
    const int before = num_threads();
    set_num_threads(std::max(2, before));  // two threads even on one core (one without OpenMP)
    const int threads = num_threads();
    for (std::size_t per : {std::size_t(1), std::size_t(15), std::size_t(148), std::size_t(1000)}) {
        ThreadScratch<float> scratch(per, -1.5f);
        // the slice each loop thread index gets (which thread runs an item is not fixed: look at
        // every index in turn from here)
        std::vector<float*> slice_of(static_cast<std::size_t>(threads));
        for (int t = 0; t < threads; ++t) {
            detail::loop_thread = t;
            slice_of[static_cast<std::size_t>(t)] = scratch.slice();
        }
        detail::loop_thread = 0;
        for (int t = 0; t < threads; ++t) {
            INFO("per thread " << per << ", thread " << t);
            const float* s = slice_of[static_cast<std::size_t>(t)];
            CHECK(std::all_of(s, s + per, [](float v) { return v == -1.5f; }));
            const auto begin = reinterpret_cast<std::uintptr_t>(s);
            CHECK(begin % 4096 == 0);  // starts a page
            // no other slice reaches into this one's pages
            for (int u = 0; u < threads; ++u) {
                const auto other = reinterpret_cast<std::uintptr_t>(slice_of[static_cast<std::size_t>(u)]);
                if (u != t) CHECK((other >= (begin + per * sizeof(float) + 4095) / 4096 * 4096 || other + per * sizeof(float) <= begin));
            }
        }
        // inside a loop no two threads share a slice: each item fills its slice with its own index,
        // lets the other threads run, and finds it still there
        std::vector<int> kept(static_cast<std::size_t>(16 * threads), 0);
        parallel_for(
            16 * threads,
            [&](long i) {
                float* s = scratch.slice();
                std::fill(s, s + per, float(i));
                for (int k = 0; k < 20; ++k) std::this_thread::yield();
                kept[static_cast<std::size_t>(i)] = std::all_of(s, s + per, [&](float v) { return v == float(i); });
            },
            1 << 20);
        CHECK(std::count(kept.begin(), kept.end(), 1) == 16 * threads);
    }
    set_num_threads(before);
}

TEST_CASE("ThreadScratch reuses its thread's arenas, nests, and releases them", "[tensor]") {
    const int before = num_threads();
    set_num_threads(std::max(2, before));
    const int threads = num_threads();
    using S = ThreadScratch<float>;
    S::release();
    constexpr std::size_t page = 4096 / sizeof(float);
    auto slices = [&](S& s) {
        std::vector<float*> of(static_cast<std::size_t>(threads));
        for (int t = 0; t < threads; ++t) detail::loop_thread = t, of[static_cast<std::size_t>(t)] = s.slice();
        detail::loop_thread = 0;
        return of;
    };
    // [a, a + na) and [b, b + nb) do not meet
    auto apart = [](const float* a, std::size_t na, const float* b, std::size_t nb) { return a + na <= b || b + nb <= a; };
    // round 0: the arenas hold a alone, so b, made while a lives, gets memory of its own; from
    // round 1 on they have grown to hold both, b right above a, and round 2 takes round 1's slices
    std::vector<std::vector<float*>> of_a, of_b;
    for (int round = 0; round < 3; ++round) {
        S a(5000, std::nullopt);  // 5 pages
        of_a.push_back(slices(a));
        CHECK(S::release() == 0);  // in use: kept
        S b(3000, 2.5f);
        of_b.push_back(slices(b));
        for (int t = 0; t < threads; ++t) {
            const float* s = of_b.back()[std::size_t(t)];
            CHECK(std::all_of(s, s + 3000, [](float v) { return v == 2.5f; }));
            for (int u = 0; u < threads; ++u) CHECK(apart(of_a.back()[std::size_t(u)], 5000, s, 3000));
            if (round > 0) CHECK(s == of_a.back()[std::size_t(t)] + 5 * page);
        }
    }
    CHECK(of_a[2] == of_a[1]);
    CHECK(of_b[2] == of_b[1]);
    CHECK(S::held() >= std::size_t(threads) * 8 * page * sizeof(float));
    // a scratch too large to allocate throws and leaves the arenas as they were
    CHECK_THROWS_AS(S(std::size_t(1) << 60, std::nullopt), std::bad_alloc);
    {
        S a(5000, std::nullopt);
        CHECK(slices(a) == of_a[1]);
        CHECK_THROWS_AS(S(std::size_t(1) << 60, std::nullopt), std::bad_alloc);  // above a scratch in use
        S b(3000, std::nullopt);
        CHECK(slices(b) == of_b[1]);
    }
    CHECK(S::release() >= std::size_t(threads) * 8 * page * sizeof(float));
    CHECK(S::held() == 0);
    set_num_threads(before);
}

TEST_CASE("parallel_for runs every item once and hands exceptions back", "[threading]") {
    const int before = num_threads();
    set_num_threads(std::max(2, before));
    for (long n : {2L, 3L, 7L, 64L, 1001L}) {
        std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
        std::vector<int> thread_of(static_cast<std::size_t>(n), -1);
        parallel_for(
            n,
            [&](long i) {
                hits[static_cast<std::size_t>(i)].fetch_add(1);
                thread_of[static_cast<std::size_t>(i)] = detail::loop_thread;
            },
            1 << 20);
        INFO("n = " << n);
        for (auto& h : hits) CHECK(h.load() == 1);
        for (int t : thread_of) CHECK((t >= 0 && t < std::min<long>(n, num_threads())));
        std::vector<std::atomic<int>> dyn(static_cast<std::size_t>(n));
        parallel_for_dynamic(n, [&](long i) { dyn[static_cast<std::size_t>(i)].fetch_add(1); });
        for (auto& h : dyn) CHECK(h.load() == 1);
    }
#if defined(_OPENMP)
    {
        // A thread held up in its share: item 0 (the calling thread's) waits until 48 other items
        // are done. With two threads the other one owns only [32, 64), so it has to take items
        // 31, 30, ... from the end of the held-up share; without that the wait times out. (The
        // caller's first batch, [0, 8), a quarter of its share, stays with it: 56 can be done.)
        const ThreadCountScope two(2);
        std::vector<std::atomic<int>> hits(64);
        std::atomic<int> done{0}, by_other{0};
        bool waited_out = false;
        int first_thread = -1;  // the caller's (0) unless the other thread took all 64 first
        parallel_for(
            64,
            [&](long i) {
                if (i == 0) {
                    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
                    while (done.load() < 48 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
                    waited_out = done.load() < 48;
                    first_thread = detail::loop_thread;
                }
                hits[static_cast<std::size_t>(i)].fetch_add(1);
                if (detail::loop_thread != 0) by_other.fetch_add(1);
                done.fetch_add(1);
            },
            1 << 20);
        CHECK_FALSE(waited_out);
        // the 48 items done before item 0 ended; once it ends, the two share what is left
        CHECK(by_other.load() >= (first_thread == 0 ? 48 : 64));
        for (auto& h : hits) CHECK(h.load() == 1);
    }
#endif
    // a loop inside a loop runs on the thread that reached it
    std::vector<int> inner(4 * 100, -1);
    parallel_for(
        4,
        [&](long i) {
            const int outer = detail::loop_thread;
            parallel_for(100, [&](long j) { inner[static_cast<std::size_t>(i * 100 + j)] = detail::loop_thread - outer; }, 1 << 20);
        },
        1 << 20);
    CHECK(std::count(inner.begin(), inner.end(), 0) == 400);
    // the last item throws (on whichever thread ran it): the caller gets it, and the pool still works
    CHECK_THROWS_WITH(parallel_for(
                          8,
                          [](long i) {
                              if (i == 7) fail<ShapeError>("item ", i, " failed");
                          },
                          1 << 20),
                      Catch::Contains("item 7 failed"));
    CHECK_THROWS_WITH(parallel_for_dynamic(5, [](long i) { if (i == 3) fail<ShapeError>("dynamic item ", i); }),
                      Catch::Contains("dynamic item 3"));
    std::atomic<long> sum{0};
    parallel_for(1000, [&](long i) { sum += i; }, 1 << 20);
    CHECK(sum.load() == 999 * 1000 / 2);
    // loops from two threads at once: one finds the pool taken and runs alone; both finish
    std::vector<long> sums(2, 0);
    {
        std::vector<std::thread> callers;
        for (int c = 0; c < 2; ++c)
            callers.emplace_back([&, c] {
                for (int rep = 0; rep < 200; ++rep) {
                    std::atomic<long> s{0};
                    parallel_for(64, [&](long i) { s += i; }, 1 << 20);
                    sums[static_cast<std::size_t>(c)] += s.load();
                }
            });
        for (auto& t : callers) t.join();
    }
    CHECK(sums[0] == 200 * (63 * 64 / 2));
    CHECK(sums[1] == 200 * (63 * 64 / 2));
    // ThreadCountScope sets the count for its lifetime and restores it
    {
        const ThreadCountScope one(1);
        CHECK(num_threads() == 1);
        std::vector<int> who(16, -1);
        parallel_for(16, [&](long i) { who[static_cast<std::size_t>(i)] = detail::loop_thread; }, 1 << 20);
        CHECK(std::count(who.begin(), who.end(), 0) == 16);
    }
#if defined(_OPENMP)
    CHECK(num_threads() == std::max(2, before));
#endif
    set_num_threads(before);
}
