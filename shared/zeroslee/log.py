"""structlog set-up: JSON lines off a terminal, pretty on one; service and node bound.

Log one line per transaction or delivery at info level: every line crosses honcho's
pipes, and on two cores that costs throughput.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(service: str, node: str | None, level: str = "info") -> structlog.stdlib.BoundLogger:
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service, node=node or "-")
    return structlog.get_logger()  # type: ignore[no-any-return]
