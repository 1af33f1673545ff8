// Umbrella header of the execution layer.
#pragma once

#include "spade/exec/executor.hpp"
#include "spade/exec/ops/fixed_point.hpp"
#include "spade/exec/compile.hpp"
