// Forward pass of every zoo model at batch 1 and 8, on 1 and 2 threads.
// Counters: GFLOP/s = 2 * MACs / time, MACs per image.
#include <benchmark/benchmark.h>

#include <spade/spade.hpp>

#include <functional>
#include <map>
#include <string>

namespace {

using Factory = std::function<spade::Graph<float>(spade::Index batch)>;

const std::map<std::string, std::pair<Factory, spade::Index>>& zoo() {
    using namespace spade::models;
    static const std::map<std::string, std::pair<Factory, spade::Index>> z{
        {"resnet18", {[](spade::Index n) { return resnet18<float>({.batch = n}); }, 224}},
        {"resnet34", {[](spade::Index n) { return resnet34<float>({.batch = n}); }, 224}},
        {"resnet50", {[](spade::Index n) { return resnet50<float>({.batch = n}); }, 224}},
        {"vgg16_bn", {[](spade::Index n) { return vgg16_bn<float>({.batch = n}); }, 224}},
        {"mobilenet_v2", {[](spade::Index n) { return mobilenet_v2<float>({.batch = n}); }, 224}},
        {"densenet121", {[](spade::Index n) { return densenet121<float>({.batch = n}); }, 224}},
        {"googlenet", {[](spade::Index n) { return googlenet<float>({.batch = n}); }, 224}},
        {"dncnn", {[](spade::Index n) { return dncnn<float>({.batch = n}); }, 256}},
        {"edsr", {[](spade::Index n) { return edsr<float>({.batch = n}); }, 256}},
        {"unet", {[](spade::Index n) { return unet<float>({.batch = n}); }, 256}},
    };
    return z;
}

void forward(benchmark::State& state, const std::string& name) {
    const spade::Index batch = state.range(0);
    spade::set_num_threads(static_cast<int>(state.range(1)));
    const auto& [make, size] = zoo().at(name);
    auto g = make(batch);
    spade::Executor<float> ex(g);
    const spade::Index channels = g.value(g.inputs()[0]).shape[1];
    spade::Tensor<float> x(spade::Shape{batch, channels, size, size}, 0.5f);
    const double macs = static_cast<double>(spade::count(g, {x.shape()}).macs);
    ex.forward(x);  // plan and warm up
    for (auto _ : state) {
        auto y = ex.forward(x);
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs / 1e9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GMACs/img"] = macs / 1e9 / static_cast<double>(batch);
    state.SetLabel(std::to_string(batch) + "x" + std::to_string(size) + "^2, " + std::to_string(state.range(1)) + " thr");
}

const bool registered = [] {
    for (const auto& [name, entry] : zoo())
        benchmark::RegisterBenchmark(("forward/" + name).c_str(), forward, name)
            ->ArgsProduct({{1, 8}, {1, 2}})
            ->ArgNames({"batch", "threads"})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MeasureProcessCPUTime();
    return true;
}();

}  // namespace

BENCHMARK_MAIN();
