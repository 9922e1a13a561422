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

            self._out = Console(highlight=False, soft_wrap=True)
        return self._out

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    def result(self, data: dict[str, Any], render: Callable[[Any, dict], None] | None = None) -> None:
        """Emit the command's result: JSON document, or a human rendering, or nothing."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        elif not self.quiet:
            if render is not None:
                render(self.out, data)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)

    def done(self, message: str) -> None:
        """The human one-liner for a write: 'Wrote x (…)'. JSON mode prints the result object instead."""
        if not self.quiet and not self.json_mode:
            self.out.print(message, markup=False)


def plain(text: str) -> str:
    """Escape rich markup in untrusted strings."""
    from rich.markup import escape

    return escape(text)
