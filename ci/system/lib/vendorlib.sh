# Shared by ci/system/qpl.sh, uadk.sh and qemu-hw.sh (sourced, not run): find a vendor library on the
# host, or build it from ../shared/third_party into a private prefix under /opt/mfdcomp, once.
# The caller sets NAME (for messages), SONAME, PREFIX, TARBALL_GLOB, DEBS and defines
# build_into PREFIX SRC DESTDIR (configure for PREFIX, install under DESTDIR).

die() {
    echo "ci/system/$NAME.sh: $*" >&2
    exit 1
}

# A library the host's loader already knows (a real IAA or Kunpeng host usually has it).
system_library() {
    ldconfig -p 2>/dev/null | awk -v so="$SONAME" '$1 == so {print $NF; exit}'
}

# Where the team keeps the upstream sources: beside the checkout, or MFDCOMP_THIRD_PARTY.
third_party_dir() {
    local dir=${MFDCOMP_THIRD_PARTY:-$PWD/../shared/third_party}
    [[ -d "$dir" ]] && (cd "$dir" && pwd)
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# The private build is current when its stamp names the tarball it was built from.
built_from() {
    [[ -s "$PREFIX/SOURCE" ]] && cat "$PREFIX/SOURCE"
}

install_vendor_library() {
    local found
    found=$(system_library)
    if [[ -n "$found" ]]; then
        # Nothing to build: the plugin loads the host's own library first.
        return 0
    fi
    local sources tarball sum
    sources=$(third_party_dir || true)
    tarball=$(compgen -G "${sources:-/nonexistent}/$TARBALL_GLOB" | head -n1 || true)
    if [[ -z "$tarball" ]]; then
        if [[ -n "$(built_from)" ]]; then
            return 0
        fi
        echo "$NAME: skipped: no $SONAME on this host and no sources ($TARBALL_GLOB) in ${sources:-../shared/third_party}; the $NAME plugin reports its library path as not available"
        return 0
    fi
    sum="$(basename "$tarball") $(sha256sum "$tarball" | cut -d' ' -f1)"
    if [[ "$(built_from)" == "$sum" ]]; then
        return 0
    fi
    apt_install "${DEBS[@]}"
    local start
    # Global: the EXIT trap runs after this function's locals are gone.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    start=$SECONDS
    echo "$NAME: building $(basename "$tarball") into $PREFIX (once; later set-ups reuse it)"
    tar -xf "$tarball" -C "$work" || die "cannot unpack $tarball"
    local src
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
    # Configured for PREFIX itself (pkg-config files, libtool records and UADK's driver folder name
    # it), installed into a staging folder, then moved into place in one step.
    (build_into "$PREFIX" "$src" "$work/stage") >"$work/build.log" 2>&1 || {
        tail -n 30 "$work/build.log" >&2
        die "building $(basename "$tarball") failed (the last lines of its log are above)"
    }
    echo "$sum" >"$work/stage$PREFIX/SOURCE"
    rm -rf "$PREFIX"
    mkdir -p "$(dirname "$PREFIX")"
    mv "$work/stage$PREFIX" "$PREFIX"
    echo "$NAME: $SONAME built in $((SECONDS - start)) s"
}
