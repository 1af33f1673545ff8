// The one translation unit that instantiates every built-in op, the executor
// and the graph for float and double (see SPADE_TEMPLATE_INSTANCE in
// graph/ops/common.hpp); every test file only declares them.
#define SPADE_INSTANTIATE_TEMPLATES
#include "spade/spade.hpp"
