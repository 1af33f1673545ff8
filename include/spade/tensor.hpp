// Umbrella header of the tensor layer.
#pragma once

#include "spade/tensor/shape.hpp"
#include "spade/tensor/tensor.hpp"
#include "spade/tensor/view.hpp"
