"""--help that reads like a well-kept CLI: `--force`, `--keep ROLE`, `PATH`, not `<bool>`,
`<list[str]>` and `{path}` (typer 0.29's defaults, which read like a type dump).

Every command is built with ``TidyCommand`` (cli/main.py): flags show no type, options show a
metavar naming what they take, and arguments show their name in capitals.
"""

from __future__ import annotations

from typing import Sequence

from typer.core import TyperArgument, TyperCommand

# What an option takes, by parameter name; anything else shows its own name in capitals.
_METAVARS = {
    "output": "PATH", "keep": "ROLE", "drop": "ROLE", "keep_blocks": "SELECTOR", "roles": "ROLE=SELECTOR",
    "preset": "NAME", "to": "LAYOUT", "arch": "NAME", "rank": "N", "conv_rank": "N", "dynamic": "RULE",
    "param": "P", "columns": "FRACTION", "energy": "SHARE", "scale_blocks": "BLOCK=W", "block_weights": "SPEC",
    "weights": "W1,W2,...", "method": "NAME", "content": "FILE", "style": "FILE", "report": "FILE",
    "plot": "FILE", "density": "D", "seed": "N", "lam": "LAMBDA", "steps": "N", "axis": "AXIS", "mu": "MU",
    "project": "WHICH", "mix": "W1,W2,...", "calibration": "FILE", "workdir": "DIR",
}


class TidyCommand(TyperCommand):
    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            _tidy(param)
        return params


def _tidy(param) -> None:
    if isinstance(param, TyperArgument):
        name = (param.metavar or param.name or "ARG").upper()
        param.metavar = name
        many = param.nargs != 1
        required = param.required
        param._usage_display_name = lambda: (name if required else f"[{name}]") + ("..." if many else "")
        param.display_type_rich = lambda ctx: None
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.display_type_rich = lambda ctx: None
    elif param.metavar is None and param.name:
        param.metavar = _METAVARS.get(param.name, param.name.upper())


def command_help(doc: str, *paragraphs: str, examples: Sequence[str] = ()) -> str:
    """A command's help text: its module docstring after 'adapterctl VERB:', then ``paragraphs``,
    then the examples (each a command line, shown indented)."""
    parts = [doc.split(":", 1)[1].strip(), *paragraphs]
    if examples:
        label = "Example:" if len(examples) == 1 else "Examples:"
        parts.append(label + "\n\n" + "\n\n".join("  " + e for e in examples))
    return "\n\n".join(parts)
