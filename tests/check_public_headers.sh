#!/bin/sh
# The public headers as a user's project sees them: each one compiles on its own with
# -std=c++17 -Wall -Wextra -Werror -pedantic, and none of them pulls in (even indirectly) a
# CUDA, OpenMP, spdlog or fmt header.
#   tests/check_public_headers.sh CXX SOURCE_INCLUDE_DIR GENERATED_INCLUDE_DIR
set -eu
cxx=$1 src_inc=$2 gen_inc=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for h in "$src_inc"/trainrt/*.hpp "$gen_inc"/trainrt/*.hpp; do
  name=trainrt/$(basename "$h")
  printf '#include <%s>\n#include <%s>\nint main() { return 0; }\n' "$name" "$name" > "$tmp/t.cpp"
  if ! "$cxx" -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only \
      -I"$src_inc" -I"$gen_inc" "$tmp/t.cpp"; then
    echo "FAIL: $name does not compile on its own with -Wall -Wextra -Werror -pedantic"
    status=1
    continue
  fi
  deps=$("$cxx" -std=c++17 -M -I"$src_inc" -I"$gen_inc" "$tmp/t.cpp" | tr ' \\' '\n\n')
  if printf '%s\n' "$deps" | grep -Ei '(/cuda[^/]*\.h|/omp\.h|/spdlog/|/fmt/)'; then
    echo "FAIL: $name includes the headers above"
    status=1
  else
    echo "ok: $name"
  fi
done
exit $status
