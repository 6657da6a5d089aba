#!/usr/bin/env bash
# Copies what the built binaries need at run time into one prefix, for the Docker image's
# runtime stage: the binaries, and every shared library ldd resolves outside the base
# system (gRPC, protobuf, abseil, civetweb, prometheus-cpp, libtorch and the CUDA
# libraries of the torch wheel). The CUDA driver (libcuda) comes from the host at run time
# and is never copied.
#   deploy/collect-runtime.sh <build dir> <prefix>
set -euo pipefail
BUILD="$1"
PREFIX="$2"
mkdir -p "$PREFIX/bin" "$PREFIX/lib"
cp "$BUILD/server/svdq-server" "$BUILD/clients/svdq-cli" "$BUILD/tools/svdq_calibrate" "$PREFIX/bin/"
for exe in "$PREFIX"/bin/*; do
  ldd "$exe" | awk '/=> \// { print $3 }'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*) continue ;;
  esac
  cp -Ln "$lib" "$PREFIX/lib/"
done
# libtorch opens some CUDA libraries with dlopen (not visible to ldd): take the wheel's whole set.
TORCH_LIB="$(dirname "$(ldd "$PREFIX/bin/svdq-server" | awk '/libtorch_cpu/ { print $3 }')")"
SITE="$(dirname "$(dirname "$TORCH_LIB")")"
for d in "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu*/lib "$TORCH_LIB"; do
  [ -d "$d" ] && cp -Ln "$d"/*.so* "$PREFIX/lib/" 2>/dev/null || true
done
echo "collect-runtime: $(ls "$PREFIX/lib" | wc -l) libraries, $(du -sh "$PREFIX" | cut -f1) in $PREFIX"
