// Umbrella header.
#pragma once

#include "trainrt/device.hpp"
#include "trainrt/dtype.hpp"
#include "trainrt/error.hpp"
#include "trainrt/log.hpp"
#include "trainrt/losses.hpp"
#include "trainrt/softmax.hpp"
#include "trainrt/tensor.hpp"
#include "trainrt/version.hpp"
