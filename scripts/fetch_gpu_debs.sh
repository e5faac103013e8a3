#!/usr/bin/env bash
# Run HERE, on the Debian 12 (bookworm) development machine, before using a lent GPU machine:
# downloads (apt-get download, no install) the .deb files of the build and test dependencies
# that the GPU machine may lack into .debs/ (git-ignored). The device tool carries .debs/ to
# the GPU machine (`carry: [".debs"]`), where scripts/gpu_check.sh unpacks them with dpkg -x
# into a private prefix, never into /.
#
#   scripts/fetch_gpu_debs.sh            # fills .debs/, prints its size (must stay < ~60 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."

# Headers and CMake configs (-dev) plus the runtime libraries they need. OpenBLAS: the
# pthread flavour (as scripts/test.sh installs here) and libgfortran5/libquadmath0, which
# its shared library needs. zlib1g is here only so that zlib1g-dev's libz.so link resolves
# inside the prefix; at run time the system's libz.so.1 is used.
pkgs=(
  libgtest-dev libgmock-dev
  libspdlog-dev libspdlog1.10
  libfmt-dev libfmt9
  libbenchmark-dev libbenchmark1debian
  nlohmann-json3-dev
  librandom123-dev
  libopenblas-dev libopenblas0 libopenblas-pthread-dev libopenblas0-pthread
  libgfortran5 libquadmath0
  zlib1g-dev zlib1g
)
max_mib=60

mkdir -p .debs
cd .debs
rm -f ./*.deb MANIFEST
if ! apt-get download "${pkgs[@]}"; then
  echo "fetch_gpu_debs: apt-get download failed; refreshing the package lists and retrying" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get update -q; else sudo apt-get update -q; fi
  apt-get download "${pkgs[@]}"
fi

# Plain names (PACKAGE.deb): the files travel to the device machine, where names with
# characters such as '%' or '+' are best avoided. Versions are kept in MANIFEST.
for f in ./*.deb; do
  name="$(dpkg-deb -f "$f" Package).deb"
  [ "$f" = "./$name" ] || mv -f "$f" "$name"
done

{
  echo "# .deb files for scripts/gpu_check.sh, fetched $(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  for f in ./*.deb; do
    printf '%s %s %s\n' "$(dpkg-deb -f "$f" Package)" "$(dpkg-deb -f "$f" Version)" "$(sha256sum "$f" | cut -c1-16)"
  done
} >MANIFEST

kib=$(du -sk . | cut -f1)
echo "fetch_gpu_debs: $(ls ./*.deb | wc -l) packages, $((kib / 1024)) MiB in $(pwd)"
if [ "$kib" -gt $((max_mib * 1024)) ]; then
  echo "fetch_gpu_debs: .debs/ is over ${max_mib} MiB; the device tool carries at most 64 MiB" >&2
  exit 1
fi
