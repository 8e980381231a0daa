"""Debian's testssl.sh against orchd's TLS port: no protocol below TLS 1.2, no weak cipher
category, and no finding of the protocol, cipher and vulnerability checks above INFO."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.test_tls import TlsOrchd, pki, tls_factory  # noqa: F401 - fixtures
from tests.tls_support import need_tool

# --protocols, --std (cipher categories), --vulnerable; --fast skips the slowest extras.
CHECKS = ("--protocols", "--std", "--vulnerable", "--fast")
NOT_OK = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "FATAL"}


def test_testssl_finds_nothing_wrong(tls_factory: Callable[..., TlsOrchd],  # noqa: F811
                                     tmp_path: Path) -> None:
    testssl = need_tool("testssl", "testssl.sh")
    daemon = tls_factory()
    report = tmp_path / "testssl.json"
    run = subprocess.run(
        [testssl, *CHECKS, "--quiet", "--color", "0", "--warnings", "off", "--ip", "one",
         "--sneaky", "--jsonfile", str(report), f"127.0.0.1:{daemon.port}"],
        capture_output=True, timeout=600)
    output = run.stdout.decode(errors="replace")
    print(output)
    findings: list[dict[str, Any]] = json.loads(report.read_text())
    by_id = {f["id"]: f for f in findings}
    for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert "not offered" in by_id[proto]["finding"], by_id[proto]
    assert "offered" in by_id["TLS1_2"]["finding"] and "offered" in by_id["TLS1_3"]["finding"]
    for category in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
                     "cipherlist_LOW", "cipherlist_3DES_IDEA"):
        assert "not offered" in by_id[category]["finding"], by_id[category]
    bad = [f for f in findings if f["severity"] in NOT_OK]
    assert bad == [], bad
