// Scalar types a graph may hold and their names in files.
#pragma once

#include <concepts>
#include <string_view>

namespace spade {

/// The element types spade's graphs and kernels are instantiated for.
template <class T>
concept Scalar = std::same_as<T, float> || std::same_as<T, double>;

/// The safetensors / JSON dtype name of a scalar type.
template <Scalar T>
constexpr std::string_view dtype_name() {
    if constexpr (std::same_as<T, float>) return "F32";
    else return "F64";
}

}  // namespace spade
