"""Clients of the transfer engine: where the pages come from and go to."""

from mfdcomp.clients.ram import RamBlock, RamClient

__all__ = ["RamBlock", "RamClient"]
