"""The Python API: an adapter file opened lazily, and the operations that derive new ones.

    import adapterctl
    a = adapterctl.open("blora.safetensors")        # the header (and alphas), never the factors
    a.roles()                                         # {'content': 80, 'style': 80}
    a.split(keep=["style"]).convert("kohya").save("style.safetensors")

Operations are pure: they return a new ``Adapter`` that refers to the same source bytes, and
nothing is read or written until ``save``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

from adapterctl import header
from adapterctl.version import __version__
from adapterctl.arch import ArchMap, load_arch
from adapterctl.errors import InvalidFile, UsageError
from adapterctl.format.constants import DIFFUSERS_METADATA_KEY, FORMAT_KEY, MANIFEST_KEY
from adapterctl.format.manifest import Manifest, ModuleEntry, Operation, RoleRule
from adapterctl.format import roles as _roles
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.layouts.read import ReadResult, read_layout
from adapterctl.model.origins import BranchKey, Computed, FromInput, Origin, key_of
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    from adapterctl.ops.save import SaveResult

_OUR_KEYS = (MANIFEST_KEY, FORMAT_KEY, DIFFUSERS_METADATA_KEY)


@dataclass(frozen=True)
class Adapter:
    path: Path
    arch: ArchMap
    manifest: Manifest
    manifest_stored: bool  # False: the manifest was inferred from the tensors
    metadata: dict[str, str]  # the whole __metadata__ as read (untrusted strings)
    read: ReadResult
    peft_config: Optional[dict] = None
    source: SafetensorsFile = field(repr=False, default=None)
    pending: tuple[Operation, ...] = ()
    # A derived adapter may draw on several files (a merge) and compute some branches (prune,
    # merge): ``inputs`` are the opened inputs (empty: this adapter's own file is the only one),
    # and ``origins`` says, per branch, which input to copy from or how to compute it.
    inputs: tuple["Adapter", ...] = field(repr=False, default=())
    origins: Mapping[BranchKey, Origin] = field(repr=False, default_factory=dict)
    report: Optional[object] = field(repr=False, default=None)  # what the last op measured (prune, merge)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path, *, arch: Optional[str] = None) -> "Adapter":
        path = Path(path)
        st, peft_config = header.open_source(path)
        return cls._from_file(path, st, arch, peft_config)

    @classmethod
    def open_fd(cls, fd: int, path, *, arch: Optional[str] = None) -> "Adapter":
        """Read an open safetensors file (``path`` is for messages): a writer checking its output."""
        return cls._from_file(Path(path), SafetensorsFile(path, fd=fd), arch, None)

    @classmethod
    def from_file(cls, path: Path, st: SafetensorsFile, *, arch: Optional[str] = None,
                  peft_config: Optional[dict] = None) -> "Adapter":
        """The adapter over an open ``st`` (``path``: the file, or its peft directory), which it
        then owns: closed here if reading fails."""
        return cls._from_file(Path(path), st, arch, peft_config)

    @classmethod
    def _from_file(cls, path: Path, st: SafetensorsFile, arch_name, peft_config) -> "Adapter":
        """The adapter over ``st``, which it then owns: closed here if reading fails."""
        try:
            return cls._read(path, st, arch_name, peft_config)
        except BaseException:
            st.close()
            raise

    @classmethod
    def _read(cls, path: Path, st: SafetensorsFile, arch_name, peft_config) -> "Adapter":
        stored = header.stored_manifest(st)
        arch = load_arch(arch_name or (stored.architecture if stored else header.guess_arch(st)))
        if stored is not None and stored.architecture != arch.name:
            raise InvalidFile(f"manifest architecture '{clip(stored.architecture, 60)}' is not '{arch.name}'",
                              path=str(path))
        result = read_layout(st, arch, peft_config=peft_config)
        header.require_mapped(result, arch, path)
        if stored is not None:
            manifest = _reconcile(stored, result, st, arch)
        else:  # header.summarize mirrors this branch for listings, without the alpha values
            entries, preset = _roles.infer_roles(arch, result.entries)
            manifest = Manifest(architecture=arch.name, layout=header.layout_of(result),
                                method=header.guess_method(result, preset), preset=preset, modules=entries)
        return cls(path=path, arch=arch, manifest=manifest, manifest_stored=stored is not None,
                   metadata=dict(st.metadata), read=result, peft_config=peft_config, source=st)

    # -- views ---------------------------------------------------------------------------
    @property
    def modules(self) -> list[ModuleEntry]:
        return list(self.manifest.modules)

    @property
    def layout(self) -> str:
        return self.manifest.layout

    @property
    def method(self) -> str:
        return self.manifest.method

    def roles(self) -> dict[str, int]:
        return dict(Counter(e.role or "untagged" for e in self.manifest.modules))

    def blocks(self) -> dict[str, int]:
        return dict(Counter(e.block or "?" for e in self.manifest.modules))

    @classmethod
    def new(cls, arch: ArchMap, manifest: Manifest, origins: Mapping[BranchKey, Computed], operation: Operation,
            metadata: Optional[dict[str, str]] = None, name: str = "new adapter") -> "Adapter":
        """An adapter with no source file, every branch computed (what a trainer exports); ``save``
        writes it like any derived adapter, with ``operation`` as its whole history."""
        missing = [e.module for e in manifest.modules if not isinstance(origins.get(key_of(e)), Computed)]
        if missing:
            raise ValueError(f"a new adapter computes every branch; no producer for {missing[0]}")
        from adapterctl.layouts.read import ReadResult

        return cls(path=Path(name), arch=arch, manifest=manifest, manifest_stored=False, metadata=dict(metadata or {}),
                   read=ReadResult(layout=manifest.layout, entries=[]), pending=(operation,), origins=dict(origins))

    def input_adapters(self) -> tuple["Adapter", ...]:
        """The files this adapter's branches are drawn from, in provenance order (none for a new one)."""
        if self.inputs:
            return self.inputs
        return (self,) if self.source is not None else ()

    def origin(self, entry: ModuleEntry) -> Origin:
        return self.origins.get(key_of(entry), FromInput(0))

    def branch(self, entry: ModuleEntry):
        """One plain branch's effective update, factored (``lowrank.Factored``, float64, with scale)."""
        from adapterctl.model.factors import read_branch

        origin = self.origin(entry)
        if isinstance(origin, Computed):
            return origin.produce()
        source = self.input_adapters()[origin.index]
        return read_branch(source.source, entry, path=source.path)

    def foreign_metadata(self) -> dict[str, str]:
        return {k: v for k, v in self.metadata.items() if k not in _OUR_KEYS}

    # -- operations ------------------------------------------------------------------------
    def _derive(self, op: str, args: dict, *, origins: Optional[Mapping[BranchKey, Origin]] = None,
                inputs: Optional[tuple["Adapter", ...]] = None, report: Optional[object] = None,
                metadata: Optional[dict[str, str]] = None, **changes) -> "Adapter":
        stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        operation = Operation(op=op, args=args, tool=f"adapterctl {__version__}", at=stamp,
                              inputs=list(range(len(inputs))) if inputs else None)
        # model_copy(update=...) skips validators; a derived manifest must pass the same checks
        # as one read from a file (e.g. two branches of one module may not end with one role).
        from pydantic import ValidationError

        try:
            manifest = Manifest.model_validate(self.manifest.model_copy(update=changes).model_dump())
        except ValidationError as exc:
            msg = str(exc.errors()[0].get("msg")).removeprefix("Value error, ")
            raise UsageError(f"{op} would make an invalid adapter: {clip(msg, 300)}",
                             hint="a module with two roles keeps two branches; give each its own role") from None
        derived = replace(self, manifest=manifest, pending=self.pending + (operation,), report=report)
        if inputs is not None:
            derived = replace(derived, inputs=inputs)
        if origins is not None:
            derived = replace(derived, origins={**self.origins, **origins})
        if metadata is not None:
            derived = replace(derived, metadata=metadata)
        return derived

    def tag(self, *, preset: Optional[str] = None, roles: Iterable[str | RoleRule] = (),
            clear: bool = False) -> "Adapter":
        """Assign roles by preset and/or 'role=selector' rules. Existing roles stay unless overridden."""
        rules = [f"{r.role}={r.selector}" if isinstance(r, RoleRule) else r for r in roles]
        return self.apply("tag", preset=preset, roles=rules, clear=clear)

    def split(self, *, keep: Iterable[str] = (), drop: Iterable[str] = (),
              keep_blocks: Iterable[str] = ()) -> "Adapter":
        """Keep only some branches: by role (``keep``/``drop``, 'untagged' allowed) and/or by block selector."""
        return self.apply("split", keep=list(keep), drop=list(drop), keep_blocks=list(keep_blocks))

    def convert(self, to: str) -> "Adapter":
        """Change the tensor layout (names and scale metadata only; factor bytes are unchanged)."""
        from adapterctl.layouts.registry import writer

        writer(to)  # before the params model, for the friendlier message
        return self.apply("convert", to=to)

    def prune(self, *, rank: Optional[int] = None, conv_rank: Optional[int] = None, dynamic: Optional[str] = None,
              param: Optional[float] = None, columns: Optional[float] = None, energy: Optional[float] = None,
              keep_blocks: Iterable[str] = (), scale_blocks: Iterable[str] = (),
              copy_smaller: bool = False) -> "Adapter":
        """Truncate ranks (fixed or dynamic), keep the strongest columns, keep or scale blocks.
        The derived adapter's ``report`` holds the retained energy per module and block."""
        return self.apply("prune", rank=rank, conv_rank=conv_rank, dynamic=dynamic, param=param, columns=columns,
                          energy=energy, keep_blocks=list(keep_blocks), scale_blocks=list(scale_blocks),
                          copy_smaller=copy_smaller)

    def apply(self, op: str, **params) -> "Adapter":
        """Run a registered operation by name (see ``adapterctl.ops.registry``)."""
        from adapterctl.ops import base, registry

        return base.run(registry.get(op), self, **params)

    def save(self, path, *, force: bool = False, strip_foreign: bool = False, durable: bool = False,
             protect: Iterable[Path] = ()) -> "SaveResult":
        """Write atomically. ``durable`` also fsyncs, so the file survives a power loss. ``protect``:
        more paths the output must never replace (a trainer's images), besides the inputs."""
        from adapterctl.ops.save import save_adapter

        return save_adapter(self, Path(path), force=force, strip_foreign=strip_foreign, durable=durable,
                            reader=type(self), protect=tuple(Path(p) for p in protect))

    def close(self) -> None:
        for adapter in self.inputs:
            adapter.close()
        if self.source is not None:
            self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Fields of a branch that the tensors (and the layout's scale metadata) determine on their own.
_DETERMINED = ("module", "component", "block", "kind", "rank", "dtype", "experts", "dora", "tensors")


def _reconcile(stored: Manifest, result: ReadResult, st: SafetensorsFile, arch: ArchMap) -> Manifest:
    """A stored manifest is trusted only if it agrees with the tensors, which are what loaders read.

    Every field the tensors determine must be equal; the scale must be what a loader applies; a
    role spelled in the keys (peft's adapter slot, experts) must be the manifest's role; and each
    tensor belongs to exactly one branch. Anything else is two truths about one file: rejected.
    """
    if stored.layout != result.layout:
        raise InvalidFile(f"manifest says layout '{stored.layout}' but the keys are '{result.layout}'",
                          path=str(st.path))
    read_by_down = {e.tensors.down: e for e in result.entries}
    owned: set[str] = set()
    for entry in stored.modules:
        for key in (k for k in entry.tensors.model_dump().values() if k):
            if key not in st.tensors:
                raise InvalidFile(f"manifest names tensor '{clip(key, 100)}' that the file does not hold",
                                  path=str(st.path))
            if key in owned:
                raise InvalidFile(f"manifest gives tensor '{clip(key, 100)}' to two branches", path=str(st.path))
            owned.add(key)
        found = read_by_down.get(entry.tensors.down)
        if found is None:
            raise InvalidFile(f"manifest entry '{clip(entry.module, 100)}' does not match the tensors' own names",
                              path=str(st.path))
        problems = _disagreements(entry, found)
        if problems:
            raise InvalidFile(f"manifest disagrees with the tensors on '{clip(found.module, 100)}': "
                              + "; ".join(problems[:3]), path=str(st.path),
                              hint="the tensors are what loaders apply; rebuild the manifest with 'adapterctl tag'")
    described = {e.tensors.down for e in stored.modules}
    missing = [k for k in read_by_down if k not in described]
    if missing:
        raise InvalidFile(f"{len(missing)} LoRA branches are not in the manifest (first: '{clip(missing[0], 100)}')",
                          path=str(st.path))
    return stored


def _disagreements(entry: ModuleEntry, found: ModuleEntry) -> list[str]:
    problems = [f"{name} {_show(getattr(entry, name))} in the manifest, {_show(getattr(found, name))} in the file"
                for name in _DETERMINED if getattr(entry, name) != getattr(found, name)]
    if not _same(entry.scale, found.scale):
        problems.append(f"scale {entry.scale!r} in the manifest, loaders apply {found.scale!r}")
    if entry.rslora == found.rslora and not _same(entry.alpha, found.alpha):
        problems.append(f"alpha {entry.alpha!r} in the manifest, {found.alpha!r} in the file")
    if found.alpha_dtype is not None and entry.alpha_dtype != found.alpha_dtype:
        problems.append(f"alpha dtype {_show(entry.alpha_dtype)} in the manifest, {found.alpha_dtype} in the file")
    # Roles spelled by the keys themselves (peft adapter slot, expert tensors) must match.
    if (found.role is not None or entry.role == "expert") and entry.role != found.role:
        problems.append(f"role {_show(entry.role)} in the manifest, {_show(found.role)} in the keys")
    return problems


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def _show(value) -> str:
    if hasattr(value, "model_dump"):
        value = {k: v for k, v in value.model_dump().items() if v}
    return clip(repr(value), 160)
