// Prune ResNet-50: 50% of the channels of every group by L2 magnitude, kept
// counts multiples of 8. Prints the report, saves the pruned model (graph JSON,
// safetensors weights, pruning history), reloads it and checks that it runs and
// gives the same output, and that replaying the history on a fresh ResNet-50
// gives the same weights.
//
// usage: prune_resnet [output directory, default "."]
#include <spade/spade.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>

int main(int argc, char** argv) {
    namespace fs = std::filesystem;
    const fs::path dir = argc > 1 ? argv[1] : ".";
    fs::create_directories(dir);
    try {
        auto graph = spade::models::resnet50<float>({.seed = 1});
        const auto report = spade::prune_groups(graph, spade::Magnitude<2>{}, {.ratio = 0.5, .round_to = 8});
        std::cout << report << "\n";

        const fs::path json = dir / "resnet50_pruned.json", weights = dir / "resnet50_pruned.safetensors",
                       history = dir / "resnet50_pruned.history.json";
        spade::save_graph(graph, json, weights);
        report.history.save(history);
        std::cout << "saved " << json.string() << ", " << weights.string() << " and " << history.string() << "\n";

        const auto loaded = spade::load_graph<float>(json, weights);
        const spade::Tensor<float> x(spade::Shape{1, 3, 224, 224}, 0.5f);
        spade::Executor<float> a(graph), b(loaded);
        const auto ya = a.forward(x), yb = b.forward(x);
        double diff = 0;
        for (spade::Index i = 0; i < ya.numel(); ++i) diff = std::max(diff, std::abs(double(ya[i]) - double(yb[i])));
        std::printf("reloaded model runs: output %s, max difference to the in-memory model %.3g\n",
                    spade::Shape(yb.shape()).str().c_str(), diff);

        auto fresh = spade::models::resnet50<float>({.seed = 1});
        spade::replay(fresh, spade::PruningHistory::load(history));
        bool same = true;
        for (std::size_t i = 0; i < graph.num_parameters(); ++i) {
            const auto& p = graph.parameter(static_cast<spade::ParamId>(i));
            const auto& q = fresh.parameter(p.name());
            same = same && p.shape() == q.shape() && std::memcmp(p.data(), q.data(), sizeof(float) * p.numel()) == 0;
        }
        std::printf("history replayed on a fresh ResNet-50: weights %s\n", same ? "identical" : "DIFFER");
        return diff == 0 && same ? 0 : 1;
    } catch (const spade::Error& e) {
        std::cerr << "prune_resnet: " << e.what() << "\n";
        return 1;
    }
}
