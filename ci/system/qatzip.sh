#!/usr/bin/env bash
# Intel QATzip's library (libqatzip.so.3) for the qatzip codec plugin; run as root by ci/setup.sh.
#   Debian 13: the distribution's libqatzip3, installed with apt.
#   Debian 12: trixie's libqatzip3, libqat4 and libusdm0 .debs, fetched through a throw-away apt
#   configuration and unpacked with dpkg-deb -x into a private folder. They are never installed:
#   apt would pull trixie's libc6 into the system with them.
# The private folder is PRIVATE_DIR in plugins/qatzip/mfdcomp_qatzip/locate.py (read from there).
# Quiet when there is nothing to do; idempotent; exits non-zero with the reason when it cannot.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
    echo "ci/system/qatzip.sh: $*" >&2
    exit 1
}

. ci/system/lib/aptfetch.sh

LOCATE=plugins/qatzip/mfdcomp_qatzip/locate.py
PRIVATE_DIR=$(sed -n 's/^PRIVATE_DIR = "\(.*\)"$/\1/p' "$LOCATE")
[[ "$PRIVATE_DIR" == /* ]] || die "no absolute PRIVATE_DIR = \"...\" line in $LOCATE"
ROOT="$PRIVATE_DIR/root"
MANIFEST="$PRIVATE_DIR/packages"
# libqatzip-dev: qatzip.h and qatzip.pc, for ci/system/qemu-hw.sh's QEMU build (unused at run time).
DEBS=(libqatzip3 libqat4 libusdm0 libqatzip-dev)
# What trixie's packages need beyond them; bookworm has all of these.
BOOKWORM_DEPS=(liblz4-1 libnuma1 libssl3 zlib1g)

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

# Loads the libraries of one folder the way the plugin does: dependencies first, by path, global.
loads() {
    python3 - "$1" <<'PY'
import ctypes, sys
folder = sys.argv[1]
for name in ("libusdm.so.0", "libqat.so.4"):
    ctypes.CDLL(f"{folder}/{name}", mode=ctypes.RTLD_GLOBAL)
ctypes.CDLL(f"{folder}/libqatzip.so.3").qzInit
PY
}

installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

apt_install() {
    local missing=()
    for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
    ((${#missing[@]})) || return 0
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

unpack_trixie_debs() {
    lib=$(compgen -G "$ROOT/usr/lib/*/libqatzip.so.3" | head -n1 || true)
    if [[ -n "$lib" && -s "$MANIFEST" && -f "$ROOT/usr/include/qatzip.h" ]] && loads "$(dirname "$lib")" 2>/dev/null; then
        return 0
    fi
    apt_install "${BOOKWORM_DEPS[@]}"

    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/debs"
    private_apt "$work" deb trixie
    apt-get update -qq || die "cannot read trixie's package index from $(debian_mirror)"
    (cd "$work/debs" && apt-get download -qq "${DEBS[@]}") ||
        die "cannot download ${DEBS[*]} from trixie ($(debian_mirror))"
    unset APT_CONFIG

    rm -rf "$ROOT.new"
    mkdir -p "$ROOT.new"
    : >"$work/packages"
    for deb in "$work"/debs/*.deb; do
        dpkg-deb -x "$deb" "$ROOT.new" || die "dpkg-deb -x $deb failed"
        dpkg-deb -f "$deb" Package Version Architecture >>"$work/packages"
        echo >>"$work/packages"
    done
    lib=$(compgen -G "$ROOT.new/usr/lib/*/libqatzip.so.3" | head -n1 || true)
    [[ -n "$lib" ]] || die "the unpacked packages hold no libqatzip.so.3"
    local error
    error=$(loads "$(dirname "$lib")" 2>&1) || die "trixie's libqatzip does not load on this system: $error"
    rm -rf "$ROOT"
    mv "$ROOT.new" "$ROOT"
    mv "$work/packages" "$MANIFEST"
    echo "qatzip: ${DEBS[*]} from trixie unpacked into $ROOT"
}

case "$codename" in
bookworm) unpack_trixie_debs ;;
trixie) apt_install libqatzip3 libqatzip-dev ;;
*) die "Debian 12 (bookworm) or 13 (trixie) expected, /etc/os-release says '${codename:-nothing}'" ;;
esac
