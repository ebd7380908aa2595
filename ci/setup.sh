#!/usr/bin/env bash
# Installs mfdcomp, its built-in codec plugins and what they need, on Debian 12 or 13 (run as root).
#   bash ci/setup.sh          the package, the plugins under plugins/ and their runtime dependencies
#   bash ci/setup.sh --test   the same, editable, with the test extras
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
editable=()
if [[ "${1:-}" == "--test" ]]; then
    extras="[test]"
    editable=(-e)
fi

# System libraries that codecs bind to (each script says what it installs and where).
for script in ci/system/*.sh; do
    [[ -e "$script" ]] && bash "$script"
done

# One pip run: the plugins depend on mfdcomp, which pip then takes from this checkout.
targets=("${editable[@]}" ".${extras}")
for plugin in plugins/*/; do
    [[ -f "$plugin/pyproject.toml" ]] && targets+=("${editable[@]}" "./${plugin%/}")
done
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${targets[@]}"
