"""TLS migrations of real QEMU 10.0 through the tap (issue 19); the decoding/transcoding rows are in
test_qemu_matrix.py (harness.tls_matrix). Here: a tap whose certificates QEMU's CA did not sign is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfdcomp.qemu.harness import MigrationError, MigrationPair, MigrationSettings, run_case, tls_matrix
from mfdcomp.qemu.locate import QemuBuild, QemuUnavailable, build
from mfdcomp.qemu.tap import Tap
from mfdcomp.transport.tlscreds import make_creds


def _qemu() -> QemuBuild:
    try:
        return build("10.0")
    except QemuUnavailable as exc:
        pytest.skip(str(exc))


def test_a_tls_migration_is_decoded_and_transcoded_through_the_tap() -> None:
    case = next(c for c in tls_matrix() if c.transcode is not None)
    result = run_case(case, timeout=120.0)
    assert result.ok, "\n".join(result.problems)
    assert result.migration is not None and result.migration.ram_equal
    assert result.transcoded_replay_sha256 == result.migration.image_sha256


def test_a_tap_with_another_ca_is_refused_by_the_qemu_source(tmp_path: Path) -> None:
    qemu = _qemu()
    settings = MigrationSettings(channels=2, tls=True)
    foreign = make_creds(tmp_path / "foreign")
    with MigrationPair(qemu, qemu, settings, ram_size=32 << 20, timeout=30.0) as pair:
        tap = Tap("tcp:127.0.0.1:0", pair.listen(), tls_creds=foreign)
        with tap:
            via = tap.start()
            with pytest.raises(MigrationError, match="failed"):
                pair.migrate(via)
            assert tap.finished(10.0)
            print(tap.error)
            assert tap.error is not None and "certificate" in tap.error
