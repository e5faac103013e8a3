#!/usr/bin/env bash
# Prints, one per line, the Debian/Ubuntu packages holding the shared libraries that an
# installed trainrt needs at run time: those of libtrainrt.so, of the CUDA module when it is
# installed, and of the programs in bin/ (libraries inside the prefix itself excluded). The
# slim runtime stages of docker/Dockerfile.cpu and docker/Dockerfile.cuda install exactly
# these; scripts/ci_install_check.sh runs it on every install it checks. Libraries that belong
# to no package (a CUDA toolkit unpacked by hand) are named on stderr and left out. Libraries
# trainrt opens with dlopen are not in ldd's list and are added by soname: libopenblas.so.0
# (the CPU GEMM, src/backend/cpu_gemm.cpp).
#   scripts/runtime_packages.sh PREFIX
set -euo pipefail
prefix=$(realpath "$1")
files=()
for f in "$prefix"/lib*/libtrainrt*.so* "$prefix"/lib*/*/libtrainrt*.so* "$prefix"/bin/*; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then files+=("$f"); fi
done
[ ${#files[@]} -gt 0 ] || { echo "runtime_packages: no trainrt files under $prefix" >&2; exit 1; }
deps=$(ldd "${files[@]}")
if echo "$deps" | grep -F "not found" >&2; then
  echo "runtime_packages: unresolved libraries (above)" >&2
  exit 1
fi
# Opened with dlopen by libtrainrt: resolved as the loader would (ld.so.cache).
dlopened=""
for soname in libopenblas.so.0; do
  # (awk reads everything: an early exit would kill ldconfig with SIGPIPE under pipefail)
  path=$(ldconfig -p 2> /dev/null | awk -v s="$soname" '$1 == s && /x86-64|AArch64|64bit/ && !p { p = $NF } END { print p }')
  [ -n "$path" ] || path=$(ldconfig -p 2> /dev/null | awk -v s="$soname" '$1 == s && !p { p = $NF } END { print p }')
  if [ -z "$path" ]; then
    echo "runtime_packages: $soname (opened by libtrainrt at run time) is not installed" >&2
    exit 1
  fi
  dlopened+="$soname => $path (dlopen)"$'\n'
done
printf '%s\n%s' "$deps" "$dlopened" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r lib; do
  real=$(realpath "$lib")
  case "$real" in "$prefix"/*) continue ;; esac
  pkg=""
  # Merged /usr: dpkg may know the file under /lib or /usr/lib, by its link or its target.
  for cand in "$lib" "$real" "/usr${lib#/usr}" "${lib#/usr}" "/usr${real#/usr}" "${real#/usr}"; do
    pkg=$(dpkg -S "$cand" 2> /dev/null | grep -v '^diversion' | head -n 1 | cut -d: -f1) || true
    [ -n "$pkg" ] && break
  done
  if [ -z "$pkg" ]; then
    # e.g. a CUDA toolkit installed from NVIDIA's archive: the runtime base must provide it.
    echo "runtime_packages: note: $lib belongs to no package (the runtime image must have it)" >&2
    continue
  fi
  echo "$pkg"
done | sort -u
