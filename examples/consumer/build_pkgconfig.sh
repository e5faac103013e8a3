#!/bin/sh
# The pkg-config variant: builds the same main.cpp with the flags trainrt.pc gives.
#   PKG_CONFIG_PATH=/path/to/prefix/lib/pkgconfig examples/consumer/build_pkgconfig.sh OUT
# The rpath makes OUT find libtrainrt.so where pkg-config found it.
set -eu
out=${1:-trainrt_consumer_pc}
src=$(dirname "$0")/main.cpp
cflags=$(pkg-config --cflags trainrt)
libs=$(pkg-config --libs trainrt)
libdir=$(cd "$(pkg-config --variable=libdir trainrt)" && pwd -P) # without ${pcfiledir}/../..
# shellcheck disable=SC2086 # the flags are word lists
${CXX:-c++} -std=c++17 -Wall -Wextra -Werror -pedantic -O2 $cflags "$src" -o "$out" $libs \
  -Wl,-rpath,"$libdir"
echo "built $out with trainrt $(pkg-config --modversion trainrt) from $libdir"
