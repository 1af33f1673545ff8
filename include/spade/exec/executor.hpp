// Executor: runs a Graph forward. It infers every shape for the given input
// shapes, plans activation buffers by lifetime (a buffer is reused once the
// last reader of its value has run), and calls each node's op in order.
// The plan is recompiled when input shapes or the graph change. With
// pre-packing on (set_prepack; InferenceModel turns it on), each op also packs
// its parameters once per plan (Op::pack); the packs are then stale if the
// parameter values change in place, which does not change the graph's version.
#pragma once

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <optional>
#include <initializer_list>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "spade/core/threading.hpp"
#include "spade/graph/graph.hpp"
#include "spade/graph/shape_inference.hpp"

namespace spade {

/// Memory plan and shapes for one set of input shapes.
struct ExecPlan {
    std::vector<Shape> input_shapes;
    std::vector<Shape> value_shapes;       ///< indexed by ValueId
    std::vector<int> buffer_of;            ///< buffer per value, -1 for graph inputs
    std::vector<Index> offset_of;          ///< element offset of each value in its buffer
    std::vector<Index> buffer_elements;    ///< size of each activation buffer
    std::vector<std::vector<Shape>> node_param_shapes;
    Index workspace_elements = 0;          ///< largest scratch any op needs
    Index packed_bytes = 0;                ///< bytes of pre-packed parameters (0 unless pre-packing)
    int threads = 0;                       ///< thread count chosen for this plan (Executor::set_thread_tuning)
    int threads_of = 0;                    ///< spade's thread count when it was chosen (0: not chosen)
    std::uint64_t graph_version = 0;

    /// Bytes of all activation buffers plus the workspace, for scalar size `bytes_per`.
    Index peak_bytes(Index bytes_per) const {
        Index n = workspace_elements;
        for (Index b : buffer_elements) n += b;
        return n * bytes_per;
    }
};

/// Runs a graph forward; see the file comment. Holds a reference to the graph.
template <Scalar T>
class Executor {
public:
    explicit Executor(const Graph<T>& graph) : graph_(&graph) {}

    /// Runs on one tensor per graph input (in declaration order); returns one tensor per output.
    std::vector<Tensor<T>> forward(std::span<const TensorRef<const T>> inputs) {
        run(inputs);
        std::vector<Tensor<T>> out;
        for (ValueId v : graph_->outputs()) out.emplace_back(value(v));
        return out;
    }
    std::vector<Tensor<T>> forward(std::initializer_list<TensorRef<const T>> inputs) {
        return forward(std::span<const TensorRef<const T>>(inputs.begin(), inputs.size()));
    }
    /// Single-input, single-output convenience.
    Tensor<T> forward(const Tensor<T>& x) {
        TensorRef<const T> r = x.ref();
        auto out = forward(std::span<const TensorRef<const T>>(&r, 1));
        if (out.size() != 1) fail<GraphError>("Executor::forward(x): graph has ", out.size(), " outputs, expected 1");
        return std::move(out[0]);
    }

    /// Runs without copying outputs out; read them with value().
    void run(std::span<const TensorRef<const T>> inputs) {
        const auto& g = *graph_;
        if (inputs.size() != g.inputs().size())
            fail<ShapeError>("graph expects ", g.inputs().size(), " input(s), got ", inputs.size());
        std::vector<Shape> shapes;
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            check_input(i, inputs[i].shape);
            shapes.push_back(inputs[i].shape);
        }
        if (plan_.value_shapes.empty() || plan_.input_shapes != shapes || plan_.graph_version != g.version())
            compile(shapes);
        inputs_.assign(inputs.begin(), inputs.end());
        int threads = num_threads();
        if (tune_threads_ && threads > 1 && !detail::in_parallel()) {  // inside a loop: one thread anyway
            if (plan_.threads_of != threads) plan_.threads = choose_threads(), plan_.threads_of = threads;
            threads = plan_.threads;
        }
        const ThreadCountScope scope(threads);
        pass(profiling_ ? &node_seconds_ : nullptr);
    }

    /// Turns pre-packing of parameters on or off (off by default), packing for the current
    /// plan at once. Only for parameters that stay fixed between plans: after changing
    /// values in place, call set_prepack(true) again (or use InferenceModel::refresh()).
    void set_prepack(bool on) {
        prepack_ = on;
        if (plan_.graph_version != graph_->version()) plan_ = ExecPlan{};  // stale: the next run plans and packs
        packed_.clear();
        plan_.packed_bytes = 0;
        plan_.threads_of = 0;  // timed with the other packing
        if (on && !plan_.value_shapes.empty()) packed_ = pack_all(plan_);
    }
    bool prepack() const { return prepack_; }

    /// Turns the choice of a thread count per plan on or off (off by default;
    /// InferenceModel turns it on). When on, the first run of each plan on more than one
    /// thread times whole passes on all of spade's threads, on half of them, and so on
    /// down to one (choose_threads: fewer threads only if at least 5% faster), which costs
    /// 7 or more passes once, and the runs that follow use the count chosen
    /// (ExecPlan::threads). A small network (a pruned one) can lose more to threads
    /// meeting at the end of every layer and to activations moving between the cores'
    /// caches than it gains from the second core. The choice holds for the plan (a moment
    /// of load on the machine when it was made included); switching tuning either way,
    /// set_prepack or a new plan drop it (set_thread_tuning(true) has the next run
    /// choose again).
    void set_thread_tuning(bool on) {
        tune_threads_ = on;
        plan_.threads = plan_.threads_of = 0;
    }
    bool thread_tuning() const { return tune_threads_; }

    /// Starts (or stops) adding up the wall time of every node over the runs that follow.
    void set_profiling(bool on) {
        profiling_ = on;
        node_seconds_.assign(graph_->nodes().size(), 0.0);
    }
    /// Seconds spent in each node (indexed by NodeId) since profiling was switched on.
    const std::vector<double>& node_seconds() const { return node_seconds_; }

    /// A value computed by the last run (valid until the next run; buffers are reused,
    /// so only graph outputs and values still live at the end are guaranteed intact).
    TensorRef<const T> value(ValueId v) const {
        if (plan_.buffer_of.at(static_cast<std::size_t>(v)) < 0) return inputs_.at(input_index(v));
        return in_buffer(plan_, buffers_, v);
    }

    /// The plan of the last run.
    const ExecPlan& plan() const { return plan_; }

    /// Infers all shapes for `input_shapes` and lays out buffers.
    void compile(const std::vector<Shape>& input_shapes) {
        const auto& g = *graph_;
        ExecPlan p;
        p.input_shapes = input_shapes;
        p.graph_version = g.version();
        p.value_shapes = infer_value_shapes(g, input_shapes);  // throws ShapeError naming the node
        p.buffer_of.assign(g.values().size(), -1);

        // last reader of each value; outputs live to the end
        const int end = static_cast<int>(g.nodes().size());
        std::vector<int> last(g.values().size(), -1);
        for (int i = 0; i < end; ++i)
            for (ValueId v : g.nodes()[i].inputs) last[v] = i;
        for (ValueId v : g.outputs()) last[v] = end;

        // values laid out inside another one (Concat inputs in its output): each
        // such value's place is (root value, offset); the root's buffer is taken when
        // the first of them is computed and lives to the last read of any of them
        const auto place = place_values(p);
        p.offset_of.assign(g.values().size(), 0);
        std::vector<int> last_of(g.values().size(), -1);
        for (std::size_t v = 0; v < g.values().size(); ++v) {
            p.offset_of[v] = place[v].second;
            last_of[place[v].first] = std::max(last_of[place[v].first], last[v]);
        }

        std::vector<int> free_list;  // buffers not holding a live value
        for (int i = 0; i < end; ++i) {
            const auto& n = g.nodes()[i];
            std::vector<Shape> in, out, ps = g.param_shapes(i);
            for (ValueId v : n.inputs) in.push_back(p.value_shapes[v]);
            for (ValueId v : n.outputs) out.push_back(p.value_shapes[v]);
            p.workspace_elements = std::max(p.workspace_elements, n.op->workspace_size(ShapeContext{n.name, in, ps}, out));
            p.node_param_shapes.push_back(ps);
            for (ValueId v : n.outputs) {
                const ValueId root = place[v].first;
                if (p.buffer_of[root] < 0) p.buffer_of[root] = take_buffer(p, free_list, p.value_shapes[root].numel());
                p.buffer_of[v] = p.buffer_of[root];
            }
            // release values whose last reader is this node (or that nobody reads)
            auto release = [&](ValueId v) {
                const ValueId root = place[v].first;
                if (p.buffer_of[root] >= 0 && last_of[root] <= i &&
                    std::find(free_list.begin(), free_list.end(), p.buffer_of[root]) == free_list.end())
                    free_list.push_back(p.buffer_of[root]);
            };
            for (ValueId v : n.inputs) release(v);
            for (ValueId v : n.outputs) release(v);
        }
        // allocate first, commit after: a failed allocation leaves no plan that claims buffers it lacks
        std::vector<std::vector<T>> buffers(p.buffer_elements.size());
        for (std::size_t b = 0; b < buffers.size(); ++b) buffers[b].resize(static_cast<std::size_t>(p.buffer_elements[b]));
        std::vector<T> workspace(static_cast<std::size_t>(p.workspace_elements));
        auto packed = prepack_ ? pack_all(p) : std::vector<std::unique_ptr<PackedParams>>{};
        auto refs = node_refs(p, buffers);  // moving the buffers below keeps their storage
        buffers_ = std::move(buffers);
        workspace_ = std::move(workspace);
        packed_ = std::move(packed);
        plan_ = std::move(p);
        refs_ = std::move(refs);
        if (profiling_) node_seconds_.resize(g.nodes().size(), 0.0);  // the graph may have grown
    }

private:
    void check_input(std::size_t i, const Shape& s) const {
        const auto& v = graph_->value(graph_->inputs()[i]);
        bool ok = s.rank() == v.shape.rank() && (s.rank() < 2 || s[1] == v.shape[1]);
        if (!ok) fail<ShapeError>("graph input '", v.name, "': got shape ", s, ", expected rank ", v.shape.rank(),
                                  v.shape.rank() >= 2 ? " with " + std::to_string(v.shape[1]) + " channels" : std::string(),
                                  " (like ", v.shape, ")");
    }
    // best fit among free buffers; grow the largest free one if none fits
    static int take_buffer(ExecPlan& p, std::vector<int>& free_list, Index need) {
        int best = -1;
        for (int b : free_list)
            if (p.buffer_elements[b] >= need && (best < 0 || p.buffer_elements[b] < p.buffer_elements[best])) best = b;
        if (best < 0 && !free_list.empty()) {
            best = *std::max_element(free_list.begin(), free_list.end(),
                                     [&](int a, int b) { return p.buffer_elements[a] < p.buffer_elements[b]; });
            p.buffer_elements[best] = need;
        }
        if (best < 0) {
            p.buffer_elements.push_back(need);
            return static_cast<int>(p.buffer_elements.size()) - 1;
        }
        free_list.erase(std::find(free_list.begin(), free_list.end(), best));
        return best;
    }
    // every node's Op::pack for the shapes of plan `p`, whose packed_bytes it sets
    std::vector<std::unique_ptr<PackedParams>> pack_all(ExecPlan& p) const {
        const auto& g = *graph_;
        std::vector<std::unique_ptr<PackedParams>> packed(g.nodes().size());
        for (std::size_t i = 0; i < packed.size(); ++i) {
            const auto& n = g.nodes()[i];
            std::vector<Shape> in;
            std::vector<TensorRef<const T>> ps;
            for (ValueId v : n.inputs) in.push_back(p.value_shapes[v]);
            for (ParamId q : n.params) ps.push_back(g.parameter(q).ref());
            packed[i] = n.op->pack(ShapeContext{n.name, in, p.node_param_shapes[i]}, ps);
            if (packed[i]) p.packed_bytes += packed[i]->bytes();
        }
        return packed;
    }
    // What each node reads and writes under a plan: the shapes (parameters' too: a parameter
    // reshaped outside surgery needs a new plan, as touch() says), and the places of values in
    // the plan's buffers, are fixed until the next plan; pass() sets the pointers that may
    // change between runs (graph inputs, parameters' storage). Building these per node and run
    // (a Shape copy per tensor) took 0.11 us per node on Zen 2: 16 of 35 us for a forward of
    // 150 tiny convs, as much as a small pruned layer.
    struct NodeRefs {
        std::vector<TensorRef<const T>> in, params;
        std::vector<TensorRef<T>> out;
        std::vector<std::pair<std::size_t, std::size_t>> graph_inputs;  // (slot in `in`, index of the graph input)
    };
    std::vector<NodeRefs> node_refs(const ExecPlan& p, std::vector<std::vector<T>>& buffers) const {
        const auto& g = *graph_;
        std::vector<NodeRefs> refs(g.nodes().size());
        for (std::size_t i = 0; i < refs.size(); ++i) {
            const auto& n = g.nodes()[i];
            auto& r = refs[i];
            for (ValueId v : n.inputs) {
                if (p.buffer_of[static_cast<std::size_t>(v)] >= 0) {
                    r.in.push_back(in_buffer(p, buffers, v));
                    continue;
                }
                assert(input_index(v) < g.inputs().size());
                r.graph_inputs.emplace_back(r.in.size(), input_index(v));
                r.in.push_back({nullptr, p.value_shapes[static_cast<std::size_t>(v)]});
            }
            for (ValueId v : n.outputs) r.out.push_back(in_buffer(p, buffers, v));
            for (ParamId q : n.params) r.params.push_back(g.parameter(q).ref());
        }
        return refs;
    }
    // Where value v lies in `buffers` under plan p (a value the plan gave a buffer)
    template <class Buffers>  // std::vector<std::vector<T>>, const or not
    static auto in_buffer(const ExecPlan& p, Buffers& buffers, ValueId v) {
        const auto k = static_cast<std::size_t>(v);
        using E = std::remove_pointer_t<decltype(buffers[0].data())>;
        return TensorRef<E>{buffers[static_cast<std::size_t>(p.buffer_of[k])].data() + p.offset_of[k], p.value_shapes[k]};
    }
    // Which graph input v is: a value without a buffer is one (the number of inputs if not)
    std::size_t input_index(ValueId v) const {
        const auto& ins = graph_->inputs();
        return static_cast<std::size_t>(std::find(ins.begin(), ins.end(), v) - ins.begin());
    }
    // Runs every node in order, adding each node's wall time to (*seconds)[i] when given.
    void pass(std::vector<double>* seconds) {
        const auto& g = *graph_;
        for (std::size_t i = 0; i < g.nodes().size(); ++i) {
            const auto& n = g.nodes()[i];
            auto& r = refs_[i];
            for (const auto& [slot, input] : r.graph_inputs) r.in[slot].data = inputs_[input].data;
            for (std::size_t k = 0; k < n.params.size(); ++k) r.params[k].data = g.parameter(n.params[k]).data();
            const auto t0 = seconds ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
            n.op->forward(ForwardContext<T>{n.name, r.in, r.out, r.params, std::span<T>(workspace_), packed(i)});
            if (seconds) (*seconds)[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
    }
    // The thread count of set_thread_tuning: rounds of whole passes, one on each
    // candidate count in turn, as many rounds as fit in about a tenth of a second (3 to
    // 9). A count is compared with all threads by the median over rounds of its time /
    // the all-thread time of the same round (so that a slow spell of the machine falls
    // on both), and replaces all threads only if that median is below 0.95: a choice
    // made on noise would stick for the whole plan.
    int choose_threads() {
        std::vector<int> counts;
        for (int n = num_threads(); n > 1; n /= 2) counts.push_back(n);
        counts.push_back(1);
        auto timed_pass = [&](int n) {
            const ThreadCountScope threads(n);
            const auto t0 = std::chrono::steady_clock::now();
            pass(nullptr);
            return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        };
        const double warm = timed_pass(counts[0]);
        const double budget = 0.1 / static_cast<double>(counts.size());
        const int rounds = std::clamp(static_cast<int>(budget / std::max(warm, 1e-9)), 3, 9);
        std::vector<std::vector<double>> ratios(counts.size());
        for (int r = 0; r < rounds; ++r) {
            const double all = timed_pass(counts[0]);
            for (std::size_t c = 1; c < counts.size(); ++c) ratios[c].push_back(timed_pass(counts[c]) / all);
        }
        int best = counts[0];
        double best_ratio = 0.95;
        for (std::size_t c = 1; c < counts.size(); ++c) {
            auto& q = ratios[c];
            std::nth_element(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(q.size() / 2), q.end());
            if (q[q.size() / 2] < best_ratio) best = counts[c], best_ratio = q[q.size() / 2];
        }
        return best;
    }
    const PackedParams* packed(std::size_t node) const { return node < packed_.size() ? packed_[node].get() : nullptr; }
    // Where each value lies: (root value, element offset in the root). Ops that lay
    // their inputs side by side (Op::input_placement) get them placed in their
    // output, walking back from the last node so that the outer of two nested concats
    // is laid out first. An op whose inputs all lie side by side already, inside a
    // later one's output (DenseNet: each layer's concat is a prefix of the next
    // layer's), becomes that part of it. A placement that would clash with one made
    // already (a value in two places, a graph input, the same value twice) leaves the
    // op to copy.
    std::vector<std::pair<ValueId, Index>> place_values(const ExecPlan& p) const {
        const auto& g = *graph_;
        using Place = std::pair<ValueId, Index>;
        std::vector<Place> parent(g.values().size(), Place{-1, 0});  // the value a value lies in, and where
        auto find = [&](ValueId v) {
            Index off = 0;
            while (parent[v].first >= 0) off += parent[v].second, v = parent[v].first;
            return Place{v, off};
        };
        std::vector<char> external(g.values().size(), 0);
        for (ValueId v : g.inputs()) external[v] = 1;
        for (int i = static_cast<int>(g.nodes().size()) - 1; i >= 0; --i) {
            const auto& n = g.nodes()[i];
            if (n.outputs.size() != 1) continue;
            const ValueId y = n.outputs[0];
            std::vector<Shape> in, out{p.value_shapes[y]};
            for (ValueId v : n.inputs) in.push_back(p.value_shapes[v]);
            const auto at = n.op->input_placement(in, out);
            if (at.size() != n.inputs.size() || at.empty()) continue;
            bool ok = true, all_placed = true;
            std::optional<Place> target;  // where the output lies, or will
            if (const Place py = find(y); py.first != y) target = py;
            for (std::size_t k = 0; ok && k < n.inputs.size(); ++k) {
                const ValueId v = n.inputs[k];
                ok = !external[v] && std::count(n.inputs.begin(), n.inputs.end(), v) == 1;
                const auto [r, off] = find(v);
                if (r == v) {
                    all_placed = false;
                } else if (!target) {
                    target = Place{r, off - at[k]};
                } else {
                    ok = ok && r == target->first && off == target->second + at[k];
                }
            }
            if (!ok) continue;
            if (find(y).first == y && target) {
                // the output becomes a part of another value: only over inputs already there
                if (!all_placed || target->second < 0 ||
                    target->second + out[0].numel() > p.value_shapes[target->first].numel())
                    continue;
                parent[y] = *target;
                continue;
            }
            for (std::size_t k = 0; k < n.inputs.size(); ++k)
                if (find(n.inputs[k]).first == n.inputs[k]) parent[n.inputs[k]] = Place{y, at[k]};
        }
        std::vector<Place> placed(g.values().size());
        for (std::size_t v = 0; v < placed.size(); ++v) placed[v] = find(static_cast<ValueId>(v));
        return placed;
    }

    const Graph<T>* graph_;
    ExecPlan plan_;
    std::vector<std::vector<T>> buffers_;
    std::vector<T> workspace_;
    std::vector<std::unique_ptr<PackedParams>> packed_;  ///< per node, when pre-packing
    bool prepack_ = false;
    bool tune_threads_ = false;
    std::vector<TensorRef<const T>> inputs_;
    std::vector<NodeRefs> refs_;  ///< per node, for the current plan
    bool profiling_ = false;
    std::vector<double> node_seconds_;
};

}  // namespace spade
