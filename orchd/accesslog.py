"""Access log lines: request id, endpoint, target, method, path (no query), status, duration,
bytes. Never a header value: credentials cannot reach the log."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ("AccessLogger",)


class AccessLogger(AbstractAccessLogger):
    json_format = False

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        rid = request.get("request_id") or response.headers.get("X-Request-ID", "-")
        fields = {
            "remote": request.remote,
            "request_id": rid,
            "endpoint": request.get("endpoint"),
            "target": request.get("target"),
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "bytes": response.body_length,
        }
        if self.json_format:
            self.logger.info(json.dumps(fields))
        else:
            self.logger.info(
                '%s "%s %s" %s %s %.3fms rid=%s endpoint=%s target=%s',
                fields["remote"], fields["method"], fields["path"], fields["status"],
                fields["bytes"], fields["duration_ms"], rid, fields["endpoint"] or "-",
                fields["target"] or "-",
            )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class JsonAccessLogger(AccessLogger):
    json_format = True
