// Checks the classifier zoo against PyTorch: loads each torchvision state_dict
// written by export_torchvision.py into the matching spade model (strictly: every
// name must match both ways), runs the exported input and compares with torch's
// logits.
//
// usage: test_torchvision_match DIR [model ...]
// Exit 0 if every model present matches within 1e-4 (max|a-b| / max|b|), 1 on a
// mismatch or an error, 77 (CTest's skip code) if DIR holds no exported model.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "spade/io.hpp"
#include "spade/spade.hpp"

namespace {

using Builder = std::function<spade::Graph<float>(const spade::models::ClassifierOptions&)>;

const std::map<std::string, Builder>& zoo() {
    static const std::map<std::string, Builder> m{
        {"resnet18", spade::models::resnet18<float>},       {"resnet34", spade::models::resnet34<float>},
        {"resnet50", spade::models::resnet50<float>},       {"vgg16_bn", spade::models::vgg16_bn<float>},
        {"mobilenet_v2", spade::models::mobilenet_v2<float>}, {"densenet121", spade::models::densenet121<float>},
        {"googlenet", spade::models::googlenet<float>},
    };
    return m;
}

constexpr double tolerance = 1e-4;

// max|a - b| / max|b|, the test's definition of relative error.
double max_rel_err(const spade::Tensor<float>& a, const spade::Tensor<float>& b) {
    double err = 0, scale = 0;
    for (spade::Index i = 0; i < b.numel(); ++i) {
        err = std::max(err, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return scale > 0 ? err / scale : err;
}

// Compares one model; returns its relative error (throws on any load or shape problem).
double compare(const std::string& name, const std::filesystem::path& weights, const std::filesystem::path& io) {
    auto file = spade::SafetensorsFile::open(io);
    spade::Tensor<float> x = file.read<float>("x"), y = file.read<float>("y");
    if (x.shape().rank() != 4 || y.shape().rank() != 2)
        spade::fail<spade::FormatError>(io.string(), ": expected x [N, 3, H, W] and y [N, classes], got ", x.shape(),
                                        " and ", y.shape());
    spade::Graph<float> g = zoo().at(name)({.num_classes = y.shape()[1], .batch = x.shape()[0], .image_size = x.shape()[2]});
    spade::load_weights(g, weights, spade::LoadOptions{.strict = true});
    spade::Executor<float> ex(g);
    spade::Tensor<float> out = ex.forward(x);
    if (out.shape() != y.shape())
        spade::fail<spade::ShapeError>(name, ": spade's output ", out.shape(), " differs from torch's ", y.shape());
    for (float v : out)
        if (!std::isfinite(v)) spade::fail<spade::ShapeError>(name, ": spade's output is not finite");
    return max_rel_err(out, y);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s DIR [model ...]\n", argv[0]);
        return 1;
    }
    const std::filesystem::path dir = argv[1];
    std::vector<std::string> names(argv + 2, argv + argc);
    const bool all = names.empty();
    if (all)
        for (const auto& [n, b] : zoo()) names.push_back(n);

    int found = 0, missing = 0, failed = 0;
    for (const auto& n : names) {
        if (!zoo().count(n)) {
            std::fprintf(stderr, "%s: unknown model\n", n.c_str());
            ++failed;
            continue;
        }
        const auto weights = dir / (n + ".safetensors"), io = dir / (n + ".io.safetensors");
        if (!std::filesystem::exists(weights) || !std::filesystem::exists(io)) {
            std::printf("%-14s not exported\n", n.c_str());
            ++missing;
            continue;
        }
        ++found;
        try {
            const double e = compare(n, weights, io);
            const bool ok = e <= tolerance;
            std::printf("%-14s max rel err %.3g %s\n", n.c_str(), e, ok ? "ok" : "FAIL");
            if (!ok) ++failed;
        } catch (const std::exception& ex) {
            std::printf("%-14s ERROR %s\n", n.c_str(), ex.what());
            ++failed;
        }
    }
    if (found == 0) {
        std::printf("no exported models in %s (torch/torchvision not installed?): skipped\n", dir.string().c_str());
        return failed ? 1 : 77;
    }
    // an export that produced some models but not all of those asked for is broken, not skipped
    if (missing > 0) {
        std::printf("%d of %zu models missing from %s\n", missing, names.size(), dir.string().c_str());
        return 1;
    }
    return failed ? 1 : 0;
}
