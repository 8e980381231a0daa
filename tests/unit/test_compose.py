"""docker-compose.yml against the Compose Specification's JSON Schema (no Docker engine is
needed), and the promises of the compose file and the Dockerfile."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from orchd.loader import load_config
from tests.support import IN_CI, ROOT

SCHEMA = ROOT.parent / "shared" / "data" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    if not SCHEMA.is_file():
        if IN_CI:
            pytest.fail(f"{SCHEMA} is missing (the Compose Specification's JSON Schema)")
        pytest.skip(f"{SCHEMA} is not here (it ships with the workspace only)")
    schema = json.loads(SCHEMA.read_text())
    # It declares draft-07 as "https://json-schema.org/draft-07/schema", a spelling
    # jsonschema does not look up; it is draft-07.
    assert "draft-07" in schema["$schema"]
    validator_cls = jsonschema.Draft7Validator
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)
    # The schema is strict about unknown keys: a misspelt key would be caught.
    broken = {**compose, "services": {"orchestrator": {**compose["services"]["orchestrator"],
                                                       "portz": ["8000:8000"]}}}
    assert list(validator_cls(schema).iter_errors(broken))


def test_orchestrator_service(compose: dict[str, Any]) -> None:
    svc = compose["services"]["orchestrator"]
    assert "8000:8000" in svc["ports"]
    mounts = {m["target"]: m for m in svc["volumes"]}
    config = mounts["/etc/orchd"]
    assert config["type"] == "bind" and config["read_only"] is True
    state = mounts["/var/lib/orchd"]
    assert state["type"] == "volume" and state["source"] in compose["volumes"]
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert svc["depends_on"].keys() >= {"backend"}
    assert "backend" in compose["services"]


def test_mounted_config_is_valid_and_routes_to_the_backend(compose: dict[str, Any]) -> None:
    svc = compose["services"]["orchestrator"]
    source = next(m["source"] for m in svc["volumes"] if m["target"] == "/etc/orchd")
    path = ROOT / source / "orchestrator.yaml"
    config = load_config(path, env={})
    urls = [u for e in config.endpoints for u in e.urls]
    assert urls and all(re.match(r"https?://backend(:\d+)?(/|$)", u) for u in urls), urls
    assert config.server.state_dir == "/var/lib/orchd"
    assert config.server.control_socket == "/run/orchd/orchd.sock"


def _dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_promises() -> None:
    lines = _dockerfile()
    # Both stages start from the BASE build argument, python:3.11-slim unless given
    # (tests/deploy builds it on a Debian root made offline).
    base = next(line.split("=", 1)[1] for line in lines if line.startswith("ARG BASE="))
    assert base == "python:3.11-slim"
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(f == "${BASE}" for f in froms)
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert "/health" in health
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert re.search(r"\bHOST=0\.0\.0\.0\b", env) and re.search(r"\bPORT=8000\b", env)
    assert "EXPOSE 8000" in final
    copied = [src for line in lines if line.startswith("COPY ") and "--from" not in line
              for src in line.split()[1:-1]]
    assert "README.md" in copied
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("orchd", "orchctl", "pyproject.toml", "README.md", "etc"):
        assert needed not in ignored


def test_dockerfile_config_is_the_example(tmp_path: Path) -> None:
    config = load_config(ROOT / "etc/orchestrator.yaml", env={})
    assert config.server.port == 8000
