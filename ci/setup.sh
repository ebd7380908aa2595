#!/usr/bin/env bash
# Installs mfdcomp, its built-in codec plugins and what they need, on Debian 12 or 13 (run as root).
#   bash ci/setup.sh          the package, the plugins under plugins/ and their runtime dependencies
#   bash ci/setup.sh --test   the same, editable, with the test extras
# Python packages go into a virtual environment, .venv in this checkout (MFDCOMP_VENV to move it),
# made from Debian's own /usr/bin/python3 (PYTHON to choose another): Debian marks its system
# Python externally managed (PEP 668), so pip may not install into it. Run the tools as
# .venv/bin/mfdcomp and .venv/bin/python, or after `. .venv/bin/activate`.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
editable=()
if [[ "${1:-}" == "--test" ]]; then
    extras="[test]"
    editable=(-e)
fi
PYTHON=${PYTHON:-/usr/bin/python3}
VENV=${MFDCOMP_VENV:-$PWD/.venv}

die() {
    echo "ci/setup.sh: $*" >&2
    exit 1
}

# Debian packages the set-up needs: venv for the environment, a compiler, Python's headers and
# libzstd's for the extensions built at install.
debs=()
[[ -x "$PYTHON" ]] || debs+=(python3)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || debs+=(python3-venv)
command -v gcc >/dev/null || debs+=(gcc)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    2>/dev/null || debs+=(python3-dev)
# The zstd plugin's compiled streams link the system's libzstd, the one QEMU links.
[[ -f /usr/include/zstd.h ]] || debs+=(libzstd-dev)
if ((${#debs[@]})); then
    echo "setup: installing ${debs[*]} from Debian"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}" >/dev/null ||
        die "apt-get install ${debs[*]} failed"
fi

# System libraries that codecs bind to and the QEMUs the tests migrate between (each script says
# what it installs and where). QEMU with qpl, uadk and qatzip links the libraries built before it,
# and only the tests need it (about 20 min the first time, then cached).
systems=(qatzip qpl uadk qemu)
[[ -n "$extras" ]] && systems+=(qemu-hw)
for name in "${systems[@]}"; do
    bash "ci/system/$name.sh"
done

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import pip' 2>/dev/null; then
    "$PYTHON" -m venv "$VENV" || die "cannot make a virtual environment at $VENV with $PYTHON"
    echo "setup: virtual environment $VENV ($("$VENV/bin/python" --version))"
fi

# One pip run: the plugins depend on mfdcomp, which pip then takes from this checkout.
targets=("${editable[@]}" ".${extras}")
for plugin in plugins/*/; do
    [[ -f "$plugin/pyproject.toml" ]] && targets+=("${editable[@]}" "./${plugin%/}")
done
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${targets[@]}" ||
    die "pip install into $VENV failed"
echo "setup: mfdcomp installed in $VENV: run $VENV/bin/mfdcomp (or '. $VENV/bin/activate' first)"
