"""A process that ran libqatzip can still make TLS contexts (its first one included).

After about 1500 qatzip packets, a fresh process's first ssl.SSLContext failed with OpenSSL's "malloc
failure" (the TLS rows of the QEMU matrix and every TLS test after the conformance suite's qatzip
stream check, in one pytest process). Each case runs in a child interpreter: the failure depends on
what the process did before its first context.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mfdcomp.registry import default_registry

CHILD = """
import os, ssl
from mfdcomp.registry import default_registry
codec = default_registry().get("qatzip")
path = codec.probe()[-1].path
pages = [memoryview(os.urandom(2048) + bytes(2048)) for _ in range(4)]
method = codec.methods(4096, None, path)
method.send_setup(0)
for _ in range(3000):
    method.send_prepare(pages)
method.send_cleanup()
ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
print("context made")
"""


def test_a_tls_context_after_thousands_of_qatzip_packets() -> None:
    codec = default_registry().get("qatzip")
    if not any(p.available and "libqatzip" in p.reason for p in codec.probe()):
        pytest.skip(f"libqatzip is not loaded here: {[p.reason for p in codec.probe()]}")
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "context made" in done.stdout, done.stderr[-2000:]
