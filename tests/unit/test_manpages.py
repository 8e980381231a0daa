"""The man pages render without a warning, and document every flag, command, option,
signal, environment variable, configuration key and exit code the code has."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI, ROOT

MAN = ROOT / "man"
PAGES = ("orchd.8", "orchctl.1", "orchestrator.yaml.5")
GROFF = shutil.which("groff")


def plain(page: str) -> str:
    """The page's source with roff escapes for hyphens, fonts and quotes undone."""
    text = (MAN / page).read_text()
    text = text.replace("\\-", "-").replace("\\(aq", "'").replace("\\(en", "-")
    return re.sub(r"\\f[BIRP]|\\c", "", text)


@pytest.mark.parametrize("page", PAGES)
def test_groff_renders_without_a_warning(page: str) -> None:
    if GROFF is None:
        if IN_CI:
            pytest.fail("groff is missing (package groff-base, scripts/system-deps.sh)")
        pytest.skip("groff is not installed")
    proc = subprocess.run([GROFF, "-man", "-ww", "-z", str(MAN / page)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("page", PAGES)
def test_alternating_fonts_use_alternating_macros(page: str) -> None:
    # `.B -c ", " --config` renders all three words bold, quotes and all ("-c , --config"):
    # words in alternating fonts need .BR / .BI / .IR.
    for n, line in enumerate((MAN / page).read_text().splitlines(), 1):
        if line.startswith((".B ", ".I ")):
            assert '", "' not in line, f"{page}:{n}: {line} (use .BR)"


@pytest.mark.parametrize("page", PAGES)
def test_page_header_and_sections(page: str) -> None:
    text = plain(page)
    name, section = page.rsplit(".", 1)
    assert re.search(rf"^\.TH {re.escape(name.upper())} {section} ", text, re.M)
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert f".SH {heading}" in text, heading


def test_orchd_page_covers_flags_signals_environment_and_exit_codes() -> None:
    from orchd import cli

    text = plain("orchd.8")
    parser = cli._parser()
    for action in parser._actions:
        for flag in action.option_strings:
            assert flag in text, f"orchd {flag} is not in orchd(8)"
    daemon = (ROOT / "orchd/daemon.py").read_text()
    signals = set(re.findall(r"add_signal_handler\(signal\.(SIG\w+)", daemon))
    assert {"SIGTERM", "SIGHUP"} <= signals
    for sig in signals:
        assert sig in text, f"{sig} is not in orchd(8)"
    settings = (ROOT / "orchd/settings.py").read_text()
    for var in {*re.findall(r'env(?:\.get)?\(?\[?"([A-Z_]+)"', settings), "CONFIG_PATH",
                "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"}:
        assert var in text, f"${var} is not in orchd(8)"
    exit_section = text.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    for code in (cli.EXIT_OK, cli.EXIT_CONFIG, cli.EXIT_USAGE, cli.EXIT_STARTUP):
        assert f".B {code}\n" in exit_section
    for path in ("/etc/orchd/orchestrator.yaml", "/run/orchd/orchd.sock", "/var/lib/orchd"):
        assert path in text


def _commands(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield prefix, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*prefix, name))


def test_orchctl_page_covers_every_command_and_option() -> None:
    import typer

    from orchctl import main as orchctl_main

    text = plain("orchctl.1")
    root = typer.main.get_command(orchctl_main.app)
    seen = 0
    for path, command in _commands(root):
        if path:
            assert " ".join(path) in text, f"orchctl {' '.join(path)} is not in orchctl(1)"
            seen += 1
        for param in command.params:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("-"):
                    assert opt in text, f"orchctl {' '.join(path)} {opt} is not in orchctl(1)"
    assert seen >= 15
    exit_section = text.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    codes = (orchctl_main.EXIT_OK, orchctl_main.EXIT_REFUSED, orchctl_main.EXIT_USAGE,
             orchctl_main.EXIT_UNREACHABLE)
    for code in codes:
        assert f".B {code}\n" in exit_section
    assert "ORCHCTL_SOCKET" in text


def _keys(schema: dict[str, Any], defs: dict[str, dict[str, Any]],
          prefix: str = "") -> Iterator[str]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        schema = defs[ref.rsplit(":", 1)[-1]]
    if isinstance(schema.get("items"), dict):
        schema = schema["items"]
        ref = schema.get("$ref")
        if isinstance(ref, str):
            schema = defs[ref.rsplit(":", 1)[-1]]
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        yield from _keys(sub, defs, path)


def test_config_page_covers_every_key() -> None:
    from orchd.schema import SCHEMA_NAMES, load_schema

    defs = {name: load_schema(name) for name in SCHEMA_NAMES}
    text = plain("orchestrator.yaml.5")
    keys = list(_keys(defs["config"], defs))
    assert "server.port" in keys and "endpoints.url" in keys
    for key in keys:
        # Endpoint keys are listed by their own name in the ENDPOINTS section.
        spelled = key.split(".", 1)[1] if key.startswith("endpoints.") else key
        if key.startswith("endpoints.circuit_breaker."):
            spelled = key.removeprefix("endpoints.")
        assert re.search(rf"(^|[\s(]){re.escape(spelled)}\b", text, re.M), (
            f"{key} is not in orchestrator.yaml(5)")


def test_every_page_is_installed_and_referenced() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for page in PAGES:
        assert f"man/{page}" in makefile
    service = (ROOT / "systemd/orchd.service").read_text()
    assert "man:orchd(8)" in service and "man:orchestrator.yaml(5)" in service
    assert Path(MAN / "orchd.8").read_text().count("orchctl (1)") >= 1
