// Umbrella header.
#pragma once

#include "trainrt/amp.hpp"
#include "trainrt/checkpoint.hpp"
#include "trainrt/clip.hpp"
#include "trainrt/data.hpp"
#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/error.hpp"
#include "trainrt/log.hpp"
#include "trainrt/losses.hpp"
#include "trainrt/optim.hpp"
#include "trainrt/parameter.hpp"
#include "trainrt/schedulers.hpp"
#include "trainrt/softmax.hpp"
#include "trainrt/state_dict.hpp"
#include "trainrt/tensor.hpp"
#include "trainrt/version.hpp"
