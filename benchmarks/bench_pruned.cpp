// Dense vs pruned forward latency (compiled for inference) of every zoo model
// (classifiers at 224², restoration nets at 256², batch 1): L2-magnitude
// pruning of every group at 25%, 50% and 75%, with and without round_to = 8.
//
// One benchmark per model. Each of its iterations is a round that runs the
// dense network and every pruned variant, one after another, in an order that
// rotates from round to round, so that the machine's drift (other tenants,
// clock) falls on all variants alike. Each variant runs twice in its turn:
// the second run is the steady state of a model run again and again (its
// weights and buffers in cache as far as they fit), the latency a serving loop
// sees and the one the figures report; the first comes right after another
// network and refills the caches (reported as "cold"). The speedup of a
// variant is the median over rounds of dense time / variant time within the
// round; efficiency = speedup x MACs ratio (pruned / dense), 1 when the time
// falls exactly as the MACs do. Latencies are medians over rounds; peak memory
// is the planned activation memory. The table at the end holds every model;
// --rounds=N sets the rounds per model (default 9).
#include <benchmark/benchmark.h>

#include <spade/spade.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using Factory = std::function<spade::Graph<float>()>;

const std::vector<std::pair<std::string, Factory>>& zoo() {
    using namespace spade::models;
    static const std::vector<std::pair<std::string, Factory>> z{
        {"resnet18", [] { return resnet18<float>(); }},
        {"resnet34", [] { return resnet34<float>(); }},
        {"resnet50", [] { return resnet50<float>(); }},
        {"vgg16_bn", [] { return vgg16_bn<float>(); }},
        {"mobilenet_v2", [] { return mobilenet_v2<float>(); }},
        {"densenet121", [] { return densenet121<float>(); }},
        {"googlenet", [] { return googlenet<float>(); }},
        {"dncnn", [] { return dncnn<float>(); }},
        {"edsr", [] { return edsr<float>(); }},
        {"unet", [] { return unet<float>(); }},
    };
    return z;
}

struct Variant {
    std::string name;
    double ratio;
    spade::Index round_to;
};
const std::vector<Variant> variants{{"dense", 0.0, 1},   {"r25", 0.25, 1},    {"r50", 0.5, 1},    {"r75", 0.75, 1},
                                    {"r25_rt8", 0.25, 8}, {"r50_rt8", 0.5, 8}, {"r75_rt8", 0.75, 8}};

// One table row.
struct Row {
    double ms = 0, macs_ratio = 1, speedup = 1, cold_speedup = 1, peak_mib = 0;
};
std::map<std::string, std::vector<Row>>& table() {
    static std::map<std::string, std::vector<Row>> t;
    return t;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

void rounds(benchmark::State& state, const std::string& name, const Factory& make) {
    struct Net {
        spade::Graph<float> graph;
        std::unique_ptr<spade::InferenceModel<float>> model;
        double macs = 0;
        std::vector<double> ms, cold_ms;  // per round: second run of the turn, first run
    };
    std::vector<Net> nets(variants.size());
    const auto inputs = spade::example_input_shapes(make());
    const spade::Tensor<float> x(inputs[0], 0.5f);
    for (std::size_t v = 0; v < variants.size(); ++v) {
        nets[v].graph = make();
        if (variants[v].ratio > 0)
            spade::prune_groups(nets[v].graph, spade::Magnitude<2>{},
                                {.ratio = variants[v].ratio, .round_to = variants[v].round_to});
        nets[v].macs = static_cast<double>(spade::total_macs(nets[v].graph, inputs));
        nets[v].model = std::make_unique<spade::InferenceModel<float>>(nets[v].graph);  // BN folded, activations fused
        nets[v].model->forward(x);  // plan and warm up
    }
    std::size_t round = 0;
    for (auto _ : state) {
        for (std::size_t k = 0; k < nets.size(); ++k) {
            auto& n = nets[(k + round) % nets.size()];
            for (auto* times : {&n.cold_ms, &n.ms}) {
                const auto t0 = std::chrono::steady_clock::now();
                auto y = n.model->forward(x);
                benchmark::DoNotOptimize(y.data());
                times->push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            }
        }
        ++round;
    }
    auto& rows = table()[name];
    rows.assign(variants.size(), Row{});
    for (std::size_t v = 0; v < variants.size(); ++v) {
        std::vector<double> ratio, cold_ratio;
        for (std::size_t r = 0; r < nets[v].ms.size(); ++r) {
            ratio.push_back(nets[0].ms[r] / nets[v].ms[r]);
            cold_ratio.push_back(nets[0].cold_ms[r] / nets[v].cold_ms[r]);
        }
        auto& row = rows[v];
        row.ms = median(nets[v].ms);
        row.macs_ratio = nets[v].macs / nets[0].macs;
        row.speedup = median(ratio);
        row.cold_speedup = median(cold_ratio);
        row.peak_mib = static_cast<double>(nets[v].model->executor().plan().peak_bytes(sizeof(float))) / 1048576.0;
        state.counters[variants[v].name + "_ms"] = row.ms;
        if (v > 0) {
            state.counters[variants[v].name + "_eff"] = row.speedup * row.macs_ratio;
            state.counters[variants[v].name + "_eff_cold"] = row.cold_speedup * row.macs_ratio;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    int rounds_per_model = 9;
    for (int i = 1; i < argc; ++i)
        if (std::strncmp(argv[i], "--rounds=", 9) == 0) {
            rounds_per_model = std::max(1, std::atoi(argv[i] + 9));
            for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
            --argc;
            break;
        }
    for (const auto& [model, make] : zoo())
        benchmark::RegisterBenchmark(("pruned/" + model).c_str(), rounds, model, make)
            ->Iterations(rounds_per_model)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    benchmark::Initialize(&argc, argv);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    std::printf("\n%-14s %-9s %10s %10s %9s %10s %9s %9s\n", "model", "variant", "ms", "MACs", "speedup", "efficiency",
                "eff cold", "peak MiB");
    for (const auto& [model, make] : zoo()) {
        auto it = table().find(model);
        if (it == table().end()) continue;
        for (std::size_t v = 0; v < variants.size(); ++v) {
            const auto& r = it->second[v];
            if (v == 0)
                std::printf("%-14s %-9s %10.2f %10.3f %9s %10s %9s %9.1f\n", model.c_str(), variants[v].name.c_str(), r.ms,
                            r.macs_ratio, "", "", "", r.peak_mib);
            else
                std::printf("%-14s %-9s %10.2f %10.3f %9.2f %10.2f %9.2f %9.1f\n", model.c_str(), variants[v].name.c_str(),
                            r.ms, r.macs_ratio, r.speedup, r.speedup * r.macs_ratio, r.cold_speedup * r.macs_ratio,
                            r.peak_mib);
        }
    }
}
