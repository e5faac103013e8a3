#!/usr/bin/env bash
# Installs trainrt from an existing build directory into a temporary prefix and uses it the
# way an application would:
#   1. checks the installed tree (headers, SONAME, $ORIGIN rpath, CMake package and
#      trainrt.pc free of build paths and of the private dependencies);
#   2. builds examples/consumer with CMake (find_package) and with pkg-config, installs the
#      CMake one into the prefix, and runs them all (the consumer trains a small model and
#      fails if it does not learn), plus the installed loss_quickstart example;
#   3. moves the prefix (mv) and runs the installed programs again, rebuilds the consumer
#      both ways against the moved prefix and runs it, and runs with TRAINRT_BACKEND_PATH.
# Every run checks where the CUDA module was looked for: beside the installed libtrainrt.so
# (or in TRAINRT_BACKEND_PATH), at its new place after the move. Without a GPU the module
# still loads and reports "no driver/device", which names the file it loaded.
# With DEST, the checked tree (library, headers, package files, the examples and the
# installed consumer) is finally moved to DEST, checked once more there, and kept: that is
# how docker/Dockerfile.* fill /opt/trainrt.
# Exits non-zero on any failure.
#
#   scripts/ci_install_check.sh [BUILD_DIR [DEST]]      # default: build, nothing kept
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
build=$(realpath "${1:-build}")
dest=${2:-}
if [ -n "$dest" ]; then
  dest=$(realpath -m "$dest")
  [ ! -e "$dest" ] || { echo "ci_install_check: $dest exists already" >&2; exit 1; }
fi
[ -f "$build/CMakeCache.txt" ] || { echo "ci_install_check: $build is not a configured build" >&2; exit 1; }
unset TRAINRT_BACKEND_PATH TRAINRT_LOG_LEVEL

tmp=$(mktemp -d "${TMPDIR:-/tmp}/trainrt-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
moved=$tmp/moved
generator=()
command -v ninja > /dev/null && generator=(-G Ninja)
jobs=$(nproc 2> /dev/null || echo 2)

fail() {
  echo "ci_install_check: FAIL: $*" >&2
  exit 1
}
step() { echo "== $*"; }

cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
libdir=$(cache_value CMAKE_INSTALL_LIBDIR)
bindir=$(cache_value CMAKE_INSTALL_BINDIR)
incdir=$(cache_value CMAKE_INSTALL_INCLUDEDIR)
version=$(grep -oE 'TRAINRT_VERSION_STRING "[^"]+"' "$build/include/trainrt/version.hpp" | cut -d'"' -f2)
major=${version%%.*}
with_module=0
[ -f "$build/lib/libtrainrt_cuda.so" ] && with_module=1
with_example=0 # loss_quickstart, installed with --component examples
[ -f "$build/bin/loss_quickstart" ] && with_example=1
echo "trainrt $version from $build (CUDA module built: $with_module), prefix $prefix"

# ---- 1. install and inspect ----------------------------------------------------------------
step "install"
cmake --install "$build" --prefix "$prefix" > "$tmp/install.log"
cmake --install "$build" --prefix "$prefix" --component examples >> "$tmp/install.log"
cat "$tmp/install.log"
for f in "$incdir/trainrt/trainrt.hpp" "$incdir/trainrt/version.hpp" "$incdir/trainrt/export.hpp" \
  "$libdir/libtrainrt.so" "$libdir/libtrainrt.so.$major" "$libdir/libtrainrt.so.$version" \
  "$libdir/cmake/trainrt/trainrtConfig.cmake" "$libdir/cmake/trainrt/trainrtConfigVersion.cmake" \
  "$libdir/cmake/trainrt/trainrtTargets.cmake" "$libdir/pkgconfig/trainrt.pc"; do
  [ -e "$prefix/$f" ] || fail "$f is not installed"
done
if [ $with_example = 1 ]; then
  [ -x "$prefix/$bindir/loss_quickstart" ] || fail "loss_quickstart is not installed by --component examples"
fi
if grep -q '^trainrt_cli' "$build/CMakeCache.txt" 2>/dev/null || [ -x "$build/bin/trainrt" ]; then
  [ -x "$prefix/$bindir/trainrt" ] || fail "the trainrt tool is not installed"
  "$prefix/$bindir/trainrt" --help > "$tmp/trainrt-help.log" 2>&1 || fail "installed trainrt --help failed"
fi
if [ $with_module = 1 ]; then
  [ -f "$prefix/$libdir/libtrainrt_cuda.so" ] || fail "the CUDA module is not installed beside libtrainrt.so"
fi
for h in "$src"/include/trainrt/*.hpp; do
  [ -f "$prefix/$incdir/trainrt/$(basename "$h")" ] || fail "header $(basename "$h") is not installed"
done
dyn=$(readelf -d "$prefix/$libdir/libtrainrt.so.$version")
grep -q "Library soname: \[libtrainrt.so.$major\]" <<< "$dyn" || fail "SONAME is not libtrainrt.so.$major"
grep -qF 'Library runpath: [$ORIGIN]' <<< "$dyn" || fail "libtrainrt.so RUNPATH is not \$ORIGIN"
if grep -rlF "$build" "$prefix/$libdir/cmake" "$prefix/$libdir/pkgconfig"; then
  fail "installed package files name the build directory"
fi
if grep -rlF "$src" "$prefix/$libdir/cmake" "$prefix/$libdir/pkgconfig"; then
  fail "installed package files name the source directory"
fi
# Private dependencies stay private: the package looks for nothing and passes nothing on.
# (CMake still records them in IMPORTED_LINK_DEPENDENT_LIBRARIES, a linker search hint that
# is skipped when a consumer does not define those targets.)
if grep -rnE '^[^#]*(find_dependency|find_package|INTERFACE_LINK_LIBRARIES)' "$prefix/$libdir/cmake/trainrt" ||
  grep -nE '^(Requires|Libs)' "$prefix/$libdir/pkgconfig/trainrt.pc" | grep -Ei 'spdlog|fmt|gomp|openmp'; then
  fail "the package files pass on dependencies (spdlog, fmt and OpenMP must stay private)"
fi
echo "installed tree ok: SONAME libtrainrt.so.$major, RUNPATH \$ORIGIN, relocatable package files"

# ---- helpers -----------------------------------------------------------------------------
# Paths of CUDA modules that loaded (with or without a usable device), resolved.
loaded_modules() {
  grep -E 'CUDA backend loaded from|CUDA module [^ ]+ loaded, but' "$1" |
    grep -oE '/[^ ,()]*libtrainrt_cuda\.so' | while read -r p; do realpath -m "$p"; done
}
# Paths where the module was looked for and not found, resolved.
looked_at() {
  grep -E 'not found \(looked at:' "$1" |
    grep -oE '/[^ ,()]*libtrainrt_cuda\.so' | while read -r p; do realpath -m "$p"; done
}

# run_consumer NAME EXPECTED_MODULE_DIR [ENV=VALUE...] -- COMMAND...: runs a program that
# must succeed; with a module, it must have loaded EXPECTED_MODULE_DIR/libtrainrt_cuda.so,
# without one, it must have looked there.
run_consumer() {
  local name=$1 want_dir=$2
  shift 2
  local envs=()
  while [ "$1" != "--" ]; do
    envs+=("$1")
    shift
  done
  shift
  local log="$tmp/run-$name.log" want
  want=$(realpath -m "$want_dir/libtrainrt_cuda.so")
  step "run $name"
  if ! env TRAINRT_LOG_LEVEL=debug "${envs[@]}" "$@" > "$log" 2>&1; then
    cat "$log"
    fail "$name exited non-zero"
  fi
  cat "$log"
  if grep -q 'cannot load CUDA module' "$log"; then
    fail "$name: the CUDA module was found but could not be loaded"
  fi
  if [ $with_module = 1 ]; then
    loaded_modules "$log" | grep -xF "$want" > /dev/null || fail "$name: the CUDA module was not loaded from $want"
    echo "-> CUDA module loaded from $want"
  else
    looked_at "$log" | grep -xF "$want" > /dev/null || fail "$name: the CUDA module was not looked for at $want"
    echo "-> CUDA module looked for at $want (not built)"
  fi
}

build_cmake_consumer() { # PREFIX BUILD_DIR [install]
  local pfx=$1 dir=$2
  step "build the consumer with CMake against $pfx"
  cmake -S "$src/examples/consumer" -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$pfx" -DCMAKE_INSTALL_PREFIX="$pfx" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF > "$dir.log" ||
    { cat "$dir.log"; fail "configuring the CMake consumer failed"; }
  cat "$dir.log"
  grep -qF "from $pfx/" "$dir.log" || fail "find_package(trainrt) did not pick the package in $pfx"
  cmake --build "$dir" -j "$jobs" || fail "building the CMake consumer failed"
}

build_pc_consumer() { # PREFIX OUTPUT
  step "build the consumer with pkg-config against $1"
  PKG_CONFIG_PATH="$1/$libdir/pkgconfig" sh "$src/examples/consumer/build_pkgconfig.sh" "$2" ||
    fail "building the pkg-config consumer failed"
}

# ---- 2. build and run the consumer both ways ---------------------------------------------
build_cmake_consumer "$prefix" "$tmp/consumer-cmake"
cmake --install "$tmp/consumer-cmake" > /dev/null || fail "installing the CMake consumer failed"
build_pc_consumer "$prefix" "$tmp/consumer-pc"

run_consumer cmake-consumer "$prefix/$libdir" -- "$tmp/consumer-cmake/trainrt_consumer"
run_consumer pkgconfig-consumer "$prefix/$libdir" -- "$tmp/consumer-pc"
run_consumer installed-consumer "$prefix/$libdir" -- "$prefix/$bindir/trainrt_consumer"
if [ $with_example = 1 ]; then
  run_consumer installed-loss-quickstart "$prefix/$libdir" -- "$prefix/$bindir/loss_quickstart"
fi

# ---- 3. move the prefix ------------------------------------------------------------------
step "mv $prefix $moved"
mv "$prefix" "$moved"
run_consumer moved-installed-consumer "$moved/$libdir" -- "$moved/$bindir/trainrt_consumer"
if [ $with_example = 1 ]; then
  run_consumer moved-loss-quickstart "$moved/$libdir" -- "$moved/$bindir/loss_quickstart"
fi
build_cmake_consumer "$moved" "$tmp/consumer-cmake-moved"
build_pc_consumer "$moved" "$tmp/consumer-pc-moved"
run_consumer moved-cmake-consumer "$moved/$libdir" -- "$tmp/consumer-cmake-moved/trainrt_consumer"
run_consumer moved-pkgconfig-consumer "$moved/$libdir" -- "$tmp/consumer-pc-moved"

# TRAINRT_BACKEND_PATH: the installed module directory, then a copy elsewhere (the variable
# is searched first, so the copy must win over the module beside libtrainrt.so).
mkdir -p "$tmp/modules"
if [ $with_module = 1 ]; then
  run_consumer backend-path-libdir "$moved/$libdir" TRAINRT_BACKEND_PATH="$moved/$libdir" -- \
    "$moved/$bindir/trainrt_consumer"
  cp "$moved/$libdir/libtrainrt_cuda.so" "$tmp/modules/"
fi
run_consumer backend-path-copy "$tmp/modules" TRAINRT_BACKEND_PATH="$tmp/modules" -- \
  "$moved/$bindir/trainrt_consumer"

step "runtime packages (scripts/runtime_packages.sh)"
bash "$src/scripts/runtime_packages.sh" "$moved" || fail "runtime_packages.sh failed"

if [ -n "$dest" ]; then
  step "mv $moved $dest"
  mkdir -p "$(dirname "$dest")"
  mv "$moved" "$dest"
  run_consumer kept-installed-consumer "$dest/$libdir" -- "$dest/$bindir/trainrt_consumer"
fi
echo "ci_install_check: OK (install, CMake and pkg-config consumers, moved prefix, TRAINRT_BACKEND_PATH)"
