// powergrad: umbrella header of the C++ API (cross-entropy ops and gradient-bucket transforms).
#pragma once

#include "powergrad/bucket.hpp"
#include "powergrad/bucket_types.hpp"
#include "powergrad/config.hpp"
#include "powergrad/host_config.hpp"
#include "powergrad/math/dtype.hpp"
#include "powergrad/math/xent_math.hpp"
#include "powergrad/status.hpp"
#include "powergrad/types.hpp"
#include "powergrad/xent.hpp"
#include "powergrad/xent_types.hpp"
