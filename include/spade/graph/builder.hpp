// GraphBuilder: builds a Graph<T> in code that reads like the network.
//
//     GraphBuilder<float> b;
//     auto x = b.input("x", {1, 3, 224, 224});
//     x = nn::conv2d(x, "conv1", {.out_channels = 64, .kernel = 7, .stride = 2, .padding = 3, .bias = false});
//     x = nn::relu(nn::batch_norm2d(x, "bn1"), "relu");
//     b.output(x);
//     Graph<float> g = std::move(b).build();
//
// Node names nest with `scope("layer1")`. Weight sharing: inside
// `param_scope("prior")` parameters are named from that scope on, and a
// parameter whose name already exists is reused (its shape must match), so an
// unrolled network's K iterations can share one CNN prior.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "spade/graph/graph.hpp"

namespace spade {

template <Scalar T>
class GraphBuilder;

/// A value under construction: a handle to the builder and the value id.
template <Scalar T>
struct Var {
    GraphBuilder<T>* builder = nullptr;
    ValueId id = -1;

    /// Example shape of the value.
    const Shape& shape() const { return builder->graph().value(id).shape; }
    /// Channel extent (axis 1).
    Index channels() const { return shape()[1]; }
};

/// How a new parameter is initialised.
enum class Init {
    zeros,
    ones,
    uniform_fan_in,  ///< U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv/linear weight and bias
    normal,          ///< N(0, scale^2)
};

/// A parameter a builder function asks for: shape and initialisation.
struct ParamSpec {
    Shape shape;
    Init init = Init::zeros;
    double scale = 1.0;  ///< fan_in for uniform_fan_in, std-dev for normal
};

/// Builds graphs; see the file comment.
template <Scalar T>
class GraphBuilder {
public:
    explicit GraphBuilder(std::uint64_t seed = 0) : rng_(seed) {}

    /// Declares an input with an example shape.
    Var<T> input(const std::string& name, Shape shape) { return {this, graph_.add_input(name, std::move(shape))}; }
    /// Marks an output.
    void output(Var<T> v) { graph_.add_output(v.id); }

    /// RAII guard returned by scope() and param_scope().
    class Scope {
    public:
        explicit Scope(GraphBuilder* b) : b_(b) {}
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;
        Scope(Scope&& o) noexcept : b_(o.b_) { o.b_ = nullptr; }
        ~Scope() {
            if (b_) b_->scopes_.pop_back();
        }

    private:
        GraphBuilder* b_;
    };
    /// Prefixes node (and parameter) names with `prefix.` until the guard dies.
    [[nodiscard]] Scope scope(const std::string& prefix) {
        scopes_.push_back({prefix, false});
        return Scope(this);
    }
    /// Names parameters from `prefix.` on (ignoring outer scopes; node names are
    /// unaffected) and shares parameters whose names already exist.
    [[nodiscard]] Scope param_scope(const std::string& prefix) {
        scopes_.push_back({prefix, true});
        return Scope(this);
    }

    /// Adds a node with op `op` on `inputs`; `params` follow `op->param_roles()`.
    /// Returns all outputs.
    std::vector<Var<T>> apply_multi(const std::string& local_name, std::unique_ptr<Op<T>> op,
                                    const std::vector<Var<T>>& inputs, const std::vector<ParamSpec>& params = {}) {
        std::string local = local_name.empty() ? auto_name(op->type()) : local_name;
        std::string name = join(node_prefix(), local);
        auto roles = op->param_roles();
        if (roles.size() != params.size())
            fail<GraphError>("node '", name, "' (", op->type(), "): ", roles.size(), " parameter role(s) but ", params.size(),
                             " spec(s)");
        // check the node before creating its parameters, so a rejected node leaves none behind
        if (graph_.has_node(name)) fail<GraphError>("duplicate node name '", name, "'");
        {
            std::vector<Shape> in, ps;
            for (const auto& v : inputs) {
                if (v.builder != this) fail<GraphError>("node '", name, "': input comes from another builder");
                in.push_back(v.shape());
            }
            for (const auto& spec : params) ps.push_back(spec.shape);
            op->infer_shapes(ShapeContext{name, in, ps});
        }
        std::vector<ParamId> pids;
        for (std::size_t i = 0; i < roles.size(); ++i)
            pids.push_back(parameter(join(join(param_prefix(), local), roles[i].name), params[i], roles[i].learnable));
        std::vector<ValueId> in;
        for (const auto& v : inputs) in.push_back(v.id);
        NodeId id = graph_.add_node(name, std::move(op), std::move(in), std::move(pids));
        std::vector<Var<T>> out;
        for (ValueId v : graph_.node(id).outputs) out.push_back({this, v});
        return out;
    }
    /// As apply_multi, for an op with one output.
    Var<T> apply(const std::string& local_name, std::unique_ptr<Op<T>> op, const std::vector<Var<T>>& inputs,
                 const std::vector<ParamSpec>& params = {}) {
        auto out = apply_multi(local_name, std::move(op), inputs, params);
        if (out.size() != 1) fail<GraphError>("node '", local_name, "' has ", out.size(), " outputs; use apply_multi");
        return out[0];
    }

    /// Creates parameter `name`, or reuses it inside a param_scope.
    ParamId parameter(const std::string& name, const ParamSpec& spec, bool learnable = true) {
        if (graph_.has_parameter(name)) {
            if (!sharing()) fail<GraphError>("parameter '", name, "' already exists (use param_scope to share it)");
            ParamId id = graph_.param_id(name);
            if (graph_.parameter(id).shape() != spec.shape)
                fail<ShapeError>("shared parameter '", name, "' has shape ", graph_.parameter(id).shape(), ", requested ",
                                 spec.shape);
            return id;
        }
        Parameter<T> p(name, spec.shape, learnable);
        fill(p, spec);
        return graph_.add_parameter(std::move(p));
    }

    Graph<T>& graph() { return graph_; }
    const Graph<T>& graph() const { return graph_; }
    /// Hands over the graph; the builder is left empty.
    Graph<T> build() && { return std::move(graph_); }
    /// Random source used for initialisation.
    std::mt19937_64& rng() { return rng_; }

private:
    struct ScopeEntry {
        std::string prefix;
        bool param_root;
    };
    static std::string join(const std::string& a, const std::string& b) {
        if (a.empty()) return b;
        if (b.empty()) return a;
        return a + "." + b;
    }
    std::string node_prefix() const {  // param scopes name parameters only
        std::string s;
        for (const auto& e : scopes_)
            if (!e.param_root) s = join(s, e.prefix);
        return s;
    }
    std::string param_prefix() const {
        std::string s;
        for (const auto& e : scopes_) s = e.param_root ? e.prefix : join(s, e.prefix);
        return s;
    }
    bool sharing() const {
        for (const auto& e : scopes_)
            if (e.param_root) return true;
        return false;
    }
    std::string auto_name(std::string type) {
        for (auto& c : type) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string base = join(node_prefix(), type);
        for (;;) {
            std::string local = type + "_" + std::to_string(counter_++);
            if (!graph_.has_node(join(node_prefix(), local))) return local;
        }
    }
    void fill(Parameter<T>& p, const ParamSpec& s) {
        switch (s.init) {
            case Init::zeros: std::fill(p.begin(), p.end(), T(0)); break;
            case Init::ones: std::fill(p.begin(), p.end(), T(1)); break;
            case Init::uniform_fan_in: {
                // splitmix64 stream seeded from the builder's engine: a few ns per value,
                // so the 138M weights of VGG-16 initialise in well under a second
                const double bound = s.scale > 0 ? 1.0 / std::sqrt(s.scale) : 0.0;
                std::uint64_t state = rng_();
                for (auto& x : p) {
                    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
                    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
                    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
                    z ^= z >> 31;
                    const double u = static_cast<double>(z >> 11) * 0x1.0p-53;  // [0, 1)
                    x = static_cast<T>(bound * (2.0 * u - 1.0));
                }
                break;
            }
            case Init::normal: {
                std::normal_distribution<double> d(0.0, s.scale);
                for (auto& x : p) x = static_cast<T>(d(rng_));
                break;
            }
        }
    }

    Graph<T> graph_;
    std::vector<ScopeEntry> scopes_;
    std::mt19937_64 rng_;
    std::uint64_t counter_ = 0;
};

}  // namespace spade
