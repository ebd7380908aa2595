"""Connections that carry channels: tcp, unix, vsock, inherited fds, files."""
