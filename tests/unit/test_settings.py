"""orchd.settings: flags over environment over the file over defaults."""

from __future__ import annotations

import pytest

from orchd.errors import ConfigError
from orchd.loader import parse_config
from orchd.settings import Overrides, apply_overrides, find_config

FILE = """
server:
  host: 127.0.0.5
  port: 8100
  state_dir: /srv/state
  control_socket: /srv/orchd.sock
log_level: WARNING
"""


def test_file_values_without_overrides() -> None:
    config, boot = apply_overrides(parse_config(FILE, None, {}), Overrides(), env={})
    assert (boot.host, boot.port, boot.state_dir, boot.control_socket) == \
        ("127.0.0.5", 8100, "/srv/state", "/srv/orchd.sock")
    assert config.log_level == "WARNING"


def test_environment_overrides_file() -> None:
    env = {"HOST": "0.0.0.0", "PORT": "9000", "LOG_LEVEL": "debug",
           "ORCHD_STATE_DIR": "/tmp/s", "ORCHD_CONTROL_SOCKET": "none"}
    config, boot = apply_overrides(parse_config(FILE, None, {}), Overrides(), env=env)
    assert (boot.host, boot.port, boot.state_dir, boot.control_socket) == \
        ("0.0.0.0", 9000, "/tmp/s", None)
    assert config.log_level == "DEBUG"
    assert config.server.state_dir == "/tmp/s"


def test_flags_override_environment() -> None:
    env = {"HOST": "0.0.0.0", "PORT": "9000", "LOG_LEVEL": "DEBUG"}
    flags = Overrides(host="127.0.0.9", port=9100, log_level="ERROR", state_dir="/x",
                      control_socket="/x/s.sock")
    config, boot = apply_overrides(parse_config(FILE, None, {}), flags, env=env)
    assert (boot.host, boot.port, boot.state_dir, boot.control_socket) == \
        ("127.0.0.9", 9100, "/x", "/x/s.sock")
    assert config.log_level == "ERROR"


@pytest.mark.parametrize(("env", "path"), [
    ({"PORT": "http"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
])
def test_bad_environment_values(env: dict[str, str], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(parse_config(FILE, None, {}), Overrides(), env=env)
    assert info.value.errors[0].path == path
    assert info.value.source == "environment"


def test_find_config_precedence(tmp_path, monkeypatch) -> None:
    assert find_config("/a.yaml", {"CONFIG_PATH": "/b.yaml"}) == "/a.yaml"
    assert find_config(None, {"CONFIG_PATH": "/b.yaml"}) == "/b.yaml"
    monkeypatch.chdir(tmp_path)
    assert find_config(None, {}) in (None, "/etc/orchd/orchestrator.yaml")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "orchestrator.yaml").write_text("{}\n")
    assert find_config(None, {}) in ("etc/orchestrator.yaml", "/etc/orchd/orchestrator.yaml")


def test_server_settings_repr_hides_token() -> None:
    config = parse_config("server:\n  admin_token: hunter2\n", None, {})
    assert "hunter2" not in repr(config.server)
    assert "hunter2" not in repr(config)
