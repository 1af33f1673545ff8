// Median forward latency of one zoo model, compiled for inference (BN folded,
// activations fused), batch 1, optionally pruned first. Prints one line:
//   <model> <median ms> <MACs>
// Used by scripts/torch_side_by_side.py to time spade next to PyTorch.
//
// usage: latency <model> [repetitions = 20] [pruning ratio = 0]
//   models: resnet18 resnet50 vgg16_bn mobilenet_v2 densenet121 googlenet (224²),
//           dncnn edsr unet (256²); threads from OMP_NUM_THREADS.
#include <spade/spade.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    using namespace spade::models;
    const std::map<std::string, std::function<spade::Graph<float>()>> zoo{
        {"resnet18", [] { return resnet18<float>(); }},       {"resnet50", [] { return resnet50<float>(); }},
        {"vgg16_bn", [] { return vgg16_bn<float>(); }},       {"mobilenet_v2", [] { return mobilenet_v2<float>(); }},
        {"densenet121", [] { return densenet121<float>(); }}, {"googlenet", [] { return googlenet<float>(); }},
        {"dncnn", [] { return dncnn<float>(); }},             {"edsr", [] { return edsr<float>(); }},
        {"unet", [] { return unet<float>(); }},
    };
    if (argc < 2 || !zoo.count(argv[1])) {
        std::fprintf(stderr, "usage: latency <model> [repetitions] [pruning ratio]; models:");
        for (const auto& [name, make] : zoo) std::fprintf(stderr, " %s", name.c_str());
        std::fprintf(stderr, "\n");
        return 2;
    }
    const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : 20;
    const double ratio = argc > 3 ? std::atof(argv[3]) : 0.0;
    try {
        auto g = zoo.at(argv[1])();
        if (ratio > 0) spade::prune_groups(g, spade::Magnitude<2>{}, {.ratio = ratio});
        spade::InferenceModel<float> model(g);
        const spade::Tensor<float> x(spade::example_input_shapes(g)[0], 0.5f);
        for (int i = 0; i < 3; ++i) model.forward(x);
        std::vector<double> ms;
        for (int i = 0; i < reps; ++i) {
            const auto t = std::chrono::steady_clock::now();
            model.forward(x);
            ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
        }
        std::sort(ms.begin(), ms.end());
        std::printf("%s %.3f %lld\n", argv[1], ms[ms.size() / 2],
                    static_cast<long long>(spade::total_macs(g, spade::example_input_shapes(g))));
    } catch (const spade::Error& e) {
        std::fprintf(stderr, "latency: %s\n", e.what());
        return 1;
    }
}
