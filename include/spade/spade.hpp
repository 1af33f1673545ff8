// spade: structured pruning of CNNs and model-based deep-learning networks.
// Includes every layer of the library.
#pragma once

#include "spade/core.hpp"
#include "spade/deps.hpp"
#include "spade/exec.hpp"
#include "spade/graph.hpp"
#include "spade/graph/shape_inference.hpp"
#include "spade/importance.hpp"
#include "spade/io.hpp"
#include "spade/metrics.hpp"
#include "spade/models.hpp"
#include "spade/prune.hpp"
#include "spade/tensor.hpp"
