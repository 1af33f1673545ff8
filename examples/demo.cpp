// spade demo: build ResNet-50 from the zoo, print every layer's output shape,
// MACs and parameters with totals, and measure the forward latency.
#include <spade/spade.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <vector>

int main() {
    using clock = std::chrono::steady_clock;
    spade::set_num_threads(spade::num_threads());  // OMP_NUM_THREADS or all cores

    const auto t0 = clock::now();
    auto graph = spade::models::resnet50<float>({.batch = 1, .image_size = 224});
    const double build_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();

    const auto counts = spade::count(graph);
    std::cout << "ResNet-50 (torchvision layout), input [1, 3, 224, 224]\n\n";
    counts.print(std::cout);

    spade::Executor<float> exec(graph);
    spade::Tensor<float> x(spade::Shape{1, 3, 224, 224}, 0.5f);
    std::vector<double> ms;
    for (int i = 0; i < 12; ++i) {
        const auto t = clock::now();
        exec.forward(x);
        if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t).count());  // 2 warm-up runs
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    std::printf("\nbuilt in %.1f ms; %.2f GMACs, %.2f M params\n", build_ms, counts.macs / 1e9, counts.params / 1e6);
    std::printf("forward latency (batch 1, %d thread%s): median %.1f ms over %zu runs, %.1f GFLOP/s\n",
                spade::num_threads(), spade::num_threads() == 1 ? "" : "s", median, ms.size(),
                2.0 * counts.macs / (median * 1e6));
    std::printf("activation memory planned: %.1f MiB\n", exec.plan().peak_bytes(sizeof(float)) / 1048576.0);
}
