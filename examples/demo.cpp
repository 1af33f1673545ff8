// spade demo: build ResNet-50 from the zoo, prune half of the channels of every
// group with L2 magnitude (kept counts multiples of 8), and compare the dense
// and pruned networks: MACs, parameters and measured forward latency (both
// compiled for inference: BatchNorm folded, activations fused).
#include <spade/spade.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "median_latency.hpp"

int main() {
    using clock = std::chrono::steady_clock;

    auto graph = spade::models::resnet50<float>({.batch = 1, .image_size = 224});
    const spade::Tensor<float> x(spade::Shape{1, 3, 224, 224}, 0.5f);
    const double dense_ms = median_latency_ms(graph, x);

    const auto t0 = clock::now();
    const auto report = spade::prune_groups(graph, spade::Magnitude<2>{}, {.ratio = 0.5, .round_to = 8});
    const double prune_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    const double pruned_ms = median_latency_ms(graph, x);

    std::cout << "ResNet-50, input [1, 3, 224, 224], pruned 50% per group (L2 magnitude, round_to 8)\n\n"
              << report << "\n";
    std::printf("%-10s %12s %12s %14s\n", "", "GMACs", "M params", "latency (ms)");
    std::printf("%-10s %12.3f %12.3f %14.1f\n", "dense", report.macs_before / 1e9, report.params_before / 1e6, dense_ms);
    std::printf("%-10s %12.3f %12.3f %14.1f\n", "pruned", report.macs_after / 1e9, report.params_after / 1e6, pruned_ms);
    std::printf("\nMACs ratio %.3f, measured speedup %.2fx (batch 1, %d thread%s, median of 10 runs)\n",
                static_cast<double>(report.macs_after) / report.macs_before, dense_ms / pruned_ms, spade::num_threads(),
                spade::num_threads() == 1 ? "" : "s");
    std::printf("pruning took %.1f ms (trace %.1f, score %.1f, surgery %.1f)\n", prune_ms, report.trace_seconds * 1e3,
                report.score_seconds * 1e3, report.surgery_seconds * 1e3);
}
