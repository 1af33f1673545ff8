// Umbrella header of the model zoo: one include per network family.
#pragma once

#include "spade/models/densenet.hpp"
#include "spade/models/googlenet.hpp"
#include "spade/models/mobilenet.hpp"
#include "spade/models/resnet.hpp"
#include "spade/models/vgg.hpp"
#include "spade/models/dncnn.hpp"
#include "spade/models/edsr.hpp"
#include "spade/models/unet.hpp"
