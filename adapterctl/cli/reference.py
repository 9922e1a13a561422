"""Generate docs/cli.md, the command reference, from the live typer app.

    python -m adapterctl.cli.reference            # rewrite docs/cli.md
    python -m adapterctl.cli.reference --check    # exit 1 when docs/cli.md is stale
    python -m adapterctl.cli.reference --stdout   # print the reference instead

The page is built by walking the click command tree that typer builds, never by rendering
``--help``: the output has no ANSI codes and does not depend on the terminal width, so the
same code always gives the same bytes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Iterator

from adapterctl.generated import write_or_check

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
GENERATOR = "python -m adapterctl.cli.reference"

_TYPE_NAMES = {"Path": "path", "str": "text", "int": "integer", "float": "number", "bool": "boolean"}


def _click():
    import typer

    # typer >= 0.29 vendors click as typer._click; older typer uses click itself.
    # BadParameter lives in <click package>.exceptions either way.
    return importlib.import_module(typer.BadParameter.__module__.rsplit(".", 1)[0])


def command_tree(app=None) -> Iterator[tuple[Any, Any]]:
    """Yield (command, context) for the root and every visible subcommand, depth first, in help order."""
    import typer

    if app is None:
        from adapterctl.cli.main import app
    click = _click()
    root = typer.main.get_command(app)

    def walk(cmd, ctx):
        yield cmd, ctx
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is None or getattr(sub, "hidden", False):
                    continue
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx, **(sub.context_settings or {})))

    yield from walk(root, click.Context(root, info_name="adapterctl", **(root.context_settings or {})))


def command_paths(app=None) -> list[str]:
    """'adapterctl', 'adapterctl inspect', ...: every command the reference documents."""
    return [ctx.command_path for _cmd, ctx in command_tree(app)]


# -- rendering -------------------------------------------------------------------------------

def _anchor(command_path: str) -> str:
    return command_path.replace(" ", "-")


def _inline(text: str) -> str:
    """Prose from help strings, made safe for Markdown: no emphasis, no HTML tags."""
    for ch in ("\\", "*", "<", ">"):
        text = text.replace(ch, "\\" + ch)
    return text


def _cell(text: str) -> str:
    return _inline(" ".join(text.split())).replace("|", "\\|")


def _help_blocks(help_text: str) -> list[str]:
    """Turn a typer help string into Markdown: prose paragraphs, and indented example lines as console blocks."""
    import inspect as _inspect

    out: list[str] = []
    examples: list[str] = []

    def flush() -> None:
        if examples:
            out.append("```console\n" + "\n".join(f"$ {line}" for line in examples) + "\n```")
            examples.clear()

    for para in _inspect.cleandoc(help_text or "").split("\n\n"):
        if not para.strip():
            continue
        lines = para.split("\n")
        if all(line.startswith("  ") and line.strip() for line in lines):
            examples.extend(line.strip() for line in lines)
            continue
        flush()
        out.append(_inline(" ".join(line.strip() for line in lines)))
    flush()
    return out


def _summary(cmd) -> str:
    text = cmd.short_help or (cmd.help or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def _type_name(param) -> str:
    desc = getattr(param, "type_descriptor", None)
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return "flag"
    if getattr(param, "count", False):
        return "counter"
    if desc is None:  # plain click parameter
        base = getattr(param.type, "name", "text")
    elif desc.is_choice and desc.choices is not None:
        base = " \\| ".join(str(getattr(c, "value", c)) for c in desc.choices)
    else:
        annotation = desc.annotation
        args = getattr(annotation, "__args__", None)
        if desc.is_list and args:
            annotation = args[0]
        name = getattr(annotation, "__name__", str(annotation))
        base = _TYPE_NAMES.get(name, name.lower())
    if getattr(param, "multiple", False):
        base += ", repeatable"
    elif param.nargs == -1:
        base += ", one or more" if param.required else ", zero or more"
    return base


def _default(param) -> str:
    if getattr(param, "is_flag", False):
        return "on" if param.default else ""
    default = param.default
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(str(d) for d in default)
    return str(getattr(default, "value", default))


def _names(param) -> str:
    if param.param_type_name == "argument":
        return f"`{(param.metavar or param.name).upper()}`"
    opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))  # short form first
    names = ", ".join(f"`{o}`" for o in opts)
    if param.secondary_opts:
        names += " / " + ", ".join(f"`{o}`" for o in param.secondary_opts)
    return names


def _param_table(params, *, options: bool) -> list[str]:
    head = "| option | type | default | description |" if options else "| argument | type | required | description |"
    rows = [head, "|---|---|---|---|"]
    for p in params:
        third = _default(p) if options else ("yes" if p.required else "no")
        description = _cell(p.help or "")
        if options and p.required:
            description = (description + " Required.").strip()
        rows.append(f"| {_names(p)} | {_type_name(p)} | {_cell(third)} | {description} |")
    return rows


def render(app=None) -> str:
    tree = list(command_tree(app))
    lines = [
        "# adapterctl command reference",
        "",
        f"<!-- Generated by `{GENERATOR}` from the live command tree. Do not edit by hand: "
        "change the command, then run the generator again. -->",
        "",
        "This page lists every command, argument and option. The [user guide](user-guide.md) shows them at work.",
        "",
        "In usage lines `{path}` is a required argument and `...` means it takes several values. "
        "A blank default means the flag is off or the option is unset. "
        "Exit codes and the `--json` documents are in [JSON output](inspect-json.md#exit-codes).",
        "",
        "Commands: " + " · ".join(f"[{ctx.info_name}](#{_anchor(ctx.command_path)})" for _c, ctx in tree[1:]),
        "",
    ]
    for cmd, ctx in tree:
        lines += [f"## {ctx.command_path}", ""]
        usage = " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])
        lines += ["```text", usage, "```", ""]
        for block in _help_blocks(cmd.help or ""):
            lines += [block, ""]
        if hasattr(cmd, "list_commands"):
            subs = [(name, cmd.get_command(ctx, name)) for name in cmd.list_commands(ctx)]
            subs = [(n, c) for n, c in subs if c is not None and not getattr(c, "hidden", False)]
            if subs:
                lines += ["**Commands**", "", "| command | summary |", "|---|---|"]
                lines += [f"| [`{n}`](#{_anchor(ctx.command_path + ' ' + n)}) | {_cell(_summary(c))} |" for n, c in subs]
                lines.append("")
        params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
        arguments = [p for p in params if p.param_type_name == "argument"]
        options = [p for p in params if p.param_type_name == "option"]
        if arguments:
            lines += ["**Arguments**", "", *_param_table(arguments, options=False), ""]
        if options:
            lines += ["**Options**", "", *_param_table(options, options=True), ""]
    lines += _registries()
    return "\n".join(lines).rstrip("\n") + "\n"


def _registries() -> list[str]:
    """The layouts and merge methods, from the registries the commands use (never a copy)."""
    from adapterctl.layouts.registry import LAYOUTS
    from adapterctl.ops.registry import METHODS

    lines = ["## Layouts", "", "From `adapterctl.layouts.registry.LAYOUTS`, in the order keys are tried.", "",
             "| layout | written | what it is | a down-factor key |", "|---|---|---|---|"]
    lines += [f"| `{l.name}` | {'yes' + (' (a directory)' if l.directory else '') if l.writable else 'read only'} "
              f"| {_cell(l.summary)} | `{l.example}` |" for l in LAYOUTS]
    lines += ["", "## Merge methods", "", "From `adapterctl.ops.registry.METHODS` (`adapterctl merge --list`). "
              "[Merging and pruning](merge.md) explains each.", "",
              "| method | inputs | parameters | what it does |", "|---|---|---|---|"]
    lines += [f"| `{m.name}` | {m.inputs} | {', '.join(f'`{k}`' for k in m.Params.model_fields) or '-'} "
              f"| {_cell(m.summary)} |" for m in METHODS]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=GENERATOR, description="Generate docs/cli.md from the live CLI.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from a fresh generation")
    parser.add_argument("--stdout", action="store_true", help="print the reference instead of writing it")
    parser.add_argument("--path", type=Path, default=DOC_PATH, help=f"file to write or check (default: {DOC_PATH})")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    return write_or_check(args.path, text, check=args.check, regenerate=GENERATOR)

if __name__ == "__main__":
    sys.exit(main())
