#!/usr/bin/env bash
# Intel QPL (libqpl.so.1) for the qpl codec plugin; run as root by ci/setup.sh.
#   A host with libqpl in its loader's cache (an IAA host usually has it): nothing is built.
#   Otherwise QPL is built once from ../shared/third_party/qpl-*.tar.gz (cmake, nasm) into
#   PRIVATE_PREFIX of plugins/qpl/mfdcomp_qpl/locate.py (/opt/mfdcomp/qpl), about 1.5 min on 2
#   cores, and reused while it was built from the same tarball. Without the library and the
#   sources it says so in one line and the plugin falls back to its zlib writer.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=qpl
SONAME=libqpl.so.1
PREFIX=$(sed -n 's/^PRIVATE_PREFIX = "\(.*\)"$/\1/p' plugins/qpl/mfdcomp_qpl/locate.py)
TARBALL_GLOB="qpl-*.tar.gz"
DEBS=(cmake nasm g++ make)
. ci/system/lib/vendorlib.sh
[[ "$PREFIX" == /* ]] || die "no absolute PRIVATE_PREFIX = \"...\" line in plugins/qpl/mfdcomp_qpl/locate.py"

build_into() {
    cmake -S "$2" -B "$2/build" -DCMAKE_BUILD_TYPE=Release -DQPL_LIBRARY_TYPE=SHARED \
        -DQPL_BUILD_TESTS=OFF -DQPL_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX="$1" -DCMAKE_INSTALL_LIBDIR=lib
    cmake --build "$2/build" -j"$(nproc)"
    DESTDIR="$3" cmake --install "$2/build"
}

install_vendor_library
