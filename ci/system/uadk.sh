#!/usr/bin/env bash
# Linaro UADK (libwd.so.2, libwd_comp.so.2) for the uadk codec plugin; run as root by ci/setup.sh.
#   A host with libwd_comp in its loader's cache (a Kunpeng host usually has it): nothing is built.
#   Otherwise UADK is built once from ../shared/third_party/uadk-*.tar.gz (autotools, libnuma) into
#   PRIVATE_PREFIX of plugins/uadk/mfdcomp_uadk/locate.py (/opt/mfdcomp/uadk), about 30 s, and
#   reused while it was built from the same tarball. Without the library and the sources it says so
#   in one line and the plugin reports its hardware path as not available.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=uadk
SONAME=libwd_comp.so.2
PREFIX=$(sed -n 's/^PRIVATE_PREFIX = "\(.*\)"$/\1/p' plugins/uadk/mfdcomp_uadk/locate.py)
TARBALL_GLOB="uadk-*.tar.gz"
DEBS=(autoconf automake libtool make gcc libnuma-dev)
. ci/system/lib/vendorlib.sh
[[ "$PREFIX" == /* ]] || die "no absolute PRIVATE_PREFIX = \"...\" line in plugins/uadk/mfdcomp_uadk/locate.py"

build_into() {
    cd "$2"
    ./autogen.sh
    ./configure --prefix="$1"
    make -j"$(nproc)"
    make install DESTDIR="$3"
}

install_vendor_library
