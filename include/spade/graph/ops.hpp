// Every built-in op family.
#pragma once

#include "spade/graph/ops/conv.hpp"
#include "spade/graph/ops/conv_transpose.hpp"
#include "spade/graph/ops/linear.hpp"
#include "spade/graph/ops/norm.hpp"
#include "spade/graph/ops/activation.hpp"
#include "spade/graph/ops/elementwise.hpp"
#include "spade/graph/ops/identity.hpp"
#include "spade/graph/ops/scale.hpp"
#include "spade/graph/ops/channel.hpp"
#include "spade/graph/ops/pool.hpp"
#include "spade/graph/ops/resample.hpp"
