// Umbrella header of the graph layer: graph, builder, registry and every built-in op.
#pragma once

#include "spade/graph/builder.hpp"
#include "spade/graph/graph.hpp"
#include "spade/graph/ops.hpp"
#include "spade/graph/registry.hpp"
