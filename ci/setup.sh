#!/usr/bin/env bash
# Installs mfdcomp and what it needs on Debian 12 or 13 (run as root).
#   bash ci/setup.sh          the package and its runtime dependencies
#   bash ci/setup.sh --test   the same, editable, with the test extras
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
editable=()
if [[ "${1:-}" == "--test" ]]; then
    extras="[test]"
    editable=(-e)
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${editable[@]}" ".${extras}"
