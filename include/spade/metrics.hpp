// Umbrella header of the metrics layer.
#pragma once

#include "spade/metrics/count.hpp"
