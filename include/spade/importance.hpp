// Umbrella header of the importance layer: policy concepts, criteria, reductions, normalizers.
#pragma once

#include "spade/importance/concepts.hpp"
#include "spade/importance/importance.hpp"
#include "spade/importance/magnitude.hpp"
#include "spade/importance/reduce.hpp"
