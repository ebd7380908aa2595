"""Text tables of bench results, for a person (the JSON has every number)."""

from __future__ import annotations

from collections import defaultdict

from mfdcomp.bench.netns import LinkSweepResult, rate_text
from mfdcomp.bench.results import Cell, MatrixResult
from mfdcomp.bench.scaling import GiB, ScalingResult
from mfdcomp.bench.targets import FAIL, NOT_EVALUATED, PASS, Verdict

__all__ = ["link_sweep_text", "matrix_text", "scaling_text", "targets_text"]

MiB = 1 << 20

_HEADER = (
    f"{'codec':<9} {'ch':>2} {'GB/s best (med)':>16} {'s best':>7} {'session s':>9} {'wire MiB':>9} {'ratio':>7} "
    f"{'CPU s snd/rcv':>13} {'RSS MiB snd/rcv':>15} {'lib 1-thr c/d GB/s':>18} {'/lib×n':>6} "
    f"{'pump GB/s':>9} {'/pump':>5} {'QEMU GB/s':>9} {'QEMU s':>7} {'/QEMU xfer/sess':>15} {'QEMU CPU s snd/rcv':>18}"
)


def _row(result: MatrixResult, cell: Cell) -> str:
    head = f"{cell.codec.label:<9} {cell.channels:>2} "
    if not cell.ok:
        return head + f"FAILED: {cell.error}"
    text = (
        head
        + f"{cell.gb_per_s:>7.3f} ({cell.gb_per_s_median:>6.3f}) {cell.seconds:>7.3f} {cell.session_seconds:>9.3f} "
        f"{cell.wire_bytes / MiB:>9.1f} {cell.ratio:>7.2f} "
        f"{cell.send_cpu_seconds:>6.2f}/{cell.recv_cpu_seconds:<6.2f} "
        f"{cell.send_peak_rss / MiB:>7.0f}/{cell.recv_peak_rss / MiB:<7.0f} "
    )
    library = result.find_library(cell.kind, cell.codec)
    if library is not None and library.result is not None:
        single = library.result.compress_gb_per_s
        share = cell.gb_per_s / (min(result.cores, cell.channels) * single)
        text += f"{single:>8.3f}/{library.result.decompress_gb_per_s:<9.3f} {share:>6.0%} "
    else:
        text += f"{'not run':>18} {'-':>6} "
    pump = result.find_pump(cell.kind, cell.channels)
    if pump is not None and pump.gb_per_s_runs:
        text += f"{pump.gb_per_s:>9.2f} {cell.gb_per_s / pump.gb_per_s:>5.0%} "
    else:
        text += f"{'not run':>9} {'-':>5} "
    qemu = result.find_qemu(cell.kind, cell.codec, cell.channels)
    if qemu is None or not qemu.seconds_runs:
        return text + f"{'not run':>9}"
    text += f"{qemu.gb_per_s:>9.3f} {qemu.seconds:>7.3f} "
    text += f"{cell.seconds / qemu.seconds:>7.2f}/{cell.session_seconds / qemu.seconds:<7.2f} "
    send, recv = qemu.send_cpu_seconds, qemu.recv_cpu_seconds
    text += f"{send:>11.2f}/{recv:.2f}" if send is not None and recv is not None else f"{'-':>18}"
    return text


def matrix_text(result: MatrixResult) -> str:
    lines = [
        f"mfdcomp bench: {result.size / MiB:g} MiB images over {result.transport} sockets, {result.cores} cores, "
        f"best (median) of {result.repeats} run(s); GB/s of guest RAM (10^9 B/s); ratio = guest/wire bytes",
        "lib 1-thr c/d: the raw library, one thread, compress/decompress on the same pages; "
        "/lib×n: GB/s over min(cores, channels) × lib compress; /pump: over the loopback pump's GB/s "
        "(over TLS in a TLS run); "
        "CPU s: medians, mfdcomp's over its transfer, QEMU's from /proc around its migration; "
        "s best: the transfer (connect to the last packet); session s: connect to the verified end, as the user "
        "waits; QEMU s: its total-time; /QEMU: mfdcomp's transfer and session time over QEMU's total-time",
    ]
    for kind, image in result.images.items():
        lines += ["", f"{kind} ({image.mix})", _HEADER]
        lines += [_row(result, cell) for cell in result.cells if cell.kind == kind]
        not_run: dict[str, list[str]] = defaultdict(list)
        for pump in result.pump:
            if pump.kind == kind and pump.not_run:
                not_run[f"loopback pump: {pump.not_run}"].append(f"×{pump.channels}")
        for library in result.library:
            if library.kind == kind and library.not_run:
                not_run[f"raw library: {library.not_run}"].append(library.codec.label)
        for qemu in result.qemu:
            if qemu.kind == kind and qemu.not_run:
                not_run[f"QEMU: {qemu.not_run}"].append(f"{qemu.codec.label}×{qemu.channels}")
        lines += [f"NOT RUN ({', '.join(where)}): {why}" for why, where in not_run.items()]
    # Which library encoded the packets of each codec (send side), where the codec says: isal, zlib, libqpl.
    used: dict[str, set[str]] = defaultdict(set)
    for cell in result.cells:
        for run in cell.runs:
            used[cell.codec.label].update(run.implementations)
    if any(used.values()):
        lines += [
            "",
            "implementations that encoded the packets: "
            + "; ".join(f"{label}: {', '.join(sorted(names))}" for label, names in used.items() if names),
        ]
    measures = {b.codec.label: b.result.measures for b in result.library if b.result is not None}
    if measures:
        lines += ["", "raw-library references (one thread, the same packets of pages, rates in guest bytes):"]
        lines += [f"  {label}: {what}" for label, what in measures.items()]
    return "\n".join(lines)


def targets_text(verdicts: list[Verdict]) -> str:
    counts = {status: sum(v.status == status for v in verdicts) for status in (PASS, FAIL, NOT_EVALUATED)}
    lines = ["targets (best of the repeats on both sides of each comparison):"]
    lines += ["  " + verdict.line() for verdict in verdicts]
    lines.append("  " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    return "\n".join(lines)


def scaling_text(result: ScalingResult) -> str:
    lines = [
        f"scaling: {result.kind} image, {result.channels} channels, {result.transport} sockets",
        f"{'codec':<9} {'MiB':>6} {'seconds':>8} {'GB/s':>7}",
    ]
    for label, runs in result.runs.items():
        lines += [f"{label:<9} {size / MiB:>6g} {run.seconds:>8.3f} {run.gb_per_s:>7.3f}" for size, run in runs]
    for label, fit in result.fits.items():
        lines.append(
            f"fit {label}: time = {fit.slope:.4f} s/GiB × size {fit.intercept:+.4f} s, "
            f"R² {fit.r_squared:.5f} ({fit.points} points; {1 / fit.slope * GiB / 1e9:.2f} GB/s marginal)"
        )
    lines += [f"NOT FITTED {label}: {why}" for label, why in result.errors.items()]
    return "\n".join(lines)


def link_sweep_text(result: LinkSweepResult) -> str:
    title = (
        f"link sweep: {result.kind} image, {result.size / MiB:g} MiB, {result.channels} channels, TCP over a veth pair "
        "between two namespaces, tc tbf on the source end; GB/s of guest RAM (median)"
    )
    if result.not_run is not None:
        return f"{title}\nNOT RUN: {result.not_run}"
    lines = [title, f"{'codec':<9}" + "".join(f" {rate_text(rate):>12}" for rate in result.rates)]
    labels = list(dict.fromkeys(cell.codec.label for cell in result.cells))
    for label in labels:
        row = f"{label:<9}"
        for rate in result.rates:
            cell = next((c for c in result.cells if c.codec.label == label and c.rate == rate), None)
            row += f" {cell.gb_per_s:>12.3f}" if cell is not None and cell.runs else f" {'failed':>12}"
        lines.append(row)
    lines.append("where compression pays (against none on the same link):")
    lines += [f"  {payoff.codec}: {payoff.summary}" for payoff in result.payoffs]
    errors = [f"FAILED {rate_text(c.rate)} {c.codec.label}: {c.error}" for c in result.cells if c.error]
    return "\n".join(lines + errors)
