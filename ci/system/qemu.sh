#!/usr/bin/env bash
# QEMU for the real-QEMU tests and `mfdcomp qemu-check` (mfdcomp.qemu.harness); run as root by ci/setup.sh.
#   QEMU 10.0, system-wide: Debian 13's own packages; on Debian 12 bookworm-backports' (the backports
#   source is added when missing). --no-install-recommends: without it apt upgrades system packages.
#   QEMU 7.2, for cross-version runs: Debian 12's qemu-system-x86 and qemu-system-common .debs,
#   fetched with `apt-get download` through a throw-away apt configuration that points at bookworm
#   (the system's sources, lists and dpkg state stay as they are), unpacked with dpkg-deb -x into a
#   private folder and never installed over the system's QEMU. It runs on the system's libraries and
#   firmware. If it cannot run on this host (Debian 13's libraries may not fit), the reason is said
#   and written to QEMU72_DIR/UNAVAILABLE, which the harness reports.
# Paths: SYSTEM_BINARY and QEMU72_DIR are read from mfdcomp/qemu/locate.py; the layout under
# QEMU72_DIR (root/, packages, UNAVAILABLE) mirrors the constants there.
# Quiet when there is nothing to do; idempotent; exits non-zero with the reason when it cannot.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
    echo "ci/system/qemu.sh: $*" >&2
    exit 1
}

. ci/system/lib/aptfetch.sh

LOCATE=mfdcomp/qemu/locate.py
constant() { sed -n "s/^$1 = \"\(.*\)\"$/\1/p" "$LOCATE"; }
SYSTEM_BINARY=$(constant SYSTEM_BINARY)
QEMU72_DIR=$(constant QEMU72_DIR)
[[ "$SYSTEM_BINARY" == /* && "$QEMU72_DIR" == /* ]] ||
    die "no absolute SYSTEM_BINARY = \"...\" and QEMU72_DIR = \"...\" lines in $LOCATE"
ROOT="$QEMU72_DIR/root"
BINARY72="$ROOT/usr/bin/qemu-system-x86_64"
MODULES72="$ROOT/usr/lib/x86_64-linux-gnu/qemu"
MANIFEST="$QEMU72_DIR/packages"
UNAVAILABLE="$QEMU72_DIR/UNAVAILABLE"
PACKAGES=(qemu-system-x86 qemu-utils)
PACKAGES72=(qemu-system-x86 qemu-system-common)

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

installed_version() {
    dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p'
}

# True when every package is installed at an epoch-1 version 10.x (Debian's QEMU 10.0).
have_qemu10() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        [[ "$(installed_version "$pkg")" == 1:10.* ]] || return 1
    done
    "$SYSTEM_BINARY" --version 2>/dev/null | head -n1 | grep -q 'version 10\.'
}

add_backports_source() {
    grep -rqs -- 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
    cat >/etc/apt/sources.list.d/bookworm-backports.sources <<EOF
Types: deb
URIs: $(debian_mirror)
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

install_qemu10() {
    have_qemu10 && return 0
    local target=()
    if [[ "$codename" == bookworm ]]; then
        add_backports_source
        target=(-t bookworm-backports)
    fi
    apt-get update -qq || die "apt-get update failed"
    local log
    log=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${target[@]}" \
        "${PACKAGES[@]}" 2>&1) || die "apt-get install ${target[*]} ${PACKAGES[*]} failed: $log"
    have_qemu10 || die "after the install, $SYSTEM_BINARY is not QEMU 10: $("$SYSTEM_BINARY" --version 2>&1 | head -n1)"
    echo "qemu: $("$SYSTEM_BINARY" --version | head -n1)"
}

# Starts 7.2 paused on its machine type and quits it over QMP; prints QEMU's complaint on failure.
runs72() {
    local out
    out=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' |
        QEMU_MODULE_DIR="$MODULES72" timeout 60 "$BINARY72" -L /usr/share/seabios -L /usr/share/qemu \
            -machine pc-q35-7.2 -accel tcg -m 16M -nodefaults -display none -S -qmp stdio 2>&1) || {
        echo "$out" | grep -v '^{' | head -n5
        return 1
    }
}

fetch_qemu72() {
    if [[ -f "$UNAVAILABLE" ]]; then
        echo "qemu: QEMU 7.2 cross-version runs are not available here: $(cat "$UNAVAILABLE")" >&2
        return 0
    fi
    if [[ -x "$BINARY72" && -s "$MANIFEST" ]] && runs72 >/dev/null; then
        return 0
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/debs"
    private_apt "$work" deb bookworm
    apt-get update -qq || die "cannot read bookworm's package index from $(debian_mirror)"
    local version
    version=$(apt-cache madison qemu-system-x86 | awk -F' *[|] *' '$2 ~ /^1:7\.2/ {print $2; exit}')
    [[ -n "$version" ]] || die "bookworm's index has no qemu-system-x86 7.2"
    (cd "$work/debs" && apt-get download -qq "${PACKAGES72[@]/%/=$version}") ||
        die "cannot download ${PACKAGES72[*]} $version from bookworm ($(debian_mirror))"
    unset APT_CONFIG

    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    : >"$work/packages"
    for deb in "$work"/debs/*.deb; do
        dpkg-deb -x "$deb" "$ROOT" || die "dpkg-deb -x $deb failed"
        dpkg-deb -f "$deb" Package Version Architecture >>"$work/packages"
        echo >>"$work/packages"
    done
    [[ -x "$BINARY72" ]] || die "the unpacked packages hold no $BINARY72"
    local problem
    if ! problem=$(runs72); then
        if [[ "$codename" == bookworm ]]; then
            die "QEMU 7.2 unpacked into $ROOT does not start: $problem"
        fi
        echo "Debian 12's QEMU 7.2 ($version) does not start on Debian ${codename}: ${problem//$'\n'/ }" >"$UNAVAILABLE"
        echo "qemu: QEMU 7.2 cross-version runs are not available here: $(cat "$UNAVAILABLE")" >&2
        return 0
    fi
    mv "$work/packages" "$MANIFEST"
    echo "qemu: $(QEMU_MODULE_DIR="$MODULES72" "$BINARY72" --version | head -n1) unpacked into $ROOT"
}

case "$codename" in
bookworm | trixie) ;;
*) die "Debian 12 (bookworm) or 13 (trixie) expected, /etc/os-release says '${codename:-nothing}'" ;;
esac
install_qemu10
fetch_qemu72
