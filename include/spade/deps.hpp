// Umbrella header of the dependency layer: groups of coupled channels and trace_groups().
#pragma once

#include "spade/deps/group.hpp"
#include "spade/deps/trace.hpp"
