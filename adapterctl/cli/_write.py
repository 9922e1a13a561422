"""What every writing command shares: open, derive, save, and report the result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from adapterctl.cli.output import Output
from adapterctl.textsafe import display_path


def write_command(path: Path, derive: Callable, *, suffix: str, output: Optional[Path], force: bool,
                  strip_metadata: bool, arch: Optional[str], json_out: bool, quiet: bool,
                  fsync: bool = False, directory: bool = False, extras: Optional["Extras"] = None) -> None:
    """Open ``path``, apply ``derive(adapter) -> Adapter``, save to -o or '<stem>.<suffix>' beside it."""
    from adapterctl.adapter import Adapter

    out = Output(json_mode=json_out, quiet=quiet)
    with Adapter.open(path, arch=arch) as adapter:
        derived = derive(adapter)
        target = output or default_output(path, suffix, directory=directory)
        save_and_report(out, derived, target, force=force, strip_metadata=strip_metadata, fsync=fsync,
                        extras=extras)


class Extras:
    """Files a command writes beside its adapter (--report JSON, --plot PNG), and the summary it
    shows. Their paths are checked before the adapter is written, so a refusal costs nothing."""

    def __init__(self, *, report: Optional[Path] = None, plot: Optional[Path] = None,
                 summary: Optional[Callable] = None, document: Optional[Callable] = None,
                 draw: Optional[Callable] = None):
        self.report, self.plot, self.summary, self.document, self.draw = report, plot, summary, document, draw

    def check(self, target: Path, inputs: tuple[Path, ...], force: bool) -> None:
        from adapterctl.errors import UsageError
        from adapterctl.io.atomic import check_output

        for extra in (self.report, self.plot):
            if extra is None:
                continue
            if Path(extra).absolute() == Path(target).absolute():
                raise UsageError(f"{display_path(extra)} is also the adapter output", hint="give it another name")
            check_output(Path(extra), force=force, inputs=inputs)


def save_and_report(out: Output, derived, target: Path, *, force: bool, strip_metadata: bool, fsync: bool,
                    extras: Optional[Extras] = None) -> None:
    inputs = tuple(p for a in derived.input_adapters() for p in (a.path, a.source.path))
    if extras is not None:
        extras.check(target, inputs, force)
    saved = derived.save(target, force=force, strip_foreign=strip_metadata, durable=fsync)
    result = write_result(saved, derived)
    document = extras.document(derived) if extras is not None and extras.document else None
    if document is not None:
        result["report"] = {k: v for k, v in document.items() if k != "modules"}  # per module: in the file
        if extras.report is not None:
            _write_json(extras.report, document, force=force, inputs=inputs)
            result["report_file"] = display_path(extras.report)
        if extras.plot is not None:
            extras.draw(document, extras.plot, force=force, inputs=inputs)
            result["plot_file"] = display_path(extras.plot)
    out.result(result)
    if extras is not None and extras.summary is not None and document is not None and not out.json_mode \
            and not out.quiet:
        extras.summary(out.out, document)
    out.done(done_line(saved, derived))


def _write_json(path: Path, document: dict, *, force: bool, inputs: tuple[Path, ...]) -> None:
    from adapterctl.cli.output import to_json
    from adapterctl.io.atomic import atomic_write

    with atomic_write(path, force=force, inputs=inputs) as fh:
        fh.write((to_json(document) + "\n").encode("ascii"))


def default_output(src: Path, suffix: str, *, directory: bool = False) -> Path:
    """'<stem>.<suffix>.safetensors' beside the input (or '<stem>.<suffix>/' for a directory output)."""
    stem = src.name if src.is_dir() else src.stem
    name = f"{stem}.{suffix}" if directory else f"{stem}.{suffix}.safetensors"
    return src.parent / name


def write_result(saved, adapter) -> dict:
    return {"ok": True, "output": display_path(saved.path), "layout": saved.layout, "tensors": saved.tensors,
            "bytes": saved.bytes, "sha256": saved.sha256, "source_sha256": saved.source_sha256,
            "modules": len(adapter.manifest.modules), "roles": adapter.roles()}


def done_line(saved, adapter) -> str:
    roles = ", ".join(f"{k} {v}" for k, v in sorted(adapter.roles().items()))
    return (f"Wrote {display_path(saved.path)} ({saved.layout}, {len(adapter.manifest.modules)} modules: {roles}; "
            f"{saved.bytes / 1e6:.1f} MB)")
