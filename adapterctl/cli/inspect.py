"""adapterctl inspect: what is in an adapter file, from its header alone."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli._help import command_help
from adapterctl.cli.options import ArchOpt, InputArg, JsonOpt, QuietOpt
from adapterctl.cli.output import Output, plain


def register(app: typer.Typer) -> None:
    app.command("inspect", help=command_help(
        __doc__,
        examples=[
            "adapterctl inspect blora.safetensors",
            "adapterctl inspect my_lora.safetensors --weights",
            "adapterctl inspect my_lora.safetensors --json | jq .roles",
        ]))(inspect_cmd)


def inspect_cmd(
    path: InputArg,
    weights: Annotated[bool, typer.Option("--weights", help="Also read the factors: per-block delta-W norm and "
                                                             "effective rank (no dense delta-W is formed).")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Render as a Markdown report.")] = False,
    arch: ArchOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from adapterctl.adapter import Adapter
    from adapterctl.report import inspect_report, json_safe

    out = Output(json_mode=json_out, quiet=quiet)
    with Adapter.open(path, arch=arch) as adapter:
        report = inspect_report(adapter)
        if weights:
            from adapterctl.stats import block_stats
            from adapterctl.textsafe import clip

            # Block names can come from a stored manifest: escape them like the report does.
            report["weights"] = json_safe([{**w, "block": clip(w["block"])} for w in block_stats(adapter)])
    if markdown and not json_out:
        if not quiet:
            print(render_markdown(report), end="")
        return
    out.result(report, render_text)


def render_text(console, r: dict) -> None:
    from rich.table import Table

    head = (f"[bold]{plain(r['path'])}[/]  {r['size'] / 1e6:.1f} MB  "
            f"{r['architecture']} · {r['layout']} · {plain(r['method'])}"
            + (f" · preset {plain(r['preset'])}" if r["preset"] else "") + f" · manifest {r['manifest']}")
    console.print(head)
    console.print(f"{r['modules']} LoRA modules, {r['parameters']:,} parameters, dtypes "
                  + ", ".join(f"{plain(k)}×{v}" for k, v in r["dtypes"].items())
                  + " · components " + ", ".join(f"{k} {v}" for k, v in r["components"].items()))
    console.print(f"rank {_range(r['rank'])}  alpha {_range(r['alpha'])}  scale {_range(r['scale'])} "
                  f"(from {r['scaling']})")
    roles = ", ".join(f"{k} {v['modules']}" + (f" ({v['source']})" if v["source"] else "")
                      for k, v in r["roles"].items())
    console.print(f"roles: {roles}")
    console.print("loads in: " + " · ".join(f"{c['consumer']} " + _loss(c) for c in r["loads_in"])
                  + "  [dim](details: validate --for TOOL)[/]")
    table = Table(box=None, pad_edge=False)
    table.add_column("block", no_wrap=True)
    for col in ("lbw", "modules", "roles", "rank", "kinds"):
        table.add_column(col)
    weights = {w["block"]: w for w in r.get("weights", [])}
    if weights:
        table.add_column("‖ΔW‖", justify="right")
        table.add_column("eff. rank", justify="right")
    for b in r["blocks"]:
        row = [plain(b["block"] or "?"), b["lbw"] or "-", str(b["modules"]), ",".join(b["roles"]),
               ",".join(map(str, b["rank"])), ",".join(f"{k} {v}" for k, v in b["kinds"].items())]
        if weights:
            w = weights.get(b["block"])
            row += [_num(w["norm"], ".4g"), _num(w["effective_rank"]["mean"], ".1f")] if w else ["-", "-"]
        table.add_row(*row)
    console.print(table)
    for label, key in (("LyCORIS", "lycoris"),):
        if r[key]:
            console.print(f"[yellow]{label}[/]: " + ", ".join(f"{k} ({v} tensors)" for k, v in r[key].items()))
    if r["unmapped"]["count"]:
        console.print(f"[yellow]unmapped tensors[/]: {r['unmapped']['count']} (first: {plain(r['unmapped']['first'][0])})")
    for w in r["warnings"]:
        console.print(f"[yellow]warning[/]: {plain(w)}")
    for group, items in r["metadata"].items():
        console.print(f"[bold]{group}[/] metadata: {len(items)} keys")
        for k, v in list(items.items())[:12]:
            short = v if len(v) <= 100 else v[:99] + "…"
            console.print(f"  {plain(k)} = {plain(short)}")


def _num(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _loss(c: dict) -> str:
    if c["ok"]:
        return "[green]✓[/]"
    total = c["applied"] + c["ignored"] + c["misscaled"]
    if c["applied"] == 0 and c["misscaled"] == 0:
        return "[red]✗ nothing[/]"
    parts = ([f"loses {c['ignored']}/{total}"] if c["ignored"] else []) + \
        ([f"{c['misscaled']} mis-scaled"] if c["misscaled"] else [])
    return "[red]✗ " + ", ".join(parts) + "[/]"


def _range(s: dict) -> str:
    if s["min"] is None:
        return "-"
    low, high = _num(s["min"], "g"), _num(s["max"], "g")  # "NaN"/"Infinity" arrive as strings
    return low if low == high else f"{low}–{high}"


def render_markdown(r: dict) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {cell(r['path'])}", "",
             f"- architecture: {r['architecture']}", f"- layout: {r['layout']}", f"- method: {cell(r['method'])}",
             f"- manifest: {r['manifest']}", f"- modules: {r['modules']}", f"- parameters: {r['parameters']}",
             f"- rank: {_range(r['rank'])}, alpha: {_range(r['alpha'])}, scale: {_range(r['scale'])}",
             "- roles: " + ", ".join(f"{k} {v['modules']}" for k, v in r["roles"].items()), "",
             "| block | lbw | modules | roles | rank |", "|---|---|---|---|---|"]
    for b in r["blocks"]:
        lines.append(f"| {cell(b['block'])} | {b['lbw'] or '-'} | {b['modules']} | {','.join(b['roles'])} | "
                     f"{','.join(map(str, b['rank']))} |")
    lines.append("")
    for group, items in r["metadata"].items():
        lines += [f"## {group} metadata", "", "| key | value |", "|---|---|"]
        lines += [f"| {cell(k)} | {cell(v[:200])} |" for k, v in items.items()]
        lines.append("")
    return "\n".join(lines)
