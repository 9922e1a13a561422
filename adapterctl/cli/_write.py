"""What every writing command shares: open, derive, save, and report the result."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from adapterctl.cli.output import Output
from adapterctl.textsafe import display_path


def write_command(path: Path, derive: Callable, *, suffix: str, output: Optional[Path], force: bool,
                  strip_metadata: bool, arch: Optional[str], json_out: bool, quiet: bool,
                  fsync: bool = False, directory: bool = False) -> None:
    """Open ``path``, apply ``derive(adapter) -> Adapter``, save to -o or '<stem>.<suffix>' beside it."""
    from adapterctl.adapter import Adapter

    out = Output(json_mode=json_out, quiet=quiet)
    with Adapter.open(path, arch=arch) as adapter:
        derived = derive(adapter)
        target = output or default_output(path, suffix, directory=directory)
        saved = derived.save(target, force=force, strip_foreign=strip_metadata, durable=fsync)
    out.result(write_result(saved, derived))
    out.done(done_line(saved, derived))


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
