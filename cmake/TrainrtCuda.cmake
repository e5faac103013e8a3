# Decides whether the CUDA backend module is built (TRAINRT_WITH_CUDA = AUTO | ON | OFF) and
# enables the CUDA language if so. AUTO builds it when nvcc is found; ON fails without nvcc.
# Looks at the compiler only, never at a GPU: configuring works on a machine without one.
include(CheckLanguage)

set(TRAINRT_CUDA_ENABLED OFF)
string(TOUPPER "${TRAINRT_WITH_CUDA}" _trainrt_cuda_mode)
if(NOT _trainrt_cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "TRAINRT_WITH_CUDA must be AUTO, ON or OFF, got '${TRAINRT_WITH_CUDA}'")
endif()

if(NOT _trainrt_cuda_mode STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(TRAINRT_CUDA_ENABLED ON)
  elseif(_trainrt_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "TRAINRT_WITH_CUDA=ON but no CUDA compiler (nvcc) was found")
  else()
    message(STATUS "trainrt: nvcc not found, the CUDA backend module is not built")
  endif()
endif()
