"""Least-squares straight line: time = slope × size + intercept, with R²."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LineFit", "fit_line"]


@dataclass(frozen=True)
class LineFit:
    slope: float
    intercept: float
    r_squared: float
    points: int

    def at(self, x: float) -> float:
        return self.slope * x + self.intercept

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit:
    """Ordinary least squares over the points (x, y); needs two distinct x.

    R² is 1 - SS_res / SS_tot; when every y is the same (SS_tot = 0) the
    horizontal line through them explains them exactly and R² is 1.
    """
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        raise ValueError("a line needs points at two different x at least")
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    r_squared = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return LineFit(slope=slope, intercept=intercept, r_squared=r_squared, points=n)
