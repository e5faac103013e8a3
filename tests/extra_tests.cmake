# Extra test targets, included by tests/CMakeLists.txt.

# ---- fake CUDA backend modules for test_device ---------------------------------------------
# The same source built once per failure mode, each as <build>/fake_backends/<mode>/
# libtrainrt_cuda.so: the name and layout the loader looks for. The generator expression in
# the output directory keeps multi-config generators from adding a per-config subdirectory.
set(TRAINRT_FAKE_BACKEND_DIR ${CMAKE_BINARY_DIR}/fake_backends)
set(TRAINRT_FAKE_BACKENDS
  wrong_version:FAKE_WRONG_VERSION
  wrong_args:FAKE_WRONG_ARGS
  null_entry:FAKE_NULL_ENTRY
  no_entry:FAKE_NO_ENTRY
  zero_devices:FAKE_ZERO_DEVICES
  no_driver:FAKE_NO_DRIVER
  host_memory:FAKE_HOST_MEMORY)

if(TARGET test_device)
  foreach(spec IN LISTS TRAINRT_FAKE_BACKENDS)
    string(REPLACE ":" ";" spec "${spec}")
    list(GET spec 0 mode)
    list(GET spec 1 define)
    set(target trainrt_fake_backend_${mode})
    add_library(${target} MODULE ${CMAKE_CURRENT_SOURCE_DIR}/fake_backend_module.cpp)
    target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/src/backend)
    target_compile_definitions(${target} PRIVATE ${define})
    set_target_properties(${target} PROPERTIES
      PREFIX "lib"
      OUTPUT_NAME trainrt_cuda
      LIBRARY_OUTPUT_DIRECTORY ${TRAINRT_FAKE_BACKEND_DIR}/${mode}$<0:>
      CXX_VISIBILITY_PRESET hidden)
    add_dependencies(test_device ${target})
  endforeach()
  target_compile_definitions(test_device PRIVATE
    TRAINRT_FAKE_BACKEND_DIR="${TRAINRT_FAKE_BACKEND_DIR}")

  # The TRAINRT_BACKEND_PATH route, end to end: a fresh process whose first probe follows
  # the variable. DeviceEnv.* skip unless TRAINRT_BACKEND_PATH is set, so the regular
  # expressions make a skipped or missing test fail here.
  add_test(NAME device_env_backend_path_wrong_version
           COMMAND test_device --gtest_filter=DeviceEnv.*)
  set_tests_properties(device_env_backend_path_wrong_version PROPERTIES
    ENVIRONMENT "TRAINRT_BACKEND_PATH=${TRAINRT_FAKE_BACKEND_DIR}/wrong_version;TRAINRT_TEST_EXPECT_REASON=backend API version 999"
    FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
    TIMEOUT 60)
  # A list: a missing entry first, then a module file named directly.
  add_test(NAME device_env_backend_path_list
           COMMAND test_device --gtest_filter=DeviceEnv.*)
  set_tests_properties(device_env_backend_path_list PROPERTIES
    ENVIRONMENT "TRAINRT_BACKEND_PATH=${CMAKE_BINARY_DIR}/no_such_dir:${TRAINRT_FAKE_BACKEND_DIR}/no_driver/libtrainrt_cuda.so;TRAINRT_TEST_EXPECT_REASON=no CUDA driver (fake)"
    FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
    TIMEOUT 60)
endif()

# ---- tensors on two devices, without a GPU ------------------------------------------------
# The fake host-memory "cuda" device of fake_backend_module.cpp stands in for a second device:
# the checks that refuse params, grads or a GradScaler spanning two devices run before any
# kernel. The tests skip without a CUDA device, so a skip fails here.
# (The ops' device checks run on the CPU instance only: on the fake device itself an op
# stops earlier, at "not supported".)
if(TARGET test_optim AND TARGET test_clip_amp AND TARGET test_bad_input AND TARGET test_device)
  add_test(NAME multi_device_errors_optim
           COMMAND test_optim --gtest_filter=OptimDevices.*)
  add_test(NAME multi_device_errors_clip_amp
           COMMAND test_clip_amp --gtest_filter=ClipDevices.*:ScalerDevices.*)
  add_test(NAME multi_device_errors_ops
           COMMAND test_bad_input --gtest_filter=*TensorsOnDifferentDevices/cpu)
  foreach(t multi_device_errors_optim multi_device_errors_clip_amp multi_device_errors_ops)
    set_tests_properties(${t} PROPERTIES
      ENVIRONMENT "TRAINRT_BACKEND_PATH=${TRAINRT_FAKE_BACKEND_DIR}/host_memory"
      FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
      TIMEOUT 60)
  endforeach()
endif()

# ---- CUDA graph capture refusals, on the fake host-memory device ---------------------------
# Its graph_begin / graph_end pretend a capture in which host copies and allocations fail, so
# the checks that refuse what cannot be captured run in CI; a skip fails here.
if(TARGET test_graph)
  add_test(NAME graph_capture_refusals COMMAND test_graph --gtest_filter=CaptureRefusals.*)
  if(TARGET trainrt_fake_backend_host_memory)
    add_dependencies(test_graph trainrt_fake_backend_host_memory)
  endif()
  set_tests_properties(graph_capture_refusals PROPERTIES
    ENVIRONMENT "TRAINRT_BACKEND_PATH=${TRAINRT_FAKE_BACKEND_DIR}/host_memory"
    FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
    TIMEOUT 60)
endif()

# ---- test binaries run against a stand-in libtrainrt_cuda.so -------------------------------
# trainrt_add_module_tests(<prefix> <module dir> MODULE <target> TIMEOUT <s> SPECS
# "name:binary:gtest_filter"... SUITES <test targets>... [PROPERTIES <test properties>...]):
# one ctest per spec, plus "<prefix>_<suite>:<target>:*/cuda" for every suite that is built,
# each with TRAINRT_BACKEND_PATH=<module dir> and failing on a skip.
function(trainrt_add_module_tests prefix dir)
  cmake_parse_arguments(ARG "" "MODULE;TIMEOUT" "SPECS;SUITES;PROPERTIES" ${ARGN})
  set(specs ${ARG_SPECS})
  foreach(t IN LISTS ARG_SUITES)
    if(TARGET ${t})
      string(REPLACE "test_" "" short ${t})
      list(APPEND specs "${prefix}_${short}:${t}:*/cuda")
    endif()
  endforeach()
  foreach(spec IN LISTS specs)
    string(REGEX MATCH "^([^:]+):([^:]+):(.*)$" _ "${spec}")
    add_test(NAME ${CMAKE_MATCH_1} COMMAND ${CMAKE_MATCH_2} --gtest_filter=${CMAKE_MATCH_3})
    set_tests_properties(${CMAKE_MATCH_1} PROPERTIES
      ENVIRONMENT "TRAINRT_BACKEND_PATH=${dir}"
      FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
      TIMEOUT ${ARG_TIMEOUT} ${ARG_PROPERTIES})
    add_dependencies(${CMAKE_MATCH_2} ${ARG_MODULE})
  endforeach()
endfunction()

# ---- CUDA graphs replayed on a simulated device --------------------------------------------
# fake_recording_backend.cpp: a "cuda" device with host memory and the CPU backend's kernels
# (compiled into the module) that records the calls of a capture, with their argument lists
# copied as a real capture bakes them, and runs them again at each replay; host copies,
# synchronizes, allocations and frees inside a capture fail and invalidate it. The GPU graph
# tests of test_graph.cpp thereby run in CI, with SimulatedDevice* (transfer counts,
# refusals of a warmed-up optimizer, an invalidated capture, frees during a capture), and so
# do the /cuda cases of the optimizer, clip and scaler tests and of the suites listed below:
# the core's paths for one device that is not the CPU, though not the CUDA kernels. A skip
# fails here.
if(TARGET test_graph AND TARGET test_optim AND TARGET test_clip_amp)
  add_library(trainrt_fake_backend_recording MODULE
    ${CMAKE_CURRENT_SOURCE_DIR}/fake_recording_backend.cpp
    ${PROJECT_SOURCE_DIR}/src/backend/cpu_backend.cpp
    ${PROJECT_SOURCE_DIR}/src/backend/cpu_gemm.cpp
    ${PROJECT_SOURCE_DIR}/kernels/cpu/cpu_dispatch.cpp
    $<TARGET_OBJECTS:trainrt_cpu_kernels_base>)
  target_include_directories(trainrt_fake_backend_recording PRIVATE
    ${PROJECT_SOURCE_DIR}/src/backend ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include
    ${CMAKE_BINARY_DIR}/include)
  target_include_directories(trainrt_fake_backend_recording SYSTEM PRIVATE
    ${OPENBLAS_INCLUDE_DIRS})
  target_link_libraries(trainrt_fake_backend_recording PRIVATE fmt::fmt spdlog::spdlog
    OpenMP::OpenMP_CXX ${CMAKE_DL_LIBS})
  target_link_options(trainrt_fake_backend_recording PRIVATE "LINKER:--no-undefined")
  set_target_properties(trainrt_fake_backend_recording PROPERTIES
    PREFIX "lib"
    OUTPUT_NAME trainrt_cuda
    LIBRARY_OUTPUT_DIRECTORY ${TRAINRT_FAKE_BACKEND_DIR}/recording$<0:>
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  # The /cuda cases of the other suites that have them, for the core's device paths there
  # (tensor copies and casts, layers, softmax, checkpoints of device tensors, batches on the
  # device). The losses and the CPU/CUDA parity suites stay out: on this device they would
  # only compare the CPU kernels with themselves, slowly.
  trainrt_add_module_tests(simulated_device ${TRAINRT_FAKE_BACKEND_DIR}/recording
    MODULE trainrt_fake_backend_recording
    TIMEOUT 300
    SPECS
      "simulated_device_graphs:test_graph:CudaGraphCuda.*:CaptureRefusals.*:SimulatedDevice*"
      "simulated_device_optim:test_optim:*/cuda"
      "simulated_device_clip_amp:test_clip_amp:*/cuda"
    SUITES test_dtype_tensor test_nn test_softmax test_checkpoint test_data)
  target_compile_definitions(test_graph PRIVATE
    TRAINRT_FAKE_RECORDING_MODULE="${TRAINRT_FAKE_BACKEND_DIR}/recording/libtrainrt_cuda.so")
endif()

# ---- a scheduler held in a global, destroyed at exit ----------------------------------------
add_executable(scheduler_at_exit ${CMAKE_CURRENT_SOURCE_DIR}/scheduler_at_exit.cpp)
target_link_libraries(scheduler_at_exit PRIVATE trainrt::trainrt)
add_test(NAME scheduler_destroyed_at_exit COMMAND scheduler_at_exit)
# The exit status decides (0 only with the right lr and a clean exit).
set_tests_properties(scheduler_destroyed_at_exit PROPERTIES TIMEOUT 60)

# ---- the core never links CUDA ----------------------------------------------------------
# libtrainrt.so must load on machines without CUDA libraries: ldd must not list any.
add_test(NAME trainrt_core_links_no_cuda
         COMMAND sh -c "out=$(ldd \"$1\") || exit 1; echo \"$out\"; if echo \"$out\" | grep -Ei 'cuda|cublas'; then echo 'libtrainrt links CUDA libraries'; exit 1; fi"
                 sh $<TARGET_FILE:trainrt>)
set_tests_properties(trainrt_core_links_no_cuda PROPERTIES TIMEOUT 60)

# ---- the library as a user sees it ------------------------------------------------------
# Exported symbols: the trainrt namespace and trainrt_* C entry points only.
add_test(NAME trainrt_exports_only_api
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/check_exports.sh $<TARGET_FILE:trainrt>)
# Public headers: self-contained, warning-free with -Wall -Wextra -Werror -pedantic, and free
# of CUDA, OpenMP, spdlog and fmt headers.
add_test(NAME trainrt_public_headers
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/check_public_headers.sh ${CMAKE_CXX_COMPILER}
                 ${PROJECT_SOURCE_DIR}/include ${PROJECT_BINARY_DIR}/include)
set_tests_properties(trainrt_exports_only_api trainrt_public_headers PROPERTIES TIMEOUT 120)

# ---- every CPU kernel build runs the op suites --------------------------------------------
# The machine picks one ISA level; TRAINRT_CPU_ISA forces the lower ones so the baseline and
# x86-64-v3 builds are tested too (each as one process over the CPU cases).
if(TRAINRT_MULTI_ISA_ACTIVE)
  foreach(isa baseline x86-64-v3)
    foreach(exe test_device test_softmax test_losses test_torch_golden test_optim test_clip_amp)
      if(TARGET ${exe})
        set(filter "*/cpu:*Cpu*:CpuIsa.*")
        add_test(NAME ${exe}_isa_${isa} COMMAND ${exe} --gtest_filter=${filter})
        set_tests_properties(${exe}_isa_${isa} PROPERTIES
          ENVIRONMENT "TRAINRT_CPU_ISA=${isa}" TIMEOUT 300)
      endif()
    endforeach()
  endforeach()
endif()

# ---- both prefetch forms of the optimizer-family CPU loops run the op suites --------------
# The fused steps and the norm pass prefetch in software on Intel CPUs and leave it to the
# hardware elsewhere (kernels/cpu/cpu_dispatch.h); TRAINRT_CPU_PREFETCH forces each form, so
# both are tested on any machine (their loops are blocked differently without prefetches).
foreach(pf on off)
  foreach(exe test_device test_optim test_clip_amp test_train_golden)
    if(TARGET ${exe})
      add_test(NAME ${exe}_prefetch_${pf} COMMAND ${exe} --gtest_filter=*/cpu:*Cpu*)
      set_tests_properties(${exe}_prefetch_${pf} PROPERTIES
        ENVIRONMENT "TRAINRT_CPU_PREFETCH=${pf}" TIMEOUT 300)
    endif()
  endforeach()
endforeach()

# A value it does not know is named as ignored in the CPU device description.
if(TARGET test_device)
  add_test(NAME test_device_prefetch_bad_value COMMAND test_device --gtest_filter=CpuPrefetch.*)
  set_tests_properties(test_device_prefetch_bad_value PROPERTIES
    ENVIRONMENT "TRAINRT_CPU_PREFETCH=yes please" TIMEOUT 60)
endif()

# ---- test_data writes gzip files of its own ------------------------------------------------
if(TARGET test_data)
  target_link_libraries(test_data PRIVATE ZLIB::ZLIB)
endif()

# ---- PyTorch loads the safetensors files trainrt writes -----------------------------------
# test_checkpoint writes the file, then Debian's python3-torch (/usr/bin/python3, not a
# python3 on PATH) reads it with a minimal reader and torch.frombuffer. Skipped (77) where
# /usr/bin/python3 cannot import torch.
if(TARGET test_checkpoint)
  add_test(NAME checkpoint_torch_loads_safetensors
           COMMAND sh -c "\"$1\" --gtest_filter=CheckpointTorch.WriteFixture --gtest_brief=1 && if [ -x /usr/bin/python3 ]; then exec /usr/bin/python3 \"$2\" \"$3\"; else echo 'SKIP: no /usr/bin/python3'; exit 77; fi"
                   sh $<TARGET_FILE:test_checkpoint>
                   ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/check_safetensors_torch.py
                   ${CMAKE_CURRENT_BINARY_DIR}/checkpoint_torch_check.safetensors)
  set_tests_properties(checkpoint_torch_loads_safetensors PROPERTIES
    ENVIRONMENT "TRAINRT_TORCH_CHECK_FILE=${CMAKE_CURRENT_BINARY_DIR}/checkpoint_torch_check.safetensors"
    SKIP_RETURN_CODE 77
    TIMEOUT 120)
endif()

# ---- the trainrt command line, end to end -------------------------------------------------
# train / lr-find / compare on a tiny CSV dataset the script writes (exit status, metrics,
# checkpoints, CSVs), and bad configs (missing file, invalid JSON, unknown optimizer, no
# data.train) that must fail with status 1 and their message.
if(TARGET trainrt_cli)
  foreach(mode good bad)
    add_test(NAME trainrt_cli_${mode}_config
             COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/cli_commands.sh ${mode}
                     $<TARGET_FILE:trainrt_cli> ${CMAKE_CURRENT_BINARY_DIR}/cli_${mode})
    set_tests_properties(trainrt_cli_${mode}_config PROPERTIES TIMEOUT 60)
  endforeach()
endif()

# ---- the examples -------------------------------------------------------------------------
# examples/ is added after tests/, so its targets do not exist yet here: the tests are added
# at the end of the top-level directory, each only when its example target was built.
function(trainrt_add_example_tests)
  set(src ${PROJECT_SOURCE_DIR}/tests)
  set(work ${PROJECT_BINARY_DIR}/tests/example_runs)
  if(TARGET regression_losses)
    # Small (1000 train samples, 15 epochs): --check exits 1 unless the L1 and Huber runs
    # reach a clean-test MAE below 0.9 x the MSE run's.
    add_test(NAME example_regression_losses_check
             COMMAND regression_losses --device cpu --train 1000 --test 500 --epochs 15
                     --check --out ${work}/regression_losses.csv)
    # The same check on data without outliers must fail: the check above can fail.
    add_test(NAME example_regression_losses_check_can_fail
             COMMAND sh ${src}/examples_check.sh regression-check-fails
                     $<TARGET_FILE:regression_losses> ${work}/regression_no_outliers)
    set_tests_properties(example_regression_losses_check
                         example_regression_losses_check_can_fail PROPERTIES TIMEOUT 60)
  endif()
  if(TARGET optimizer_comparison)
    add_test(NAME example_optimizer_comparison_synthetic
             COMMAND sh ${src}/examples_check.sh optimizer-csv
                     $<TARGET_FILE:optimizer_comparison> ${work}/optimizer_comparison)
    set_tests_properties(example_optimizer_comparison_synthetic PROPERTIES TIMEOUT 60)
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${PROJECT_SOURCE_DIR} CALL trainrt_add_example_tests)

# An unusable OpenBLAS, in a fresh process (the library is opened once): a missing file, and a
# library without the CBLAS symbols (zlib). CpuGemmEnv.* skips unless TRAINRT_OPENBLAS is set,
# so the regular expression makes a skipped or missing test fail here.
add_test(NAME cpu_gemm_openblas_missing COMMAND test_nn --gtest_filter=CpuGemmEnv.*)
set_tests_properties(cpu_gemm_openblas_missing PROPERTIES
  ENVIRONMENT "TRAINRT_OPENBLAS=${CMAKE_BINARY_DIR}/no_such_dir/libopenblas.so.0;TRAINRT_TEST_EXPECT_REASON=the CPU GEMM needs OpenBLAS"
  FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
  TIMEOUT 60)
add_test(NAME cpu_gemm_openblas_not_openblas COMMAND test_nn --gtest_filter=CpuGemmEnv.*)
set_tests_properties(cpu_gemm_openblas_not_openblas PROPERTIES
  ENVIRONMENT "TRAINRT_OPENBLAS=libz.so.1;TRAINRT_TEST_EXPECT_REASON=lacks cblas_sgemm"
  FAIL_REGULAR_EXPRESSION "SKIPPED;FAILED; 0 tests from"
  TIMEOUT 60)

# ---- the CUDA module's own sources on an emulated device ------------------------------------
# tests/cuda_emu: kernels/cuda/*.cu and the module's host code compiled as C++ for the CPU,
# with the CUDA runtime and cuBLAS calls they make implemented on the host (cuda_emu.cpp) and
# every kernel run with its blocks one after another and its threads as fibers (cuda_emu.h).
# The result is a libtrainrt_cuda.so that computes with the CUDA kernels' code, so the CUDA
# parity suite and the /cuda cases of the other suites check that code in CI, where no GPU is.
# Needs the CUDA headers only (not nvcc), so the sanitizer build runs it too. What it cannot
# check is listed at the top of cuda_emu.cpp. A skip fails here.
option(TRAINRT_CUDA_EMULATOR "Build the CUDA emulator module and its tests" ON)
if(TRAINRT_CUDA_EMULATOR AND NOT CUDAToolkit_FOUND)
  find_package(CUDAToolkit QUIET)
endif()
if(TRAINRT_CUDA_EMULATOR AND CUDAToolkit_FOUND AND TARGET test_cuda_parity)
  set(TRAINRT_EMU_DIR ${CMAKE_BINARY_DIR}/cuda_emu)
  set(TRAINRT_EMU_SOURCES
    ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/cuda_emu.cpp
    ${PROJECT_SOURCE_DIR}/kernels/cuda/cuda_backend.cpp
    ${PROJECT_SOURCE_DIR}/kernels/cuda/cuda_context.cpp)
  # The .cu files through one-line C++ wrappers, so they compile as C++ in this target only.
  foreach(cu amp cast cross_entropy multi_tensor_norm multi_tensor_scale nn optim
             pointwise_loss softmax)
    set(wrapper ${TRAINRT_EMU_DIR}/src/${cu}.cpp)
    set(content "#include \"${PROJECT_SOURCE_DIR}/kernels/cuda/${cu}.cu\"\n")
    if(EXISTS ${wrapper})
      file(READ ${wrapper} old)
    else()
      set(old "")
    endif()
    if(NOT old STREQUAL content)
      file(WRITE ${wrapper} "${content}")
    endif()
    list(APPEND TRAINRT_EMU_SOURCES ${wrapper})
  endforeach()
  add_library(trainrt_cuda_emu MODULE ${TRAINRT_EMU_SOURCES})
  target_include_directories(trainrt_cuda_emu PRIVATE ${PROJECT_SOURCE_DIR}/kernels/cuda)
  target_include_directories(trainrt_cuda_emu SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_definitions(trainrt_cuda_emu PRIVATE TRAINRT_KNS=cuda_kern)
  # No FMA contraction anywhere (the module's optimizer kernels are built with --fmad=false;
  # its other kernels may contract on a GPU, which the parity tolerances allow for).
  target_compile_options(trainrt_cuda_emu PRIVATE
    -include ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/cuda_emu.h
    ${TRAINRT_WARNINGS} -Wno-unknown-pragmas -ffp-contract=off
    # for_each_pack loads and uses a pack under the same j < packs test, which GCC cannot see
    -Wno-uninitialized -Wno-maybe-uninitialized)
  find_package(Threads REQUIRED)
  target_link_libraries(trainrt_cuda_emu PRIVATE Threads::Threads)
  target_link_options(trainrt_cuda_emu PRIVATE
    "LINKER:--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/cuda_emu.map"
    "LINKER:--no-undefined")
  set_target_properties(trainrt_cuda_emu PROPERTIES
    PREFIX "lib"
    OUTPUT_NAME trainrt_cuda
    LIBRARY_OUTPUT_DIRECTORY ${TRAINRT_EMU_DIR}$<0:>
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    LINK_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/cuda_emu.map)
  # The emulator's own tests: its execution model, its failures and its capture rules.
  add_executable(test_cuda_emu ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/test_cuda_emu.cpp
                               ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/cuda_emu.cpp)
  target_include_directories(test_cuda_emu SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_options(test_cuda_emu PRIVATE
    -include ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/cuda_emu.h ${TRAINRT_WARNINGS})
  target_link_libraries(test_cuda_emu PRIVATE GTest::gtest_main Threads::Threads)
  add_test(NAME test_cuda_emu COMMAND test_cuda_emu)
  set_tests_properties(test_cuda_emu PROPERTIES TIMEOUT 120
    ENVIRONMENT_MODIFICATION "ASAN_OPTIONS=string_append::detect_stack_use_after_return=0")
  trainrt_add_module_tests(cuda_emulator ${TRAINRT_EMU_DIR}
    MODULE trainrt_cuda_emu
    TIMEOUT 900
    SPECS
      # Every run on the emulator is deterministic by construction, so DeterministicOnGpu
      # would check nothing here.
      "cuda_emulator_parity:test_cuda_parity:-CudaParity.DeterministicOnGpu"
      "cuda_emulator_graphs:test_graph:CudaGraphCuda.*:CudaDeferredErrors.*:CudaCaptureMemory.*:CaptureRefusals.*:SimulatedDevice*"
      "cuda_emulator_optim:test_optim:*/cuda:OptimCudaParity.*:OptimDevices.*"
      "cuda_emulator_clip_amp:test_clip_amp:*/cuda:ClipAmpCudaParity.*:ClipDevices.*:ScalerDevices.*"
    SUITES test_dtype_tensor test_nn test_softmax test_losses test_checkpoint test_data
      test_bad_input test_torch_golden test_train_golden
    # Under ASan (scripts/sanitize.sh): stack-use-after-return detection gives every fiber a
    # fake stack of its own, mapped and unmapped per kernel thread, which made the emulator 6x
    # slower; the kernels' frames stay checked for overflows.
    PROPERTIES ENVIRONMENT_MODIFICATION "ASAN_OPTIONS=string_append::detect_stack_use_after_return=0")
  target_compile_definitions(test_graph PRIVATE
    TRAINRT_CUDA_EMU_MODULE="${TRAINRT_EMU_DIR}/libtrainrt_cuda.so")
endif()
