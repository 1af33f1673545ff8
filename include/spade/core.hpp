// Umbrella header of the core layer.
#pragma once

#include "spade/core/error.hpp"
#include "spade/core/scalar.hpp"
#include "spade/core/threading.hpp"
