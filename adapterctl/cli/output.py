"""One output object per command run: human (rich), --json, or --quiet.

Results go to stdout, everything else (progress, notes, errors) to stderr, so that
``adapterctl inspect x --json | jq`` always sees clean JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


class Output:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet
        self._err = None
        self._out = None

    @property
    def out(self):
        if self._out is None:
            from rich.console import Console

            # emoji=False: ':smile:' in a file's metadata stays text. Markup stays on for our own
            # styling; every file-derived string goes through plain() first.
            self._out = Console(highlight=False, soft_wrap=True, emoji=False)
        return self._out

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
        return self._err

    def result(self, data: dict[str, Any], render: Callable[[Any, dict], None] | None = None) -> None:
        """Emit the command's result: JSON document, or a human rendering, or nothing."""
        if self.json_mode:
            sys.stdout.write(to_json(data) + "\n")
        elif not self.quiet:
            if render is not None:
                render(self.out, data)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.err.print(_escape(message), markup=False)

    def done(self, message: str) -> None:
        """The human one-liner for a write: 'Wrote x (…)'. JSON mode prints the result object instead."""
        if not self.quiet and not self.json_mode:
            self.out.print(_escape(message), markup=False)


def _escape(text: str) -> str:
    from adapterctl.textsafe import escape

    return escape(text)


def to_json(data: Any) -> str:
    """Strict JSON for --json: ASCII only (no raw U+2028 or bidi character can reach a terminal
    that prints it), and non-finite floats as the strings "NaN", "Infinity", "-Infinity"."""
    from adapterctl.report import json_safe

    return json.dumps(json_safe(data), indent=2, ensure_ascii=True, allow_nan=False)


def plain(text: str) -> str:
    """Escape control characters and rich markup in an untrusted string, for a rich console."""
    from rich.markup import escape as markup_escape

    from adapterctl.textsafe import escape

    return markup_escape(escape(text))
