// OpRegistry: type name -> factory, so a graph file can rebuild any op,
// built-in or the user's own. An op registers itself from its own header:
//
//     inline const bool my_op_registered = spade::register_op<MyOp>("MyOp");
//
// `MyOp<T>` needs `static MyOp from_attributes(const Attributes&)` (or, for an
// op owning subgraphs, `from_attributes(const Attributes&, std::vector<Graph<T>>)`).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "spade/graph/graph.hpp"

namespace spade {

/// Builds an op from its attributes and the subgraphs it owns.
template <Scalar T>
using OpFactory = std::function<std::unique_ptr<Op<T>>(const Attributes&, std::vector<Graph<T>>)>;

/// Registry of op factories for one scalar type.
template <Scalar T>
class OpRegistry {
public:
    /// The process-wide registry.
    static OpRegistry& global() {
        static OpRegistry r;
        return r;
    }
    /// Adds a factory; throws GraphError if the name is taken.
    void add(const std::string& type, OpFactory<T> f) {
        if (!factories_.emplace(type, std::move(f)).second) fail<GraphError>("op type '", type, "' is already registered");
    }
    bool has(const std::string& type) const { return factories_.count(type) != 0; }
    /// Builds an op; throws FormatError for an unknown type.
    std::unique_ptr<Op<T>> make(const std::string& type, const Attributes& a, std::vector<Graph<T>> subgraphs = {}) const {
        auto it = factories_.find(type);
        if (it == factories_.end()) fail<FormatError>("unknown op type '", type, "' (not registered)");
        return it->second(a, std::move(subgraphs));
    }
    std::vector<std::string> types() const {
        std::vector<std::string> t;
        for (const auto& [k, v] : factories_) t.push_back(k);
        return t;
    }

private:
    std::map<std::string, OpFactory<T>> factories_;
};

/// Registers op template `OpT` for float and double under `type`. Returns true
/// so it can initialise an inline variable in the op's header.
template <template <class> class OpT>
bool register_op(const std::string& type) {
    auto add = [&]<class T>() {
        OpRegistry<T>::global().add(type, [type](const Attributes& a, std::vector<Graph<T>> sub) -> std::unique_ptr<Op<T>> {
            if constexpr (requires { OpT<T>::from_attributes(a, std::move(sub)); }) {
                return std::make_unique<OpT<T>>(OpT<T>::from_attributes(a, std::move(sub)));
            } else {
                if (!sub.empty()) fail<FormatError>("op type '", type, "' takes no subgraphs, got ", sub.size());
                return std::make_unique<OpT<T>>(OpT<T>::from_attributes(a));
            }
        });
    };
    add.template operator()<float>();
    add.template operator()<double>();
    return true;
}

}  // namespace spade
