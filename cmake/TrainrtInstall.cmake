# Install rules (GNUInstallDirs layout), included last by the top-level CMakeLists.txt:
#
#   <prefix>/include/trainrt/*.hpp                  public headers + generated version.hpp
#   <prefix>/<libdir>/libtrainrt.so.<MAJOR>         SONAME; .so.<VERSION> and the .so link
#   <prefix>/<libdir>/libtrainrt_cuda.so            CUDA module, when built: found beside
#                                                   libtrainrt.so at run time (dladdr)
#   <prefix>/<libdir>/cmake/trainrt/                trainrtConfig.cmake, version file,
#                                                   exported target trainrt::trainrt
#   <prefix>/<libdir>/pkgconfig/trainrt.pc
#   <prefix>/bin/trainrt                            the command-line trainer
#   <prefix>/bin/<example>                          only with --component examples
#
# Everything is relative to the prefix, so an installed tree still works after it is moved:
# the CMake package computes its prefix from its own location, trainrt.pc from ${pcfiledir},
# and the module is looked up next to the libtrainrt.so that is actually loaded.
# libtrainrt.so is a shared library whose dependencies (spdlog, fmt, OpenMP, libdl) are
# private: neither the Config file nor trainrt.pc asks a consumer for them.
include(CMakePackageConfigHelpers)

set(TRAINRT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/trainrt"
    CACHE STRING "Where trainrtConfig.cmake is installed, relative to the prefix")

# $ORIGIN: the installed library resolves anything of ours beside it, wherever the prefix
# lands (its other dependencies are system libraries).
set_target_properties(trainrt PROPERTIES INSTALL_RPATH "$ORIGIN")

install(TARGETS trainrt EXPORT trainrtTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/trainrt
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.hpp")
install(FILES ${PROJECT_BINARY_DIR}/include/trainrt/version.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/trainrt)

# The module is opened with dlopen, never linked: it is not part of the exported targets.
# Its cuBLAS dependency resolves through the system's loader configuration (the CUDA
# packages and images register their library directory).
if(TARGET trainrt_cuda)
  install(TARGETS trainrt_cuda LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()

install(EXPORT trainrtTargets
  NAMESPACE trainrt::
  FILE trainrtTargets.cmake
  DESTINATION ${TRAINRT_INSTALL_CMAKEDIR})
configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/trainrtConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/trainrtConfig.cmake
  INSTALL_DESTINATION ${TRAINRT_INSTALL_CMAKEDIR})
# The major version is the SOVERSION: only releases with the same major are ABI compatible.
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/cmake/trainrtConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMajorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/cmake/trainrtConfig.cmake
  ${PROJECT_BINARY_DIR}/cmake/trainrtConfigVersion.cmake
  DESTINATION ${TRAINRT_INSTALL_CMAKEDIR})

# trainrt.pc: relocatable (prefix from ${pcfiledir}) when the directories are relative.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(TRAINRT_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(TRAINRT_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
  set(TRAINRT_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
else()
  file(RELATIVE_PATH _trainrt_pc_up "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
  string(REGEX REPLACE "/$" "" _trainrt_pc_up "${_trainrt_pc_up}")
  set(TRAINRT_PC_PREFIX "\${pcfiledir}/${_trainrt_pc_up}")
  set(TRAINRT_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
  set(TRAINRT_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/trainrt.pc.in ${PROJECT_BINARY_DIR}/trainrt.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/trainrt.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Examples land in <prefix>/bin and find libtrainrt.so through $ORIGIN/../<libdir>; they are
# installed only on request: cmake --install <build> --component examples.
file(RELATIVE_PATH _trainrt_bin_to_lib "/p/${CMAKE_INSTALL_BINDIR}" "/p/${CMAKE_INSTALL_LIBDIR}")
# The trainrt command-line tool is part of the default install.
if(TARGET trainrt_cli)
  set_target_properties(trainrt_cli PROPERTIES INSTALL_RPATH "$ORIGIN/${_trainrt_bin_to_lib}")
  install(TARGETS trainrt_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
foreach(example IN ITEMS loss_quickstart fashion_mnist_mlp regression_losses
                        optimizer_comparison)
  if(TARGET ${example})
    set_target_properties(${example} PROPERTIES INSTALL_RPATH "$ORIGIN/${_trainrt_bin_to_lib}")
    install(TARGETS ${example} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
            COMPONENT examples EXCLUDE_FROM_ALL)
  endif()
endforeach()
