"""What every writing command shares: default output names and the result object."""

from __future__ import annotations

from pathlib import Path


def default_output(src: Path, suffix: str, *, directory: bool = False) -> Path:
    """'<stem>.<suffix>.safetensors' beside the input (or '<stem>.<suffix>/' for a directory output)."""
    stem = src.name if src.is_dir() else src.stem
    name = f"{stem}.{suffix}" if directory else f"{stem}.{suffix}.safetensors"
    return src.parent / name


def write_result(saved, adapter) -> dict:
    return {"ok": True, "output": str(saved.path), "layout": saved.layout, "tensors": saved.tensors,
            "bytes": saved.bytes, "sha256": saved.sha256, "source_sha256": saved.source_sha256,
            "modules": len(adapter.manifest.modules), "roles": adapter.roles()}


def done_line(saved, adapter) -> str:
    roles = ", ".join(f"{k} {v}" for k, v in sorted(adapter.roles().items()))
    return (f"Wrote {saved.path} ({saved.layout}, {len(adapter.manifest.modules)} modules: {roles}; "
            f"{saved.bytes / 1e6:.1f} MB)")
