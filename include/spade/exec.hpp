// Umbrella header of the execution layer.
#pragma once

#include "spade/exec/executor.hpp"
