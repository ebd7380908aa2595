"""PNG pictures of bench results (matplotlib, imported only when a plot is asked for: the ``bench`` extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from mfdcomp.bench.fit import LineFit
from mfdcomp.bench.netns import LinkSweepResult, rate_text
from mfdcomp.bench.results import MatrixResult
from mfdcomp.bench.scaling import GiB, ScalingResult
from mfdcomp.errors import MfdcompError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_link_sweep", "plot_matrix", "plot_scaling"]


def _figure(width: float, height: float, rows: int = 1, columns: int = 1) -> tuple[Figure, list[object]]:
    try:
        import matplotlib
    except ImportError as exc:
        raise MfdcompError("--plot needs matplotlib: pip install 'mfdcomp[bench]'") from exc
    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    return figure, axes


def _log_y(axis: Axes) -> None:
    """A log y axis labelled in plain numbers (0.2, 0.5, 1, 2, 5), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))


def _save(figure: Figure, path: Path) -> None:
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise MfdcompError(f"cannot write {path}: {exc}") from exc


def plot_matrix(result: MatrixResult, path: Path) -> None:
    """One panel per kind: GB/s of each codec × channels as bars, log scale, with the same run's baselines.

    Dashed lines: the loopback pump over as many connections (colour of the
    channel count). Black bars' caps: min(cores, channels) × the raw library,
    one thread. Stars: QEMU's own migration. Rings: mfdcomp's whole session
    (connect to verified end) over the same guest bytes.
    """
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    kinds = list(dict.fromkeys(cell.kind for cell in result.cells))
    labels = list(dict.fromkeys(cell.codec.label for cell in result.cells))
    channels = sorted({cell.channels for cell in result.cells})
    columns = min(3, len(kinds)) or 1
    rows = math.ceil(len(kinds) / columns) or 1
    figure, axes = _figure(5.2 * columns, 3.9 * rows, rows, columns)
    colours = {count: f"C{index}" for index, count in enumerate(channels)}
    width = 0.8 / max(1, len(channels))
    for axis, kind in zip(axes, kinds, strict=False):
        assert isinstance(axis, Axes)
        for index, label in enumerate(labels):
            for slot, count in enumerate(channels):
                x = index - 0.4 + width * (slot + 0.5)
                cell = next(
                    (c for c in result.cells if (c.kind, c.codec.label, c.channels) == (kind, label, count)), None
                )
                if cell is None:
                    continue
                if not cell.ok:
                    axis.text(x, 0.02, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color="red")
                    continue
                axis.bar(x, cell.gb_per_s, width, color=colours[count])
                # The whole session (connect to verified end) as a rate: what the user waits for.
                session = cell.guest_bytes / cell.session_seconds / 1e9
                axis.plot([x], [session], marker="o", markersize=6, color="black", markerfacecolor="none")
                library = result.find_library(kind, cell.codec)
                if library is not None and library.result is not None:
                    ideal = min(result.cores, count) * library.result.compress_gb_per_s
                    axis.plot([x - width / 2, x + width / 2], [ideal, ideal], color="black", linewidth=2)
                qemu = result.find_qemu(kind, cell.codec, count)
                if qemu is not None and qemu.seconds_runs:
                    axis.plot([x], [qemu.gb_per_s], marker="*", markersize=10, color="gold", markeredgecolor="k")
        for count in channels:
            pump = result.find_pump(kind, count)
            if pump is not None and pump.gb_per_s_runs:
                axis.axhline(pump.gb_per_s, color=colours[count], linestyle="--", linewidth=1)
        _log_y(axis)
        axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        axis.set_ylabel("GB/s of guest RAM")
        axis.set_title(f"{kind} ({result.size >> 20} MiB, {result.transport})", fontsize=10)
        axis.grid(axis="y", which="both", alpha=0.3)
    for axis in axes[len(kinds) :]:
        assert isinstance(axis, Axes)
        axis.set_visible(False)
    handles: list[Artist] = [Patch(color=colours[c], label=f"{c} channel(s)") for c in channels]
    handles += [
        Line2D([], [], color="grey", linestyle="--", label="loopback pump, same connections"),
        Line2D([], [], color="black", linewidth=2, label="raw library × min(cores, channels)"),
        Line2D([], [], marker="*", color="gold", markeredgecolor="k", linestyle="", label="QEMU 10 (total-time)"),
        Line2D([], [], marker="o", color="black", markerfacecolor="none", linestyle="", label="mfdcomp whole session"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize=8)
    figure.suptitle(f"mfdcomp bench: best of {result.repeats}, {result.cores} cores", fontsize=11)
    _save(figure, path)


def plot_scaling(result: ScalingResult, path: Path) -> None:
    """Seconds over GiB per codec, each run a point, with the least-squares line and its numbers."""
    from matplotlib.axes import Axes

    figure, (axis,) = _figure(6.4, 4.4)
    assert isinstance(axis, Axes)
    for index, (label, runs) in enumerate(result.runs.items()):
        colour = f"C{index}"
        axis.plot([s / GiB for s, _ in runs], [r.seconds for _, r in runs], "o", color=colour, label=label)
        fit: LineFit | None = result.fits.get(label)
        if fit is not None:
            xs = [0.0, max(result.sizes) / GiB]
            axis.plot(
                xs,
                [fit.at(x) for x in xs],
                "-",
                color=colour,
                label=f"{label}: {fit.slope:.3f} s/GiB {fit.intercept:+.3f} s, R² {fit.r_squared:.4f}",
            )
    axis.set_xlabel("image size (GiB)")
    axis.set_ylabel("transfer seconds")
    axis.set_title(f"scaling: {result.kind} image, {result.channels} channels, {result.transport}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, path)


def plot_link_sweep(result: LinkSweepResult, path: Path) -> None:
    """GB/s of guest RAM per codec at each link speed, beside what the link itself carries."""
    from matplotlib.axes import Axes

    figure, (axis,) = _figure(6.4, 4.4)
    assert isinstance(axis, Axes)
    positions = {rate: index for index, rate in enumerate(result.rates)}
    labels = list(dict.fromkeys(cell.codec.label for cell in result.cells))
    for index, label in enumerate(labels):
        cells = [c for c in result.cells if c.codec.label == label and c.runs]
        axis.plot([positions[c.rate] for c in cells], [c.gb_per_s for c in cells], "o-", color=f"C{index}", label=label)
    limited = [rate for rate in result.rates if rate is not None]
    axis.plot(
        [positions[rate] for rate in limited],
        [rate / 8 for rate in limited],
        "k--",
        linewidth=1,
        label="link rate (GB/s)",
    )
    axis.set_xticks(range(len(result.rates)), [rate_text(rate) for rate in result.rates])
    _log_y(axis)
    axis.set_xlabel("link (veth pair between two namespaces, tc tbf)")
    axis.set_ylabel("GB/s of guest RAM (median)")
    axis.set_title(f"link sweep: {result.kind} image, {result.size >> 20} MiB, {result.channels} channels", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    _save(figure, path)
