"""Make a QEMU-layout x509 credentials directory with the ``openssl`` command (tests, the harness, the bench).

QEMU's GnuTLS checks certificates strictly (``qcrypto_tls_creds_check_cert``):
the CA needs basicConstraints CA:TRUE and keyCertSign, a server certificate
serverAuth and a client one clientAuth, neither of them a CA. The server
certificate names ``localhost``, ``127.0.0.1`` and ``::1`` by default, as QEMU
checks the migration URI's host against it.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mfdcomp.transport.tls import TlsError

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
CLIENT_NAME = "mfdcomp-source"

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise TlsError("the openssl command is not installed (apt-get install openssl)")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:
        raise TlsError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _san(names: Sequence[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            entries.append(f"IP:{name}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


def make_creds(
    directory: Path,
    *,
    ca_from: Path | None = None,
    server_names: Sequence[str] = SERVER_NAMES,
    client_name: str = CLIENT_NAME,
    days: int = 2,
    expired: bool = False,
) -> Path:
    """Write ca-cert.pem, server-cert/key.pem, client-cert/key.pem into ``directory``; returns it.

    ``ca_from``: a directory made by this function whose CA (``ca-key.pem`` kept beside ``ca-cert.pem``)
    signs the new certificates; by default a new CA. ``expired``: server and client certificates
    whose validity has already ended (notAfter = now; this waits until that second has passed).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if ca_from is None:
        _openssl(
            "req", "-x509", *_KEY, "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-subj", "/CN=mfdcomp test CA",
            "-days", str(days), "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
        )  # fmt: skip
    else:
        for name in ("ca-key.pem", "ca-cert.pem"):
            shutil.copyfile(ca_from / name, directory / name)
    with tempfile.TemporaryDirectory(prefix="mfdcomp-creds-") as scratch:
        for role, names, usage in (
            ("server", list(server_names), "serverAuth"),
            ("client", [client_name], "clientAuth"),
        ):
            ext = Path(scratch) / f"{role}.ext"
            ext.write_text(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                f"extendedKeyUsage={usage}\nsubjectAltName={_san(names)}\n"
            )
            csr = Path(scratch) / f"{role}.csr"
            _openssl(
                "req", *_KEY, "-keyout", f"{role}-key.pem", "-out", str(csr), "-subj", f"/CN={names[0]}", cwd=directory
            )
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-out", f"{role}-cert.pem", "-days", "0" if expired else str(days), "-extfile", str(ext),
                cwd=directory,
            )  # fmt: skip
    (directory / "ca-cert.srl").unlink(missing_ok=True)
    if expired:
        time.sleep(1.1)  # notAfter is this second: past it, the certificates are expired
    return directory
