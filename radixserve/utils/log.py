"""Structured logging: `key=value` lines by default, JSON lines with RADIXSERVE_LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import os
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "info", process_name: str | None = None) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    if os.environ.get("RADIXSERVE_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        tag = f" proc={process_name}" if process_name else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s level=%(levelname)s logger=%(name)s{tag} msg=%(message)s", "%Y-%m-%dT%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
