// powergrad: umbrella header of the C++ API.
#pragma once

#include "powergrad/config.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/math/xent_math.hpp"
#include "powergrad/status.hpp"
#include "powergrad/xent.hpp"
#include "powergrad/xent_types.hpp"
