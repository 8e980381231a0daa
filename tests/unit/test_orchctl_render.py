"""orchctl's pure rendering: API documents -> plain text (pipes) and Rich tables (terminals)."""

from __future__ import annotations

from rich.console import Console

from orchctl.main import hoist_global_options
from orchctl.render import (
    Grid,
    View,
    problem_lines,
    reload_view,
    status_view,
    to_plain,
    to_rich,
)


def test_reload_view_prints_the_diff() -> None:
    view = reload_view({"ok": True, "added": ["a"], "changed": ["b", "c"], "removed": [],
                        "unchanged": 4, "restart_required": ["server.port"],
                        "warnings": ["endpoints[0].description is ignored"]})
    assert to_plain(view).splitlines() == [
        "added: a", "changed: b", "changed: c",
        "reloaded: 1 added, 2 changed, 0 removed, 4 unchanged",
        "restart required: server.port changed (restart orchd to apply it)",
        "warning: endpoints[0].description is ignored",
    ]


def test_problem_lines_name_path_and_line() -> None:
    assert problem_lines("Reload failed", [
        {"path": "endpoints[0].url", "message": "bad", "line": 3},
        {"path": "log_level", "message": "worse"},
    ]) == ["Reload failed", "  endpoints[0].url (line 3): bad", "  log_level: worse"]


def test_plain_grid_is_aligned_and_rich_has_the_same_cells() -> None:
    status = {"system_status": "degraded", "summary": {"total_endpoints": 1,
              "healthy_endpoints": 0, "unhealthy_endpoints": 1},
              "circuit_breaker_summary": {"open_breakers": 1},
              "last_reload": {"ok": False, "error": "bad file", "at": 0, "trigger": "SIGHUP"}}
    endpoints = {"endpoints": [{"endpoint_id": "svc", "status": "unhealthy",
                                "auth": "jwt+api_key", "targets": [
        {"url": "http://10.0.0.1:80", "admin_state": "draining", "health": "unhealthy",
         "circuit_breaker": {"state": "forced_open"}, "in_flight": 2, "response_time": 0.0123},
    ]}]}
    view = status_view(status, endpoints)
    lines = to_plain(view).splitlines()
    assert lines[0] == ("orchd: degraded, 1 endpoint (0 healthy, 1 unhealthy, 0 not checked), "
                        "1 breaker open")
    assert lines[1] == "last reload: failed: bad file at 1970-01-01 00:00:00Z (trigger SIGHUP)"
    header, row = lines[2], lines[3]
    assert row.split() == ["svc", "unhealthy", "jwt+api_key", "http://10.0.0.1:80",
                           "draining", "unhealthy", "forced_open", "2", "12.3ms"]
    assert header.index("TARGET") == row.index("http://")
    assert header.index("AUTH") == row.index("jwt+api_key")
    console = Console(width=200, record=True, color_system="truecolor", force_terminal=True)
    console.print(to_rich(view))
    text = console.export_text(clear=False)
    assert "forced_open" in text and "http://10.0.0.1:80" in text
    assert "\x1b[" in console.export_text(styles=True)


def test_status_header_does_not_count_unchecked_targets_as_healthy() -> None:
    status = {"system_status": "healthy", "summary": {"total_endpoints": 3,
              "healthy_endpoints": 3, "unhealthy_endpoints": 0},
              "circuit_breaker_summary": {"open_breakers": 0}}
    endpoints = {"endpoints": [
        {"endpoint_id": "new", "status": "active", "targets": [{"health": "unknown"}]},
        {"endpoint_id": "ok", "status": "active",
         "targets": [{"health": "healthy"}, {"health": "unknown"}]},
        {"endpoint_id": "bad", "status": "active",
         "targets": [{"health": "unhealthy"}, {"health": "unknown"}]},
    ]}
    head = to_plain(status_view(status, endpoints)).splitlines()[0]
    assert head == ("orchd: healthy, 3 endpoints (1 healthy, 1 unhealthy, 1 not checked), "
                    "0 breakers open")


def test_empty_views() -> None:
    assert to_plain(View(("x", Grid(("A", "B"), ())))) == "x\nA  B"


def test_global_options_may_follow_the_command() -> None:
    assert hoist_global_options(["endpoints", "list", "--json", "--socket", "/s"]) == [
        "--json", "--socket", "/s", "endpoints", "list"]
    assert hoist_global_options(["status", "--socket=/s"]) == ["--socket=/s", "status"]
    assert hoist_global_options(["x", "--", "--json"]) == ["x", "--", "--json"]


def test_status_shows_a_degraded_store() -> None:
    status = {"system_status": "degraded", "summary": {}, "circuit_breaker_summary": {},
              "store": {"type": "etcd", "status": "degraded", "error": "no member answered"}}
    lines = to_plain(status_view(status, {"endpoints": []})).splitlines()
    assert "registry store: etcd degraded (no member answered)" in lines


def test_breakers_summary_counts_partially_open() -> None:
    from orchctl.render import breakers_view

    doc = {"summary": {"total_circuit_breakers": 1, "closed_breakers": 0,
                       "half_open_breakers": 0, "partially_open_breakers": 1,
                       "open_breakers": 0},
           "circuit_breakers": [{"endpoint_id": "svc", "targets": [
               {"url": "http://a", "state": "open"}, {"url": "http://b", "state": "closed"}]}]}
    text = to_plain(breakers_view(doc))
    assert "1 breakers: 0 closed, 0 half-open, 1 partially open, 0 open" in text


def test_status_shows_the_days_each_certificate_has_left_red_under_two_weeks() -> None:
    status = {"system_status": "healthy", "summary": {}, "circuit_breaker_summary": {},
              "tls": {"certificates": [
                  {"file": "/etc/orchd/tls/site.pem", "subjects": ["example.com"],
                   "not_after": 1_800_000_000, "days_left": 40},
                  {"file": "/etc/orchd/tls/old.pem", "subjects": ["old.example.com"],
                   "not_after": 1_700_000_000, "days_left": 3}]}}
    view = status_view(status, {"endpoints": []})
    lines = to_plain(view).splitlines()
    assert ("tls certificate /etc/orchd/tls/site.pem (example.com): 40 days left "
            "(until 2027-01-15 08:00:00Z)") in lines
    assert any(line.startswith("tls certificate /etc/orchd/tls/old.pem") and
               "3 days left" in line for line in lines)
    console = Console(width=200, record=True, color_system="truecolor", force_terminal=True)
    console.print(to_rich(view))
    styled = console.export_text(styles=True)
    red_line = next(line for line in styled.splitlines() if "old.pem" in line)
    green_line = next(line for line in styled.splitlines() if "site.pem" in line)
    assert "\x1b[1;31m" in red_line and "\x1b[1;31m" not in green_line
