"""What the commands write to stderr: one-line errors and log records, all escaped.

Error messages and log records quote paths, process names, subscriber input
and observed traffic; ``terminal_text`` makes each of them safe to show.
"""

from __future__ import annotations

import logging
import sys

from wire import terminal_text


def error(message: str) -> None:
    """Print ``sidetrace: <message>`` on stderr, escaped, as one line."""
    print(f"sidetrace: {terminal_text(message)}", file=sys.stderr, flush=True)


class EscapingFormatter(logging.Formatter):
    """A formatter whose every output line is terminal-safe (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(terminal_text(line) for line in super().format(record).split("\n"))


def log_to_stderr(verbose: bool) -> None:
    """Log ``sidetrace: <message>`` lines to stderr: INFO and up with ``verbose``, else WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("sidetrace: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
