// Shared test fixtures: random tensors, tolerance checks, one-op graphs.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>

#include "spade/spade.hpp"

namespace spade::test {

/// Tensor with entries from U(lo, hi), deterministic for a seed.
template <class T>
Tensor<T> random_tensor(const Shape& s, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> d(lo, hi);
    Tensor<T> t(s);
    for (auto& x : t) x = static_cast<T>(d(rng));
    return t;
}

/// Fills every parameter of a graph with U(lo, hi) (BN variances with U(0.5, 1.5)).
template <class T>
void randomize(Graph<T>& g, std::uint64_t seed, double lo = -0.5, double hi = 0.5) {
    std::mt19937_64 rng(seed);
    for (std::size_t i = 0; i < g.num_parameters(); ++i) {
        auto& p = g.parameter(static_cast<ParamId>(i));
        bool var = p.name().size() >= 11 && p.name().compare(p.name().size() - 11, 11, "running_var") == 0;
        std::uniform_real_distribution<double> d(var ? 0.5 : lo, var ? 1.5 : hi);
        for (auto& x : p) x = static_cast<T>(d(rng));
    }
}

/// max |a - b| / max(1, max |b|): relative to the reference's scale.
template <class A, class B>
double max_rel_err(const A& a, const B& b) {
    REQUIRE(a.shape() == b.shape());
    double err = 0, scale = 1;
    for (Index i = 0; i < a.numel(); ++i) {
        err = std::max(err, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    return err / scale;
}

/// MACs of node `name` at the graph's example shapes, through the op interface.
template <class T>
Index node_macs(const Graph<T>& g, const std::string& name) {
    const NodeId id = g.node_id(name);
    const auto& n = g.node(id);
    std::vector<Shape> in, out, ps = g.param_shapes(id);
    for (ValueId v : n.inputs) in.push_back(g.value(v).shape);
    for (ValueId v : n.outputs) out.push_back(g.value(v).shape);
    return n.op->macs(ShapeContext{n.name, in, ps}, out);
}

/// Runs a single-input, single-output graph on `x`.
template <class T>
Tensor<T> run(const Graph<T>& g, const Tensor<T>& x) {
    Executor<T> ex(g);
    return ex.forward(x);
}

}  // namespace spade::test
