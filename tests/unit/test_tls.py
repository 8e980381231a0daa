"""orchd.tls and the config checks of server.tls and an endpoint's tls, with certificates
made here: SNI choice, reload keeping a pair that fails, facts, loader errors with key path,
line and file; the upstream pool keys origins by their TLS settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchd.errors import ConfigError
from orchd.loader import parse_config, validate_endpoint
from orchd.model import CertificatePair, ServerTls, UpstreamTls
from orchd.tls import TlsEdge, restart_keys, upstream_context
from orchd.upstream import UpstreamPool
from tests.tls_support import CA, encrypted_key, other_key, write_pair


@pytest.fixture
def ca() -> CA:
    return CA()


def settings(*pairs: tuple[Path, Path], **kw: str) -> ServerTls:
    return ServerTls(tuple(CertificatePair(str(c), str(k)) for c, k in pairs), **kw)


def test_sni_exact_wildcard_and_default(tmp_path: Path, ca: CA) -> None:
    a = write_pair(tmp_path, "a", ca.issue("a.test", "127.0.0.1"))
    b = write_pair(tmp_path, "b", ca.issue("*.b.test"))
    edge = TlsEdge(settings(a, b))
    assert edge.choose("a.test").pair.cert_file == str(a[0])
    assert edge.choose("x.b.test").pair.cert_file == str(b[0])
    assert edge.choose("X.B.TEST.").pair.cert_file == str(b[0])
    assert edge.choose("y.x.b.test").pair.cert_file == str(a[0])  # one label only
    assert edge.choose(None).pair.cert_file == str(a[0])
    facts = edge.status()["certificates"]
    assert facts[0]["subjects"] == ["a.test", "127.0.0.1"]  # type: ignore[index]


def test_reload_keeps_a_pair_that_fails_and_takes_one_that_loads(tmp_path: Path,
                                                                    ca: CA) -> None:
    first = ca.issue("a.test")
    a = write_pair(tmp_path, "a", first)
    edge = TlsEdge(settings(a))
    write_pair(tmp_path, "a", ca.issue("a.test"), key_pem=other_key())
    errors = edge.reload(settings(a))
    assert len(errors) == 1 and "does not match" in str(errors[0])
    assert edge.facts[0].serial == first.serial
    write_pair(tmp_path, "a", ca.issue("a.test", expired=True))
    errors = edge.reload(settings(a))
    assert "expired" in str(errors[0]) and errors[0].file == str(a[0])
    newer = ca.issue("a.test")
    write_pair(tmp_path, "a", newer)
    assert edge.reload(settings(a)) == []
    assert edge.facts[0].serial == newer.serial


def test_restart_keys() -> None:
    one = settings((Path("c"), Path("k")))
    assert restart_keys(None, one) == ["server.tls"]
    assert restart_keys(one, ServerTls(one.certificates, min_version="1.3")) == [
        "server.tls.min_version"]
    assert restart_keys(one, settings((Path("d"), Path("e")))) == []


def _config(tls: str) -> str:
    return f"server:\n  tls:\n{tls}endpoints: []\n"


def test_loader_errors_name_key_line_and_file(tmp_path: Path, ca: CA) -> None:
    good = write_pair(tmp_path, "good", ca.issue("a.test"))
    issued = ca.issue("a.test")
    enc = write_pair(tmp_path, "enc", issued, key_pem=encrypted_key(issued))
    cases = {
        f"    certificates:\n      - {{cert_file: {good[0]}, key_file: {good[1]}}}\n"
        "    client_auth: required\n":
            "server.tls.client_auth (line 5): 'required' needs client_ca_file",
        f"    certificates:\n      - {{cert_file: {tmp_path}/none.pem, key_file: {good[1]}}}\n":
            f"server.tls.certificates[0].cert_file (line 4): {tmp_path}/none.pem: cannot "
            "read the file",
        f"    certificates:\n      - {{cert_file: {enc[0]}, key_file: {enc[1]}}}\n":
            f"server.tls.certificates[0].key_file (line 4): {enc[1]}: the private key is "
            "encrypted",
    }
    for block, message in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_config(_config(block), "orchestrator.yaml")
        assert message in str(info.value), str(info.value)
    config = parse_config(_config(
        f"    certificates:\n      - {{cert_file: {good[0]}, key_file: {good[1]}}}\n"))
    assert config.server.tls is not None and config.server.tls.min_version == "1.2"
    with pytest.raises(ConfigError, match=r"redirect_http_port.*needs server\.tls"):
        parse_config("server:\n  redirect_http_port: 8080\n")


def test_endpoint_tls_checks_and_warning(tmp_path: Path, ca: CA) -> None:
    client = write_pair(tmp_path, "client", ca.issue("c", client=True))
    with pytest.raises(ConfigError, match=r"tls\.key_file.*go together"):
        validate_endpoint({"name": "e", "url": "https://x.test", "tls": {
            "cert_file": str(client[0])}})
    with pytest.raises(ConfigError, match=r"tls\.ca_file.*missing\.pem"):
        validate_endpoint({"name": "e", "url": "https://x.test", "tls": {
            "ca_file": str(tmp_path / "missing.pem")}})
    spec = validate_endpoint({"name": "e", "url": "https://x.test", "tls": {
        "cert_file": str(client[0]), "key_file": str(client[1]), "server_name": "b.test"}})
    assert spec.tls == UpstreamTls(cert_file=str(client[0]), key_file=str(client[1]),
                                   server_name="b.test")
    config = parse_config("endpoints:\n  - name: e\n    url: https://x.test\n"
                          "    tls: {verify: false}\n")
    assert any("endpoints[0].tls.verify (line 4)" in w and "not verified" in w
               for w in config.warnings)


def test_upstream_pool_keys_origins_by_tls(tmp_path: Path, ca: CA) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    pool = UpstreamPool()
    plain = pool.origin_for("https://b.test:8443/api")
    mine = UpstreamTls(ca_file=str(ca_file), server_name="backend.internal")
    tls = pool.origin_for("https://b.test:8443/api", mine)
    assert plain is not tls
    assert tls is pool.origin_for("https://b.test:8443/other", mine)
    assert tls.server_hostname == "backend.internal" and plain.server_hostname == "b.test"
    assert tls.ssl is upstream_context(mine) and plain.ssl is not tls.ssl
    off = pool.origin_for("https://b.test:8443", UpstreamTls(verify=False))
    assert off.ssl is not None and not off.ssl.check_hostname
