"""One record, one line: the text format escapes control characters in every message."""

from __future__ import annotations

import logging
import sys

from orchd.log import TEXT_FORMAT, TextFormatter, escape_controls


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("orchd.server", logging.INFO, __file__, 1, msg, args, exc_info)


def test_escape_controls_leaves_printable_text_and_escapes_line_breaks():
    assert escape_controls("/a/é b\\c") == "/a/é b\\c"
    assert escape_controls("a\nb\rc\x00d\x7fe\x85f\u2028g\tn\udc85") == (
        "a\\nb\\rc\\x00d\\x7fe\\x85f\\u2028g\\tn\\udc85")


def test_text_formatter_writes_each_message_on_one_line():
    formatter = TextFormatter()
    assert formatter._fmt == TEXT_FORMAT  # orchd.traffic batches access lines to it
    line = formatter.format(_record("bad request from %s: %s", "127.0.0.1",
                                    "x\n2026-01-01 00:00:00,000 CRITICAL orchd.server: forged"))
    assert "\n" not in line
    assert line.endswith("INFO orchd.server: bad request from 127.0.0.1: x\\n2026-01-01 "
                         "00:00:00,000 CRITICAL orchd.server: forged")


def test_text_formatter_keeps_a_traceback_on_its_lines():
    text = TextFormatter().format(_record("GET %s failed", "/a\r\nb", exc=True))
    first, _, rest = text.partition("\n")
    assert first.endswith("GET /a\\r\\nb failed")
    assert rest.startswith("Traceback") and rest.rstrip().endswith("ValueError: boom")
