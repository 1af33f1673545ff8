// Median forward latency of a graph compiled for inference, shared by the examples.
#pragma once

#include <spade/spade.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

/// Median milliseconds of `runs` forward passes on `x` of the graph compiled for
/// inference (BN folded, activations fused), after two warm-up passes.
template <class T>
double median_latency_ms(const spade::Graph<T>& g, const spade::Tensor<T>& x, int runs = 10) {
    spade::InferenceModel<T> exec(g);
    std::vector<double> ms;
    for (int i = 0; i < runs + 2; ++i) {
        const auto t = std::chrono::steady_clock::now();
        exec.forward(x);
        if (i >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}
