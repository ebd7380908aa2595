"""Parsers of QEMU migration streams recorded from real QEMU processes."""
