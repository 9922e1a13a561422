"""The set of files a push uploads, built locally before any request: the inputs, one file per
role (--split-roles), layout copies (--also kohya), each opened, hashed and named.

Derived files are written into a temporary directory. Their bytes must not depend on the day
they are made, or pushing the same input twice would upload "changed" files every time: the
operation that derives them is stamped with the input's own newest timestamp (its last
provenance operation, else its ModelSpec date), so the same input always gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from adapterctl.errors import UnsupportedConversion, UsageError
from adapterctl.hub._client import Digest, check_remote_name, digest_file
from adapterctl.hub.card import CardFile
from adapterctl.textsafe import clip, display_path

LAYOUTS = ("kohya", "diffusers")  # what --also may add (peft is a directory, not one file)
_EPOCH = "1970-01-01T00:00:00+00:00"
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(T[\d:.]{8,15}(Z|[+-]\d{2}:\d{2})?)?$")


@dataclass(frozen=True)
class Upload:
    name: str  # path in the repository
    local: Path
    adapter: object  # the opened Adapter
    digest: Digest
    source: Optional[str] = None
    derived: Optional[str] = None

    def card_file(self) -> CardFile:
        return CardFile(self.name, self.adapter, self.digest.sha256, self.digest.size, self.source, self.derived)


def build(paths: Iterable[Path], stack: ExitStack, workdir: Path, *, split_roles: bool,
          also: tuple[str, ...]) -> tuple[list[Upload], list[str]]:
    """(uploads, notes). Every input is opened first, so a bad one fails before anything else."""
    from adapterctl.adapter import Adapter

    inputs = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise UsageError("push uploads single .safetensors files, and this is a directory (peft)",
                             path=display_path(path), hint="adapterctl convert DIR --to diffusers, then push the file")
        name = path.name
        if not name.endswith(".safetensors"):
            raise UsageError("push uploads .safetensors files", path=display_path(path))
        check_remote_name(name)
        inputs.append((name, path, stack.enter_context(Adapter.open(path))))
    uploads = [Upload(name, path, adapter, digest_file(path)) for name, path, adapter in inputs]
    notes: list[str] = []
    for name, _path, adapter in inputs:
        stem = name.removesuffix(".safetensors")
        roles = sorted(adapter.roles())
        role_files = []
        if split_roles:
            if len(roles) < 2:
                notes.append(f"{clip(name, 100)} has one role ({roles[0]}); nothing to split")
            for role in roles if len(roles) > 1 else ():
                role_files.append(_derive(stack, workdir, adapter, adapter.split(keep=[role]), f"{stem}.{role}",
                                          source=name, how=f"role {role}"))
        uploads += role_files
        for layout in also:
            for base, what in [(adapter, name)] + [(u.adapter, u.name) for u in role_files]:
                if base.layout == layout:
                    continue
                try:
                    derived = base.convert(layout)
                    uploads.append(_derive(stack, workdir, adapter, derived,
                                           what.removesuffix(".safetensors") + f".{layout}", source=name,
                                           how=f"{layout} layout" + (f", role {next(iter(base.roles()))}"
                                                                    if base is not adapter else "")))
                except UnsupportedConversion as exc:
                    if base is adapter and role_files:  # two roles on a module: the per-role copies carry it
                        notes.append(f"{clip(name, 100)}: no {layout} copy of the combined file ({exc.message}); "
                                     "the per-role files have one")
                        continue
                    raise UnsupportedConversion(f"{clip(what, 100)}: {exc.message}", hint=f"add --split-roles: each "
                                                f"role's file gets its own {layout} copy") from None
    seen: dict[str, str] = {}
    for u in uploads:
        if u.name in seen or u.name == "README.md":
            raise UsageError(f"two files would be uploaded as '{clip(u.name, 200)}'",
                             hint="rename one of the inputs")
        seen[u.name] = u.name
    return uploads, notes


def _derive(stack: ExitStack, workdir: Path, original, derived, stem: str, *, source: str, how: str) -> Upload:
    from adapterctl.adapter import Adapter

    derived = pinned(derived, original)
    name = stem + ".safetensors"
    check_remote_name(name)
    saved = derived.save(workdir / name)
    opened = stack.enter_context(Adapter.open(saved.path))
    return Upload(name, saved.path, opened, digest_file(saved.path), source, how)


def pinned(derived, source):
    """``derived`` with its new operations stamped like ``source`` (see the module docstring)."""
    stamp, date = _stamp(source)
    ops = tuple(op.model_copy(update={"at": stamp}) for op in derived.pending)
    metadata = dict(derived.metadata)
    metadata.setdefault("modelspec.date", date)  # save() would put today's date here
    return dataclasses.replace(derived, pending=ops, metadata=metadata)


def _stamp(adapter) -> tuple[str, str]:
    stamps = [op.at for op in adapter.manifest.provenance.operations if _ISO.match(op.at)]
    if stamps:
        stamp = max(stamps)
        return stamp, stamp[:10]
    date = adapter.metadata.get("modelspec.date", "")
    if _ISO.match(date):
        return f"{date[:10]}T00:00:00+00:00", date[:10]
    return _EPOCH, _EPOCH[:10]
