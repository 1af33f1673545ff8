// Umbrella header of the pruning layer: channel surgery, history, prune_groups().
#pragma once

#include "spade/prune/history.hpp"
#include "spade/prune/prune.hpp"
#include "spade/prune/surgery.hpp"
