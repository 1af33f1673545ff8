// Single Conv2d layers over shapes typical of ResNets, MobileNets and
// restoration nets, at batch 1 on 1 and 2 threads; GFLOP/s counter.
#include <benchmark/benchmark.h>

#include <spade/spade.hpp>

namespace {

struct ConvCase {
    const char* name;
    spade::Index cin, hw;
    spade::Conv2dOptions o;
};

const ConvCase cases[] = {
    {"3x3_64_56", 64, 56, {.out_channels = 64, .kernel = 3, .padding = 1, .bias = false}},
    {"3x3_128_28_s2in", 128, 56, {.out_channels = 128, .kernel = 3, .stride = 2, .padding = 1, .bias = false}},
    {"3x3_256_14", 256, 14, {.out_channels = 256, .kernel = 3, .padding = 1, .bias = false}},
    {"3x3_512_7", 512, 7, {.out_channels = 512, .kernel = 3, .padding = 1, .bias = false}},
    {"1x1_256to64_56", 256, 56, {.out_channels = 64, .kernel = 1, .bias = false}},
    {"1x1_1024to256_14", 1024, 14, {.out_channels = 256, .kernel = 1, .bias = false}},
    {"1x1_64to256_56", 64, 56, {.out_channels = 256, .kernel = 1, .bias = false}},
    {"1x1_512to2048_7", 512, 7, {.out_channels = 2048, .kernel = 1, .bias = false}},
    {"1x1_12to72_56", 12, 56, {.out_channels = 72, .kernel = 1, .bias = false}},
    {"1x1_72to12_56", 72, 56, {.out_channels = 12, .kernel = 1, .bias = false}},
    {"1x1_8to48_112", 8, 112, {.out_channels = 48, .kernel = 1, .bias = false}},
    {"1x1_32to192_14", 32, 14, {.out_channels = 192, .kernel = 1, .bias = false}},
    {"7x7_stem_224", 3, 224, {.out_channels = 64, .kernel = 7, .stride = 2, .padding = 3, .bias = false}},
    {"dw3x3_144_56", 144, 56, {.out_channels = 144, .kernel = 3, .padding = 1, .groups = 144, .bias = false}},
    {"3x3_64_256_restoration", 64, 256, {.out_channels = 64, .kernel = 3, .padding = 1}},
    {"3x3_odd_61_56", 61, 56, {.out_channels = 59, .kernel = 3, .padding = 1, .bias = false}},
};

void conv(benchmark::State& state, const ConvCase& c) {
    spade::set_num_threads(static_cast<int>(state.range(0)));
    spade::GraphBuilder<float> b;
    auto x = b.input("x", {1, c.cin, c.hw, c.hw});
    b.output(spade::nn::conv2d(x, "conv", c.o));
    auto g = std::move(b).build();
    spade::Executor<float> ex(g);
    spade::Tensor<float> in(spade::Shape{1, c.cin, c.hw, c.hw}, 0.5f);
    const double macs = static_cast<double>(spade::count(g).macs);
    ex.forward(in);
    for (auto _ : state) {
        ex.run(std::span<const spade::TensorRef<const float>>(std::vector<spade::TensorRef<const float>>{in.ref()}));
        benchmark::ClobberMemory();
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

const bool registered = [] {
    for (const auto& c : cases)
        benchmark::RegisterBenchmark((std::string("conv/") + c.name).c_str(), conv, c)
            ->Arg(1)
            ->Arg(2)
            ->ArgName("threads")
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
    return true;
}();

}  // namespace

BENCHMARK_MAIN();
