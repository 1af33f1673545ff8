// Every built-in op family.
#pragma once

#include "spade/graph/ops/conv.hpp"
