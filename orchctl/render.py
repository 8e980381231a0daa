"""Pure rendering: API documents -> views -> Rich renderables (terminal) or plain text (pipes).

Nothing here does I/O. A ``View`` is a sequence of text lines and ``Grid`` tables; the same
view becomes a coloured Rich table on a terminal and aligned plain columns otherwise, so
``orchctl status | grep`` works and the terminal stays readable.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = (
    "Grid",
    "Line",
    "View",
    "breakers_view",
    "endpoint_view",
    "endpoints_view",
    "fmt_time",
    "problem_lines",
    "reload_view",
    "status_view",
    "to_plain",
    "to_rich",
)

STYLES: Mapping[str, str] = {
    "healthy": "green", "active": "green", "closed": "green", "ok": "green",
    "degraded": "yellow", "half_open": "yellow", "draining": "yellow", "partial": "yellow",
    "unhealthy": "bold red", "open": "bold red", "forced_open": "bold red",
    "failed": "bold red", "disabled": "dim", "unknown": "dim", "-": "dim",
}


@dataclass(frozen=True, slots=True)
class Grid:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """A line with a style on a terminal (plain text elsewhere)."""

    text: str
    style: str = ""


Part = str | Line | Grid
EXPIRY_WARNING_DAYS = 14  # a certificate this close to its end is shown in red


@dataclass(frozen=True, slots=True)
class View:
    parts: tuple[Part, ...]


def fmt_time(epoch: Any) -> str:
    """Epoch seconds -> ``2026-11-27 05:24:19Z`` (UTC); ``-`` for none."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _s(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_s(v) for v in value) or "-"
    return str(value)


def _ms(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    return f"{seconds * 1000:.1f}ms"


# -------------------------------------------------------------------------------- views


def _reload_line(last: Mapping[str, Any] | None) -> str:
    if not last:
        return "last reload: -"
    verdict = "ok" if last.get("ok") else f"failed: {last.get('error')}"
    return (f"last reload: {verdict} at {fmt_time(last.get('at'))} "
            f"(trigger {_s(last.get('trigger'))})")


def counted(n: Any, word: str) -> str:
    """``1 endpoint``, ``2 endpoints``, ``- endpoints`` (unknown)."""
    return f"{_s(n)} {word}" if n == 1 else f"{_s(n)} {word}s"


def _health_counts(endpoints: list[Mapping[str, Any]]) -> tuple[int, int, int]:
    """Endpoints that pass their checks, fail them, and have not been checked yet (every
    target ``unknown``): a target never probed routes like a healthy one, but it is not
    known to be healthy, and the header says so."""
    healthy = unhealthy = unchecked = 0
    for ep in endpoints:
        health = [t.get("health") for t in ep.get("targets") or []]
        if ep.get("status") == "unhealthy" or (health and "healthy" not in health
                                                and "unhealthy" in health):
            unhealthy += 1
        elif "healthy" in health:
            healthy += 1
        else:
            unchecked += 1
    return healthy, unhealthy, unchecked


def status_view(status: Mapping[str, Any], endpoints: Mapping[str, Any]) -> View:
    """``GET /health/status`` and ``GET /health/endpoints`` -> one row per target."""
    summary = status.get("summary") or {}
    breakers = status.get("circuit_breaker_summary") or {}
    listed = list(endpoints.get("endpoints") or [])
    if listed:
        healthy, unhealthy, unchecked = _health_counts(listed)
        health = f"{healthy} healthy, {unhealthy} unhealthy, {unchecked} not checked"
        total: Any = len(listed)
    else:
        health = (f"{_s(summary.get('healthy_endpoints'))} healthy, "
                  f"{_s(summary.get('unhealthy_endpoints'))} unhealthy")
        total = summary.get("total_endpoints")
    head = (f"orchd: {_s(status.get('system_status'))}, {counted(total, 'endpoint')} "
            f"({health}), {counted(breakers.get('open_breakers'), 'breaker')} open")
    rows: list[tuple[str, ...]] = []
    for ep in endpoints.get("endpoints") or []:
        targets = ep.get("targets") or [{}]
        for target in targets:
            breaker = target.get("circuit_breaker") or {}
            rows.append((
                _s(ep.get("endpoint_id")),
                _s(ep.get("status")),
                _s(ep.get("auth")),  # none | presence | jwt | api_key | jwt+api_key
                _s(target.get("url")),
                _s(target.get("admin_state")),
                _s(target.get("health")),
                _s(breaker.get("state") if isinstance(breaker, dict) else breaker),
                _s(target.get("in_flight")),
                _ms(target.get("response_time")),
            ))
    grid = Grid(("ENDPOINT", "STATUS", "AUTH", "TARGET", "ADMIN", "HEALTH", "BREAKER", "IN-FLIGHT",
                 "RESPONSE"), tuple(rows))
    parts: list[Part] = [head, _reload_line(status.get("last_reload"))]
    store = status.get("store")
    if isinstance(store, Mapping):
        line = f"registry store: {_s(store.get('type'))} {_s(store.get('status'))}"
        if store.get("error"):
            line += f" ({store['error']})"
        parts.append(line)
    workers = status.get("workers")
    if isinstance(workers, Mapping):  # server.workers above 1
        live, wanted = workers.get("live"), workers.get("configured")
        line = (f"workers: {_s(live)} of {_s(wanted)} running, "
                f"{counted(workers.get('replaced'), 'replacement')} since start")
        parts.append(Line(line, "" if live == wanted else "bold red"))
    parts += _certificate_lines(status.get("tls"))
    parts.append(grid if rows else "no endpoints registered")
    return View(tuple(parts))


def _certificate_lines(tls: Any) -> list[Part]:
    """``server.tls``' certificates with the days they have left (red under two weeks)."""
    if not isinstance(tls, Mapping):
        return []
    lines: list[Part] = []
    for cert in tls.get("certificates") or []:
        if not isinstance(cert, Mapping):
            continue
        days = cert.get("days_left")
        names = ", ".join(str(s) for s in cert.get("subjects") or []) or "-"
        soon = isinstance(days, int | float) and days < EXPIRY_WARNING_DAYS
        text = (f"tls certificate {_s(cert.get('file'))} ({names}): "
                f"{counted(int(days) if isinstance(days, int | float) else None, 'day')} left"
                f" (until {fmt_time(cert.get('not_after'))})")
        lines.append(Line(text, "bold red" if soon else ""))
    return lines


def endpoints_view(doc: Mapping[str, Any]) -> View:
    """``GET /registry/endpoints``."""
    rows = []
    for ep in doc.get("endpoints") or []:
        urls = ep.get("urls") or [ep.get("url")]
        rows.append((
            _s(ep.get("endpoint_id")),
            _s(ep.get("source")),
            _s(ep.get("status")),
            _s(ep.get("circuit_breaker_state")),
            _s(ep.get("methods")),
            _s(ep.get("version")),
            " ".join(_s(u) for u in urls),
        ))
    counts = (f"{_s(doc.get('total_count'))} endpoints: {_s(doc.get('active_count'))} active, "
              f"{_s(doc.get('unhealthy_count'))} unhealthy, "
              f"{_s(doc.get('disabled_count'))} disabled")
    if not rows:
        return View(("no endpoints registered",))
    grid = Grid(("NAME", "SOURCE", "STATUS", "BREAKER", "METHODS", "VERSION", "URLS"),
                tuple(rows))
    return View((grid, counts))


_DETAIL_KEYS = ("endpoint_id", "source", "status", "circuit_breaker_state", "methods",
                "version", "auth_type", "require_auth", "disabled", "timeout", "retries",
                "health_check_path", "ttl")


def endpoint_view(doc: Mapping[str, Any]) -> View:
    """``GET /registry/endpoints/{id}``: its settings, then its targets."""
    fields = [(key, _s(doc.get(key))) for key in _DETAIL_KEYS if key in doc]
    fields.append(("registration_time", fmt_time(doc.get("registration_time"))))
    settings = Grid(("KEY", "VALUE"), tuple(fields))
    rows = tuple((_s(t.get("url")), _s(t.get("admin_state")), _s(t.get("health")),
                  _s(t.get("circuit_breaker_state")), _s(t.get("in_flight")))
                 for t in doc.get("targets") or [])
    targets = Grid(("TARGET", "ADMIN", "HEALTH", "BREAKER", "IN-FLIGHT"), rows)
    return View((settings, targets))


def breakers_view(doc: Mapping[str, Any]) -> View:
    """``GET /health/circuit-breakers``: one row per target breaker."""
    rows = []
    for cb in doc.get("circuit_breakers") or []:
        for t in cb.get("targets") or []:
            rows.append((
                _s(cb.get("endpoint_id")), _s(t.get("url")), _s(t.get("state")),
                _s(t.get("failure_count")), _s(t.get("last_failure")),
                fmt_time(t.get("state_changed_time")), fmt_time(t.get("retry_at")),
            ))
    summary = doc.get("summary") or {}
    line = (f"{_s(summary.get('total_circuit_breakers'))} breakers: "
            f"{_s(summary.get('closed_breakers'))} closed, "
            f"{_s(summary.get('half_open_breakers'))} half-open, "
            f"{_s(summary.get('partially_open_breakers', 0))} partially open, "
            f"{_s(summary.get('open_breakers'))} open")
    if not rows:
        return View(("no circuit breakers (no endpoints registered)",))
    grid = Grid(("ENDPOINT", "TARGET", "STATE", "FAILURES", "LAST FAILURE", "SINCE",
                 "RETRY AT"), tuple(rows))
    return View((grid, line))


def reload_view(result: Mapping[str, Any]) -> View:
    """``POST /config/reload`` answer: the diff, as Supervisor's ``update`` prints it."""
    parts: list[Part] = []
    for key in ("added", "changed", "removed"):
        for name in result.get(key) or []:
            parts.append(f"{key}: {name}")
    total = sum(len(result.get(k) or []) for k in ("added", "changed", "removed"))
    unchanged = result.get("unchanged")
    parts.append(f"reloaded: {len(result.get('added') or [])} added, "
                 f"{len(result.get('changed') or [])} changed, "
                 f"{len(result.get('removed') or [])} removed, {_s(unchanged)} unchanged"
                 if total or unchanged is not None else "reloaded")
    for key in result.get("restart_required") or []:
        parts.append(f"restart required: {key} changed (restart orchd to apply it)")
    for warning in result.get("warnings") or []:
        parts.append(f"warning: {warning}")
    return View(tuple(parts))


def problem_lines(detail: str, errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """A refusal: its detail, then one line per validation error."""
    out = [detail]
    for err in errors:
        line = err.get("line")
        where = f"{err.get('path')} (line {line})" if line else f"{err.get('path')}"
        out.append(f"  {where}: {err.get('message')}")
    return out


# ------------------------------------------------------------------------------ output


def _plain_grid(grid: Grid) -> str:
    table = [grid.columns, *grid.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(grid.columns))]
    lines = []
    if grid.title:
        lines.append(grid.title)
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def to_plain(view: View) -> str:
    """Aligned columns, no colour, no box: for pipes and files."""
    return "\n".join(_plain_grid(p) if isinstance(p, Grid) else
                     p.text if isinstance(p, Line) else p for p in view.parts)


_LONG_COLUMNS = frozenset({"TARGET", "URLS", "VALUE", "LAST FAILURE"})


def _cell(value: str) -> Text:
    return Text(value, style=STYLES.get(value, ""))


def _rich_grid(grid: Grid) -> Table:
    table = Table(title=grid.title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False,
                  padding=(0, 1, 0, 0))
    for name in grid.columns:
        # Short state words never break; on a narrow terminal long values (URLs) fold.
        long_value = name in _LONG_COLUMNS
        table.add_column(name, overflow="fold" if long_value else "ellipsis",
                         no_wrap=not long_value)
    for row in grid.rows:
        table.add_row(*(_cell(c) for c in row))
    return table


def to_rich(view: View) -> RenderableType:
    """Tables with coloured states: for a terminal."""
    items: Sequence[RenderableType] = [
        _rich_grid(p) if isinstance(p, Grid) else
        Text(p.text, style=p.style) if isinstance(p, Line) else Text(p) for p in view.parts]
    return Group(*items)
