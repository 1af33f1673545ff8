// Time to prune: trace the groups, score them (L2 magnitude) and cut 50% of
// every group (round_to 8) by in-place surgery, on a fresh copy of each model
// per iteration (the copy is not timed). Counters split the time into trace,
// score and surgery.
#include <benchmark/benchmark.h>

#include <spade/spade.hpp>

#include <functional>
#include <map>
#include <string>

namespace {

const spade::Graph<float>& prototype(const std::string& name) {
    static std::map<std::string, spade::Graph<float>> cache;
    auto it = cache.find(name);
    if (it != cache.end()) return it->second;
    const std::map<std::string, std::function<spade::Graph<float>()>> make{
        {"resnet50", [] { return spade::models::resnet50<float>(); }},
        {"densenet121", [] { return spade::models::densenet121<float>(); }},
        {"vgg16_bn", [] { return spade::models::vgg16_bn<float>(); }},
        {"mobilenet_v2", [] { return spade::models::mobilenet_v2<float>(); }},
        {"resnet18", [] { return spade::models::resnet18<float>(); }},
        {"googlenet", [] { return spade::models::googlenet<float>(); }},
    };
    return cache.emplace(name, make.at(name)()).first->second;
}

void prune(benchmark::State& state, const std::string& name) {
    const auto& proto = prototype(name);
    double trace = 0, score = 0, surgery = 0;
    for (auto _ : state) {
        state.PauseTiming();
        spade::Graph<float> g = proto;
        state.ResumeTiming();
        const auto rep = spade::prune_groups(g, spade::Magnitude<2>{}, {.ratio = 0.5, .round_to = 8});
        benchmark::DoNotOptimize(rep.macs_after);
        trace += rep.trace_seconds, score += rep.score_seconds, surgery += rep.surgery_seconds;
    }
    const double n = static_cast<double>(state.iterations());
    state.counters["trace_ms"] = 1e3 * trace / n;
    state.counters["score_ms"] = 1e3 * score / n;
    state.counters["surgery_ms"] = 1e3 * surgery / n;
}

}  // namespace

int main(int argc, char** argv) {
    for (const char* name : {"resnet18", "resnet50", "mobilenet_v2", "googlenet", "densenet121", "vgg16_bn"})
        benchmark::RegisterBenchmark((std::string("prune/") + name).c_str(), prune, std::string(name))
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
}
