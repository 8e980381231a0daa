"""Fuzzing the path mapper: whatever the client sends, the upstream path stays under the base.

The check decodes the mapped path the way lenient backends do (percent-decoding once,
backslashes as separators, ``;params`` dropped from a segment as servlet containers do)
and resolves dot segments: it must never climb above the endpoint's base path.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchd.router import PathError, map_path

ATOMS = [".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "\\", ";", ";x=1",
         "..;", "a", "b%20c", "%", "%zz", "%252e", "~", ""]
segment = st.lists(st.sampled_from(ATOMS), min_size=0, max_size=4).map("".join)
segments = st.lists(segment, min_size=0, max_size=8)
bases = st.sampled_from(["", "/api", "/api/v1", "/a%2fb"])


def resolve(path: str) -> list[str] | None:
    """The path as a lenient backend would resolve it; None if it climbs above the root."""
    stack: list[str] = []
    for raw in path.split("/"):
        for part in re.split(r"[/\\]", unquote(raw)):
            part = part.split(";", 1)[0]
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return None
                stack.pop()
            else:
                stack.append(part)
    return stack


@settings(max_examples=600, deadline=None)
@given(bases, segments)
@example("/api", ["..;", "secret"])
@example("/api", ["%2e%2e", "x"])
@example("/api", ["a%2f..%2f..", "x"])
@example("/api", ["..%5c", "x"])
def test_map_path_never_climbs_above_the_base(base: str, segs: list[str]) -> None:
    try:
        mapped = map_path(base, segs)
    except PathError:
        return
    assert mapped.startswith(base + "/") or mapped in (base, "/") or (base == "" and
                                                                    mapped.startswith("/"))
    base_parts = resolve(base) or []
    resolved = resolve(mapped)
    assert resolved is not None, (base, segs, mapped)
    assert resolved[:len(base_parts)] == base_parts, (base, segs, mapped, resolved)


@settings(max_examples=500, deadline=None)
@given(bases, st.lists(st.text(alphabet="abc-_~0123456789", min_size=1, max_size=5),
                       max_size=5))
def test_plain_segments_are_kept_in_order(base: str, segs: list[str]) -> None:
    assert map_path(base, segs) == (f"{base}/{'/'.join(segs)}" if segs else base or "/")
