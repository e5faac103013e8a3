#!/bin/sh
# Checks the dynamic symbol table of libtrainrt.so: every defined, exported symbol must be in
# the trainrt namespace (functions, static members, typeinfo, vtables) or a C entry point
# named trainrt_*. Anything else (std:: template instantiations, spdlog, fmt, the CPU
# kernels) is an ABI leak. Also fails when a known API symbol is missing, so a broken nm
# pipeline cannot pass.
#   tests/check_exports.sh path/to/libtrainrt.so
set -eu
lib=$1
syms=$(nm -D --defined-only --format=posix "$lib" | cut -d' ' -f1) || exit 1
[ -n "$syms" ] || { echo "no exported symbols in $lib"; exit 1; }
bad=$(printf '%s\n' "$syms" | c++filt | grep -Ev \
  '^(trainrt::|typeinfo for trainrt::|typeinfo name for trainrt::|vtable for trainrt::|VTT for trainrt::|trainrt_)' || true)
count=$(printf '%s\n' "$syms" | wc -l)
if [ -n "$bad" ]; then
  echo "libtrainrt.so exports symbols outside the trainrt namespace:"
  printf '%s\n' "$bad" | head -n 40
  echo "($(printf '%s\n' "$bad" | wc -l) in all)"
  exit 1
fi
for want in 'trainrt::version()' 'typeinfo for trainrt::Error'; do
  printf '%s\n' "$syms" | c++filt | grep -qxF "$want" || { echo "missing export: $want"; exit 1; }
done
echo "$count exported symbols, all in the trainrt namespace or trainrt_*"
