#!/usr/bin/env bash
# QEMU 10.0 with every multifd codec (qpl, uadk, qatzip, zstd, zlib) for the real-QEMU tests and
# `mfdcomp qemu-check`; run as root by `ci/setup.sh --test` (the main job does not need it).
# Debian's QEMU is built without qpl, uadk and qatzip. This builds QEMU 10.0 from
# ../shared/third_party/qemu_10.0.*.orig.tar.xz (or, without it, from Debian trixie's source
# package) with --enable-qpl --enable-uadk --enable-qatzip --enable-zstd, linked against the
# project's own libqpl and libwd_comp (ci/system/qpl.sh, uadk.sh) and libqatzip
# (ci/system/qatzip.sh), into QEMU_HW_DIR of mfdcomp/qemu/locate.py (/opt/mfdcomp/qemu-hw).
# About 20 min on 2 cores the first time, at the lowest CPU priority; reused while the QEMU
# source and the three libraries are the same. Firmware comes from Debian's seabios (-L).
# Without QEMU sources, libqpl or libwd_comp it says what it skipped and exits 0: the harness
# then reports the qpl/uadk/qatzip QEMU rows as not run, with that reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=qemu-hw
. ci/system/lib/vendorlib.sh
. ci/system/lib/aptfetch.sh

constant() { sed -n "s/^$1 = \"\(.*\)\"$/\1/p" "$2"; }
PREFIX=$(constant QEMU_HW_DIR mfdcomp/qemu/locate.py)
QPL=$(constant PRIVATE_PREFIX plugins/qpl/mfdcomp_qpl/locate.py)
UADK=$(constant PRIVATE_PREFIX plugins/uadk/mfdcomp_uadk/locate.py)
QATZIP=$(constant PRIVATE_DIR plugins/qatzip/mfdcomp_qatzip/locate.py)/root
[[ "$PREFIX" == /* && "$QPL" == /* && "$UADK" == /* ]] || die "cannot read the install paths from the locate modules"
UNAVAILABLE="$PREFIX.UNAVAILABLE"
# Raised when the configure line or the steps below change, so a cached build is redone.
RECIPE=2
DEBS=(ninja-build libglib2.0-dev flex bison pkg-config libpixman-1-dev libzstd-dev zlib1g-dev
    libslirp-dev libfdt-dev liblz4-dev libnuma-dev bzip2 seabios python3-venv gcc make xz-utils)

skip() {
    echo "$NAME: skipped: $*"
    echo "$*" >"$UNAVAILABLE"
    exit 0
}

# pkg-config folders of the three libraries; the private qatzip's .pc is rewritten to its folder.
pc_path() {
    local dirs=() pc
    [[ -d "$QPL/lib/pkgconfig" ]] && dirs+=("$QPL/lib/pkgconfig")
    [[ -d "$UADK/lib/pkgconfig" ]] && dirs+=("$UADK/lib/pkgconfig")
    pc=$(compgen -G "$QATZIP/usr/lib/*/pkgconfig/qatzip.pc" | head -n1 || true)
    if [[ -n "$pc" ]]; then
        mkdir -p "$work/pkgconfig"
        sed "s|^prefix=.*|prefix=$QATZIP/usr|" "$pc" >"$work/pkgconfig/qatzip.pc"
        dirs+=("$work/pkgconfig")
    fi
    local IFS=:
    echo "${dirs[*]}"
}

# Everything the build depends on, in one line: a change in any of them means a rebuild.
inputs() {
    echo "recipe $RECIPE"
    echo "$(basename "$1") $(sha256sum "$1" | cut -d' ' -f1)"
    cat "$QPL/SOURCE" "$UADK/SOURCE" 2>/dev/null
    cat "$QATZIP/../packages" 2>/dev/null | grep -E '^(Package|Version):' | tr '\n' ' '
    [[ -f "$QATZIP/../packages" ]] || dpkg-query -W -f='${Package} ${Version}' libqatzip3 2>/dev/null
}

source_tarball() {
    local dir
    dir=$(third_party_dir || true)
    compgen -G "${dir:-/nonexistent}/qemu_10.0.*.orig.tar.xz" | head -n1 || true
}

# Debian trixie's QEMU 10.0 source, fetched through a throw-away apt configuration.
debian_source() {
    mkdir -p "$work/src"
    (private_apt "$work/apt" deb-src trixie && apt-get update -qq && cd "$work/src" &&
        apt-get source --download-only -qq qemu) >&2 || return 1
    compgen -G "$work/src/qemu_10.0.*.orig.tar.xz" | head -n1
}

build() { # TARBALL PKG_CONFIG_PATH
    local src build
    tar -xJf "$1" -C "$work"
    src=$(compgen -G "$work/qemu-10.0*" | head -n1)
    # The +ds tarball has no firmware blobs; configure wants the edk2 inputs, which this build never uses.
    for fd in $(sed -n "s/^ *'\(edk2-[a-z0-9_-]*\.fd\)',$/\1/p" "$src/pc-bios/meson.build"); do
        [[ -f "$src/pc-bios/$fd.bz2" ]] || bzip2 -c </dev/null >"$src/pc-bios/$fd.bz2"
    done
    # meson >= 1.5 and pycotap for configure, in a venv of their own (Debian 12's meson is older).
    "${PYTHON:-/usr/bin/python3}" -m venv "$work/tools"
    "$work/tools/bin/pip" install -q --disable-pip-version-check "meson>=1.5" pycotap==1.3.1
    local qatzip_lib
    qatzip_lib=$(dirname "$(compgen -G "$QATZIP/usr/lib/*/libqatzip.so.3" | head -n1 || echo /usr/lib/x)")
    build="$src/build"
    mkdir -p "$build"
    (cd "$build" && PKG_CONFIG_PATH="$2" ../configure --prefix="$PREFIX.new" --python="$work/tools/bin/python3" \
        --target-list=x86_64-softmmu --disable-docs --without-default-features --enable-tcg --enable-zstd \
        --enable-qpl --enable-uadk --enable-qatzip --enable-slirp --enable-fdt=system --disable-install-blobs \
        --extra-ldflags="-Wl,--disable-new-dtags,-rpath,$QPL/lib:$UADK/lib:$qatzip_lib -L$qatzip_lib")
    nice -n 19 ninja -C "$build" -j"$(nproc)" qemu-system-x86_64
    mkdir -p "$PREFIX.new/bin"
    cp "$build/qemu-system-x86_64" "$PREFIX.new/bin/"
    # It must start: libwd.so.2, libqat.so.4 and libusdm.so.0 are found only through this binary's
    # RPATH (an old-style DT_RPATH, which, unlike RUNPATH, also serves its libraries' dependencies).
    "$PREFIX.new/bin/qemu-system-x86_64" --version
}

[[ -f "$QPL/SOURCE" || -n "$(ldconfig -p | grep -F libqpl.so)" ]] || skip "no libqpl (ci/system/qpl.sh built none)"
[[ -f "$UADK/SOURCE" || -n "$(ldconfig -p | grep -F libwd_comp.so)" ]] || skip "no libwd_comp (ci/system/uadk.sh built none)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball=$(source_tarball)
if [[ -z "$tarball" ]]; then
    # Cached build from earlier sources: keep it rather than fetch.
    [[ -x "$PREFIX/bin/qemu-system-x86_64" ]] && exit 0
    tarball=$(debian_source) || skip "no QEMU 10.0 source: none in ../shared/third_party and Debian's source package could not be fetched"
fi
stamp=$(inputs "$tarball")
if [[ "$(cat "$PREFIX/SOURCE" 2>/dev/null)" == "$stamp" ]] && "$PREFIX/bin/qemu-system-x86_64" --version >/dev/null 2>&1; then
    exit 0
fi
apt_install "${DEBS[@]}"
rm -f "$UNAVAILABLE"
rm -rf "$PREFIX.new"
start=$SECONDS
echo "$NAME: building QEMU from $(basename "$tarball") with qpl, uadk, qatzip into $PREFIX (about 20 min on 2 cores, once)"
log="$work/build.log"
if ! (build "$tarball" "$(pc_path)") >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -rf "$PREFIX.new"
    die "the QEMU build failed (the last lines of its log are above)"
fi
echo "$stamp" >"$PREFIX.new/SOURCE"
rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"
echo "$NAME: $("$PREFIX/bin/qemu-system-x86_64" --version | head -n1) built in $((SECONDS - start)) s"
