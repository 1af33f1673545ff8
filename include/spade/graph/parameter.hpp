// Parameter: a named tensor of a graph that either owns its storage or views
// a buffer the caller owns (their training code, an mmap'd file, ...).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "spade/core/scalar.hpp"
#include "spade/tensor/tensor.hpp"

namespace spade {

/// A learnable weight or a buffer (BN running statistics) of a graph.
/// One parameter may be used by several nodes: that is weight sharing.
template <Scalar T>
class Parameter {
public:
    /// Zero-filled parameter owning its storage.
    Parameter(std::string name, Shape shape, bool learnable = true)
        : name_(std::move(name)), shape_(std::move(shape)), learnable_(learnable),
          owned_(static_cast<std::size_t>(shape_.numel())), data_(owned_.data()) {}

    /// Parameter viewing `data`, which must hold `shape.numel()` elements and outlive the graph.
    static Parameter view(std::string name, Shape shape, T* data, bool learnable = true) {
        if (data == nullptr && shape.numel() > 0) fail<ShapeError>("parameter '", name, "': null buffer for shape ", shape);
        Parameter p(std::move(name), Shape{}, learnable);
        p.owned_.clear();
        p.shape_ = std::move(shape);
        p.data_ = data;
        return p;
    }

    Parameter(const Parameter& o)
        : name_(o.name_), shape_(o.shape_), learnable_(o.learnable_), owned_(o.data_, o.data_ + o.shape_.numel()),
          data_(owned_.data()) {  // a copy always owns: the caller's buffer belongs to the original
        for (const auto& s : o.states_) {
            State c{s.name, std::vector<T>(s.data, s.data + numel()), nullptr};
            c.data = c.owned.data();
            states_.push_back(std::move(c));
        }
    }
    Parameter(Parameter&& o) noexcept = default;
    Parameter& operator=(Parameter o) noexcept {
        swap(o);
        return *this;
    }
    void swap(Parameter& o) noexcept {
        std::swap(name_, o.name_), std::swap(shape_, o.shape_), std::swap(learnable_, o.learnable_);
        std::swap(owned_, o.owned_), std::swap(data_, o.data_), std::swap(states_, o.states_);
    }

    const std::string& name() const { return name_; }
    const Shape& shape() const { return shape_; }
    Index numel() const { return shape_.numel(); }
    /// True for weights trained by gradient; false for buffers such as running statistics.
    bool learnable() const { return learnable_; }
    /// True when the storage belongs to the parameter, false when it views the caller's buffer.
    bool owns_storage() const { return !owned_.empty() || shape_.numel() == 0; }
    T* data() { return data_; }
    const T* data() const { return data_; }
    TensorRef<T> ref() { return {data_, shape_}; }
    TensorRef<const T> ref() const { return {data_, shape_}; }
    T* begin() { return data_; }
    T* end() { return data_ + numel(); }
    const T* begin() const { return data_; }
    const T* end() const { return data_ + numel(); }

    /// Shrinks the view to `shape` (no more elements than now) over the same buffer.
    /// Used by channel surgery after it has moved the kept slices to the front.
    void shrink_to(Shape shape) {
        if (shape.numel() > numel()) fail<ShapeError>("parameter '", name_, "': cannot grow from ", shape_, " to ", shape);
        shape_ = std::move(shape);
    }

    // -- state that follows the parameter --------------------------------------
    // Per-element buffers laid out like the parameter (its gradient, optimizer
    // moments, a Hessian diagonal): channel surgery rewrites them with it.

    /// Adds a zero-filled state owned by the parameter and returns it; throws if `name` exists.
    T* add_state(const std::string& name) {
        check_new_state(name);
        State s{name, std::vector<T>(static_cast<std::size_t>(numel())), nullptr};
        s.data = s.owned.data();
        states_.push_back(std::move(s));
        return states_.back().data;
    }
    /// Registers a caller-owned buffer of `numel()` elements as state `name`; it must outlive the parameter.
    void attach_state(const std::string& name, T* data) {
        if (data == nullptr && numel() > 0) fail<ShapeError>("parameter '", name_, "': null buffer for state '", name, "'");
        check_new_state(name);
        auto overlaps = [&](const T* other) { return numel() > 0 && data < other + numel() && other < data + numel(); };
        bool alias = overlaps(data_);
        for (const auto& s : states_) alias = alias || overlaps(s.data);
        if (alias)
            fail<GraphError>("parameter '", name_, "': the buffer of state '", name,
                             "' overlaps the parameter or another state; surgery would rewrite it twice");
        states_.push_back({name, {}, data});
    }
    /// The state called `name`, or nullptr.
    T* state(const std::string& name) {
        for (auto& s : states_)
            if (s.name == name) return s.data;
        return nullptr;
    }
    const T* state(const std::string& name) const { return const_cast<Parameter*>(this)->state(name); }
    /// Names of the states, in the order they were added.
    std::vector<std::string> state_names() const {
        std::vector<std::string> n;
        for (const auto& s : states_) n.push_back(s.name);
        return n;
    }
    /// Calls f(T*) on the buffer and every state buffer (what surgery rewrites).
    template <class F>
    void for_each_buffer(F&& f) {
        f(data_);
        for (auto& s : states_) f(s.data);
    }

private:
    struct State {
        std::string name;
        std::vector<T> owned;
        T* data = nullptr;
    };
    void check_new_state(const std::string& name) const {
        for (const auto& s : states_)
            if (s.name == name) fail<GraphError>("parameter '", name_, "': state '", name, "' already exists");
    }

    std::string name_;
    Shape shape_;
    bool learnable_ = true;
    std::vector<T> owned_;
    T* data_ = nullptr;
    std::vector<State> states_;
};

}  // namespace spade
