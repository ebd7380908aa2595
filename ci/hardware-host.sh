#!/usr/bin/env bash
# Checks mfdcomp on a host with Intel QAT, Intel IAA or a HiSilicon ZIP engine, and keeps a report.
# `bash ci/hardware-host.sh --help` says how; the report directory is printed at the end.
set -uo pipefail

usage() {
    cat <<'EOF'
Usage: bash ci/hardware-host.sh [--out DIR] [--require-hw] [-- CONFORMANCE-ARGS...]

For an engineer on an Intel QAT, Intel IAA or HiSilicon (UADK) host. It:
  1. runs `mfdcomp doctor` (text and JSON): devices, drivers, device nodes and
     whether this user can open them, work queues, IOMMU, vendor libraries, and
     the path every codec would send through;
  2. for each codec whose hardware path is available, runs
     `mfdcomp conformance --codec CODEC --require-hw --json` (anything after
     `--` is passed on, e.g. `-- --vectors DIR --size 256M`);
  3. writes a report directory: doctor.txt, doctor.json,
     conformance-CODEC.json (and .stderr), summary.md.

On a host with no usable accelerator it says so loudly, still writes the
doctor report, and exits 0, unless --require-hw is given.

Options:
  --out DIR      report directory (default: ./hw-report-HOST-YYYYmmdd-HHMMSS)
  --require-hw   exit 1 when no codec's hardware path is available
  -h, --help     this text

Environment:
  MFDCOMP        the command to run (default: `mfdcomp` if on PATH, else
                 the checkout's .venv/bin/mfdcomp that ci/setup.sh made),
                 e.g. MFDCOMP=".venv/bin/python -m mfdcomp"

Exit codes:
  0  the doctor ran; every hardware codec passed conformance (or there was
     none and --require-hw was not given)
  1  a conformance run failed, or --require-hw and no hardware path
  2  bad arguments, or `mfdcomp doctor` itself failed
  3  hardware paths are available but this checkout has no
     `mfdcomp conformance` command, so nothing could be checked
EOF
}

out=""
require_hw=0
passthrough=()
while (($#)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --out)
        [[ $# -ge 2 ]] || { echo "hardware-host.sh: --out needs a directory" >&2; exit 2; }
        out="$2"
        shift 2
        ;;
    --require-hw)
        require_hw=1
        shift
        ;;
    --)
        shift
        passthrough=("$@")
        break
        ;;
    *)
        echo "hardware-host.sh: unknown argument: $1 (see --help)" >&2
        exit 2
        ;;
    esac
done

if [[ -n "${MFDCOMP:-}" ]]; then
    read -r -a mfdcomp <<<"$MFDCOMP"
elif command -v mfdcomp >/dev/null; then
    mfdcomp=(mfdcomp)
elif [[ -x "$(dirname "$0")/../.venv/bin/mfdcomp" ]]; then
    # Where ci/setup.sh installed it, in this checkout.
    mfdcomp=("$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/mfdcomp")
else
    echo "hardware-host.sh: no mfdcomp: run 'bash ci/setup.sh' first (or set MFDCOMP)" >&2
    exit 2
fi

host=$(hostname -s 2>/dev/null || echo host)
out=${out:-"hw-report-$host-$(date +%Y%m%d-%H%M%S)"}
mkdir -p "$out" || { echo "hardware-host.sh: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)

banner() {
    echo
    echo "################################################################################"
    printf '# %s\n' "$@"
    echo "################################################################################"
    echo
}

# One field of doctor.json, printed for the shell (any python3 will do: standard library only).
doctor_field() {
    python3 - "$out/doctor.json" "$1" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
field = sys.argv[2]
if field == "hardware_codecs":
    print(" ".join(data["hardware_codecs"]))
elif field == "accelerators":
    print(", ".join(data["accelerators"]))
elif field == "summary":
    print("\n".join(data["summary"]))
elif field == "counts":
    print(", ".join(f"{n} {s}" for s, n in data["counts"].items()))
elif field == "problems":
    for f in data["findings"]:
        if f["status"] == "problem":
            advice = f" — what to do: {f['advice']}" if f["advice"] else ""
            print(f"- **{f['area']}** {f['item']}: {f['detail']}{advice}")
PY
}

"${mfdcomp[@]}" doctor >"$out/doctor.txt" 2>"$out/doctor.stderr"
rc_text=$?
"${mfdcomp[@]}" doctor --json >"$out/doctor.json" 2>>"$out/doctor.stderr"
rc_json=$?
cat "$out/doctor.txt"
if ((rc_text != 0 || rc_json != 0)) || ! doctor_field counts >/dev/null 2>&1; then
    cat "$out/doctor.stderr" >&2
    banner "mfdcomp doctor FAILED (exit $rc_text / $rc_json): see $out/doctor.stderr"
    exit 2
fi

read -r -a hw_codecs <<<"$(doctor_field hardware_codecs)"
conformance_note=""
declare -A results=()
status=0

devices=$(doctor_field accelerators)
if ((${#hw_codecs[@]} == 0)); then
    if [[ -z "$devices" ]]; then
        banner "NO ACCELERATOR DEVICE ON THIS HOST (no Intel QAT, no Intel IAA, no HiSilicon UADK)." \
            "Nothing was checked on hardware: only the software and raw paths can run here."
        conformance_note="Not run: no accelerator device on this host."
    else
        banner "ACCELERATOR DEVICES ARE HERE BUT NO CODEC CAN USE THEM:" "$devices" \
            "Nothing was checked on hardware: the doctor's problems above say what to fix."
        conformance_note="Not run: devices are present ($devices) but no codec's hardware path is available."
    fi
    if ((require_hw)); then
        echo "hardware-host.sh: --require-hw: no codec's hardware path is available; exiting 1" >&2
        status=1
    fi
elif ! "${mfdcomp[@]}" conformance --help >/dev/null 2>&1; then
    banner "Hardware paths are available (${hw_codecs[*]}), but this checkout has no" \
        "\`mfdcomp conformance\` command: nothing could be checked on the hardware." \
        "Update the checkout (the command may not have landed yet) and run this again."
    conformance_note="Not run: \`mfdcomp conformance\` does not exist in this checkout."
    status=3
else
    for codec in "${hw_codecs[@]}"; do
        echo "== mfdcomp conformance --codec $codec --require-hw --json ${passthrough[*]}"
        "${mfdcomp[@]}" conformance --codec "$codec" --require-hw --json "${passthrough[@]}" \
            >"$out/conformance-$codec.json" 2>"$out/conformance-$codec.stderr"
        rc=$?
        results[$codec]=$rc
        if ((rc == 0)); then
            echo "   $codec: passed"
        else
            echo "   $codec: FAILED (exit $rc): see $out/conformance-$codec.json and .stderr"
            status=1
        fi
    done
fi

# One table row per conformance run, from its JSON where it parses.
conformance_rows() {
    for codec in "${!results[@]}"; do
        python3 - "$out/conformance-$codec.json" "$codec" "${results[$codec]}" <<'PY'
import json, sys
path, codec, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
verdict = "passed" if rc == 0 else f"FAILED (exit {rc})"
try:
    data = json.load(open(path))
    counts = "; ".join(
        f"{v['codec']}: {v['passed']} passed, {v['failed']} failed, {v['not_applicable']} not applicable"
        + (f", load error: {v['load_error']}" if v.get("load_error") else "")
        for v in data["verdicts"]
    )
except (OSError, ValueError, KeyError, TypeError) as exc:
    counts = f"no readable JSON ({type(exc).__name__})"
print(f"| {codec} | {verdict} | {counts} |")
PY
    done | sort
}

{
    echo "# mfdcomp on $host"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- kernel: $(uname -srm)"
    echo "- mfdcomp: $("${mfdcomp[@]}" --version 2>&1), commit $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- command: ${mfdcomp[*]}"
    echo
    echo "## Doctor ($(doctor_field counts))"
    echo
    doctor_field summary | sed 's/^/> /'
    echo
    problems=$(doctor_field problems)
    if [[ -n "$problems" ]]; then
        echo "Problems:"
        echo
        echo "$problems"
        echo
    fi
    echo "Full report: doctor.txt, doctor.json."
    echo
    echo "## Conformance on hardware"
    echo
    if [[ -n "$conformance_note" ]]; then
        echo "$conformance_note"
    else
        echo "| codec | result | checks |"
        echo "|---|---|---|"
        conformance_rows
    fi
} >"$out/summary.md"

echo
echo "Report written to $out (summary.md, doctor.txt, doctor.json$( ((${#results[@]})) && echo ", conformance-*.json"))"
exit $status
