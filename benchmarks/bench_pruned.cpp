// Dense vs pruned forward latency (compiled for inference) of every zoo model (classifiers at 224²,
// restoration nets at 256², batch 1): L2-magnitude pruning of every group at
// 25%, 50% and 75%, with and without round_to = 8. After the runs a table gives
// per variant the latency, the MACs ratio (pruned / dense), the measured speedup,
// their quotient (efficiency = speedup / (1 / MACs ratio)) and the planned peak
// activation memory. Use --benchmark_repetitions to get medians.
#include <benchmark/benchmark.h>

#include <spade/spade.hpp>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

using Factory = std::function<spade::Graph<float>()>;

const std::vector<std::pair<std::string, Factory>>& zoo() {
    using namespace spade::models;
    static const std::vector<std::pair<std::string, Factory>> z{
        {"resnet18", [] { return resnet18<float>(); }},
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

void forward(benchmark::State& state, const Factory& make, const Variant& v) {
    auto g = make();
    const auto inputs = spade::example_input_shapes(g);
    const double dense_macs = static_cast<double>(spade::total_macs(g, inputs));
    if (v.ratio > 0) spade::prune_groups(g, spade::Magnitude<2>{}, {.ratio = v.ratio, .round_to = v.round_to});
    spade::InferenceModel<float> model(g);  // BN folded, activations fused
    spade::Tensor<float> x(inputs[0], 0.5f);
    model.forward(x);  // plan and warm up
    for (auto _ : state) {
        auto y = model.forward(x);
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["macs_ratio"] = static_cast<double>(spade::total_macs(g, inputs)) / dense_macs;
    state.counters["peak_MiB"] = static_cast<double>(model.executor().plan().peak_bytes(sizeof(float))) / 1048576.0;
}

// Keeps the median (or the single run) of every benchmark, to print the table at the end.
class Collector : public benchmark::ConsoleReporter {
public:
    struct Row {
        double ms = 0, macs_ratio = 1, peak = 0;
    };
    std::map<std::string, Row> rows;
    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const auto& r : runs) {
            const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
            if (!median && r.run_type == Run::RT_Aggregate) continue;
            std::string name = r.run_name.function_name;
            if (!median && rows.count(name)) continue;  // keep the first plain run unless a median comes
            rows[name] = {r.GetAdjustedRealTime(), r.counters.at("macs_ratio").value, r.counters.at("peak_MiB").value};
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    for (const auto& [model, make] : zoo())
        for (const auto& v : variants)
            benchmark::RegisterBenchmark(("pruned/" + model + "/" + v.name).c_str(), forward, make, v)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime();
    benchmark::Initialize(&argc, argv);
    Collector collector;
    benchmark::RunSpecifiedBenchmarks(&collector);
    benchmark::Shutdown();
    std::printf("\n%-14s %-9s %10s %10s %9s %10s %9s\n", "model", "variant", "ms", "MACs", "speedup", "efficiency",
                "peak MiB");
    for (const auto& [model, make] : zoo()) {
        auto dense = collector.rows.find("pruned/" + model + "/dense");
        for (const auto& v : variants) {
            auto it = collector.rows.find("pruned/" + model + "/" + v.name);
            if (it == collector.rows.end()) continue;
            const auto& r = it->second;
            if (dense == collector.rows.end() || v.ratio == 0) {
                std::printf("%-14s %-9s %10.2f %10.3f %9s %10s %9.1f\n", model.c_str(), v.name.c_str(), r.ms, r.macs_ratio,
                            "", "", r.peak);
                continue;
            }
            const double speedup = dense->second.ms / r.ms;
            std::printf("%-14s %-9s %10.2f %10.3f %9.2f %10.2f %9.1f\n", model.c_str(), v.name.c_str(), r.ms,
                        r.macs_ratio, speedup, speedup * r.macs_ratio, r.peak);
        }
    }
}
