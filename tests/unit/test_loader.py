"""orchd.loader: YAML -> ${VAR} expansion -> JSON Schema -> Config, errors with path and line."""

from __future__ import annotations

import textwrap

import pytest

from orchd.errors import ConfigError
from orchd.loader import (
    format_path,
    load_config,
    parse_config,
    validate_endpoint,
    validate_registration,
)
from orchd.model import BreakerSettings


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc(text), "test.yaml", env or {})
    return [str(e) for e in info.value.errors]


def test_format_path() -> None:
    assert format_path(("endpoints", 1, "url")) == "endpoints[1].url"
    assert format_path(()) == ""
    assert format_path(("server", "port")) == "server.port"


def test_yaml_syntax_error_names_the_line() -> None:
    errs = errors_of("""
        endpoints:
          - name: a
            url: [http://x
        log_level: INFO
    """)
    assert len(errs) == 1
    assert "YAML syntax error" in errs[0]
    assert "(line 4)" in errs[0] or "(line 3)" in errs[0]


def test_unknown_key_names_path_and_line() -> None:
    errs = errors_of("""
        server:
          port: 8000
          prot: 1
    """)
    assert errs == [errs[0]]
    assert errs[0].startswith("server.prot (line 3): unknown key 'prot'")


def test_unknown_endpoint_key() -> None:
    errs = errors_of("""
        endpoints:
          - name: a
            url: http://127.0.0.1:1
            methdos: [GET]
    """)
    assert errs[0].startswith("endpoints[0].methdos (line 4): unknown key 'methdos'")


def test_every_unknown_key_is_named() -> None:
    errs = errors_of("""
        server:
          prot: 1
          hots: x
        extra: true
    """)
    assert [e.split(":")[0] for e in errs] == ["extra (line 4)", "server.hots (line 3)",
                                               "server.prot (line 2)"]


def test_bad_url_message_in_design_style() -> None:
    errs = errors_of("""
        endpoints:
          - name: good
            url: http://127.0.0.1:9001/api
          - name: bad
            url: htp://x
    """)
    assert errs == ["endpoints[1].url (line 5): 'htp://x' is not an http(s) URL "
                    "(scheme://host[:port][/path])"]


@pytest.mark.parametrize("url", ["ftp://h/x", "http://", "http://user:pw@h/", "http://h/?q=1",
                                 "http://h:99999/", "not a url", "http://h/#frag"])
def test_bad_urls_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_endpoint({"name": "a", "url": url})
    assert info.value.errors[0].path == "url"
    assert "is not an http(s) URL" in info.value.errors[0].message


def test_every_error_is_listed() -> None:
    errs = errors_of("""
        server:
          port: 70000
        endpoints:
          - name: a
            url: http://127.0.0.1:1
          - name: "bad name"
            url: http://127.0.0.1:1
          - name: a
            url: http://127.0.0.1:2
        health_check:
          interval: fast
    """)
    joined = "\n".join(errs)
    assert "server.port (line 2)" in joined
    assert "endpoints[1].name (line 6): 'bad name' is not a valid name" in joined
    assert "endpoints[2].name (line 8): duplicate endpoint name 'a' (first at endpoints[0])" \
        in joined
    assert "health_check.interval (line 11): 'fast' is not of type number" in joined
    assert len(errs) == 4


def test_url_and_urls_rules() -> None:
    with pytest.raises(ConfigError) as info:
        validate_endpoint({"name": "a"})
    assert "needs 'url'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        validate_endpoint({"name": "a", "url": "http://h", "urls": ["http://h"]})
    assert "cannot both be set" in str(info.value)


def test_env_expansion_and_defaults() -> None:
    text = doc("""
        server:
          admin_token: ${TOKEN}
          port: ${PORT:-8123}
          host: ${HOST_X:-127.0.0.2}
        endpoints:
          - name: a
            url: http://${UP_HOST}:9001/api
    """)
    config = parse_config(text, "t.yaml", {"TOKEN": "s3cret", "UP_HOST": "127.0.0.9"})
    assert config.server.admin_token == "s3cret"
    assert config.server.port == 8123  # an expanded plain scalar takes its YAML type
    assert config.server.host == "127.0.0.2"
    assert config.endpoints[0].url == "http://127.0.0.9:9001/api"


def test_env_default_used_when_variable_empty() -> None:
    config = parse_config("server:\n  admin_token: ${T:-fallback}\n", None, {"T": ""})
    assert config.server.admin_token == "fallback"
    config = parse_config("server:\n  admin_token: ${T:-}\n", None, {})
    assert config.server.admin_token == ""


def test_missing_env_variable_is_an_error_with_line() -> None:
    errs = errors_of("""
        log_level: INFO
        server:
          admin_token: ${NOPE_NOT_SET}
    """)
    assert errs == ["server.admin_token (line 3): environment variable NOPE_NOT_SET is not set"]


def test_original_config_loads_unchanged() -> None:
    # The keys the original Orchestrator API documented.
    config = parse_config(doc("""
        endpoints:
          - name: user_service
            url: http://localhost:8001/api/v1
            version: v1
            methods: [GET, POST, PUT, DELETE]
            auth_type: bearer
            timeout: 30
            retries: 3
            health_check_path: /health
        health_check:
          enabled: true
          interval: 30
          timeout: 10
          healthy_threshold: 2
          unhealthy_threshold: 3
        circuit_breaker:
          failure_threshold: 5
          reset_timeout: 60
          half_open_max_calls: 3
        log_level: info
    """), "orig.yaml", {})
    ep = config.endpoints[0]
    assert ep.name == "user_service"
    assert ep.url == "http://localhost:8001/api/v1"
    assert ep.methods == ("GET", "POST", "PUT", "DELETE")
    assert ep.retries == 3
    assert config.log_level == "INFO"
    assert config.circuit_breaker == BreakerSettings(5, 60.0, 3, None)
    assert config.warnings == ()


def test_legacy_keys_accepted_with_warnings() -> None:
    config = parse_config(doc("""
        endpoints:
          - name: a
            url: http://127.0.0.1:1
            description: the user service
        circuit_breaker:
          fallback_strategy: cache
        metrics:
          enabled: true
    """), "legacy.yaml", {})
    assert config.warnings == (
        "endpoints[0].description (line 4): is ignored",
        "circuit_breaker.fallback_strategy (line 6): is ignored; use fallback_response",
        "metrics (line 7): is ignored; /metrics is served unless server.metrics is false",
    )


def test_defaults_and_per_endpoint_overrides() -> None:
    config = parse_config(doc("""
        endpoints:
          - name: a
            url: http://127.0.0.1:1/base/
            circuit_breaker: {failure_threshold: 2}
    """), None, {})
    ep = config.endpoints[0]
    assert ep.url == "http://127.0.0.1:1/base"
    assert ep.methods == ("GET",)
    assert ep.timeout == 30.0 and ep.retries == 1 and ep.auth_type == "none"
    assert BreakerSettings.from_dict(ep.breaker_overrides, config.circuit_breaker) == \
        BreakerSettings(2, 60.0, 3, None)
    assert config.server.max_body_size == 10485760
    assert config.health_check.interval == 30.0


def test_empty_document_is_the_defaults() -> None:
    config = parse_config("", None, {})
    assert config.endpoints == ()
    assert config.server.port == 8000


def test_non_mapping_document() -> None:
    errs = errors_of("- a\n- b\n")
    assert errs == ["(document) (line 1): the document must be a mapping of keys"]


def test_load_config_unreadable_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read the file" in str(info.value)
    bad = tmp_path / "latin.yaml"
    bad.write_bytes(b"log_level: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "not UTF-8" in str(info.value)


def test_registration_body() -> None:
    spec = validate_registration({"config": {"name": "x", "url": "http://127.0.0.1:1"}})
    assert spec.name == "x"
    with pytest.raises(ConfigError) as info:
        validate_registration({"config": {"name": "x", "url": "htp://x", "bogus": 1}})
    paths = sorted(e.path for e in info.value.errors)
    assert paths == ["config.bogus", "config.url"]
    with pytest.raises(ConfigError) as info:
        validate_registration({"name": "x"})
    assert [str(e) for e in info.value.errors] == [
        "name: unknown key 'name' (known keys: config)", "(document): 'config' is required"]
    with pytest.raises(ConfigError) as info:
        validate_registration([])
    assert [str(e) for e in info.value.errors] == ["(document): [] is not of type object"]


def test_ttl_on_a_file_endpoint_is_accepted_with_a_warning() -> None:
    config = parse_config("endpoints:\n  - name: a\n    url: http://h\n    ttl: 30\n", "f.yaml")
    assert config.warnings == (
        "endpoints[0].ttl (line 4): is ignored: a ttl applies to API registrations, "
        "not to the file's endpoints",
    )
