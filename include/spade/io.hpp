// Umbrella header of the file formats: safetensors weights and graph JSON.
#pragma once

#include "spade/io/graph_json.hpp"
#include "spade/io/safetensors.hpp"
#include "spade/io/weights.hpp"
