"""JSON log lines on stderr, one object per line, so tests and tools can parse them."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

# Attribute name under which a record carries its structured fields (see ``fields``).
_FIELDS_ATTR = "json_fields"


def fields(**values: Any) -> dict[str, Any]:
    """Build the ``extra=`` argument that attaches structured fields to one log record."""
    return {_FIELDS_ATTR: values}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object: timestamp, level, logger, message and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS_ATTR, {}))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        # default=str keeps a stray non-JSON value from turning a log call into an exception.
        return json.dumps(line, default=str)


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Report exceptions Python cannot raise (in ``__del__``, GC callbacks) as JSON rather than bare text.

    Known trigger: CPython's asyncio.Server race (python/cpython#109564) when a connection arrives
    during shutdown; it is harmless, but its plain-text report would break the JSON log stream.
    """
    exc_info = None
    if unraisable.exc_value is not None:
        exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    logging.getLogger("target_server").warning(
        "unraisable exception", exc_info=exc_info,
        extra=fields(context=unraisable.err_msg or "Exception ignored in", object=repr(unraisable.object)))


def setup_logging(level: str = "INFO") -> None:
    """Send every log record, ours and aiohttp's, and unraisable exceptions to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    sys.unraisablehook = _log_unraisable
