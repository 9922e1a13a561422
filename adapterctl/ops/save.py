"""Writing an adapter: tensor names for the target layout, the header, and the manifest.

Every factor is copied byte for byte from the source in source order (one sequential pass that
also hashes the source for provenance). Only kohya alphas that the source did not store are
created, in the dtype recorded for them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from adapterctl.errors import AdapterError, InvalidFile
from adapterctl.format.constants import (DIFFUSERS_METADATA_KEY, DROPPED_STALE_KEYS, FORMAT_KEY, FORMAT_NAME,
                                         FORMAT_VERSION, MANIFEST_KEY, MODELSPEC_VERSION)
from adapterctl.format.manifest import ModuleEntry, Provenance, Source, TensorKeys
from adapterctl.io.atomic import atomic_directory
from adapterctl.io.writer import HashSlots, OutTensor, write_safetensors
from adapterctl.format.roles import TAGGABLE_ROLES
from adapterctl.layouts import write as W
from adapterctl.layouts.keys import parse_key
from adapterctl.layouts.peft_dir import CONFIG_NAME, WEIGHTS_NAME
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter, SaveResult


def save_adapter(adapter: "Adapter", path: Path, *, force: bool, strip_foreign: bool,
                 durable: bool = False) -> "SaveResult":
    from adapterctl.adapter import SaveResult

    _refuse_nonfinite(adapter)
    target = adapter.manifest.layout
    tensors, entries = _plan(adapter)
    slots = HashSlots.new()
    manifest = adapter.manifest.model_copy(update={
        "modules": entries,
        "provenance": Provenance(
            sources=list(adapter.manifest.provenance.sources) + [
                Source(sha256=slots.source, name=clip(adapter.path.name, 200), layout=adapter.read.layout)],
            operations=list(adapter.manifest.provenance.operations) + list(adapter.pending)),
    })
    metadata = _metadata(adapter, manifest, path, strip_foreign, slots)
    inputs = tuple(dict.fromkeys((adapter.source.path, adapter.path)))
    if adapter.peft_config is not None:  # a peft input is its directory and both files in it
        inputs += (adapter.path / CONFIG_NAME,)
    if target == "peft":
        with atomic_directory(path, force=force, inputs=inputs, allowed=frozenset({CONFIG_NAME, WEIGHTS_NAME}),
                              verify=_reads_back_dir) as staging:
            result = write_safetensors(staging / WEIGHTS_NAME, tensors, metadata, source=adapter.source,
                                       durable=durable, slots=slots, check_finite=True)
            config = W.peft_adapter_config(entries, adapter.arch)
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        result = write_safetensors(path, tensors, metadata, source=adapter.source, force=force, inputs=inputs,
                                   durable=durable, slots=slots, verify=_reads_back(path, adapter.arch.name),
                                   check_finite=True)
    return SaveResult(path=path, layout=target, tensors=len(tensors), bytes=result.nbytes,
                      sha256=result.sha256, source_sha256=result.source_sha256)


def _refuse_nonfinite(adapter: "Adapter") -> None:
    # JSON has no NaN: the manifest would store null, and every loader would apply NaN or inf.
    for e in adapter.manifest.modules:
        if not (math.isfinite(e.alpha) and math.isfinite(e.scale)):
            raise InvalidFile(f"'{e.module}' has alpha {e.alpha} (scale {e.scale}), which is not finite; refusing to "
                              "write an adapter that no loader can apply", path=str(adapter.path))


def _reads_back(path: Path, arch: str):
    """Before the output gets its name: adapterctl must read it back, header, layout and manifest."""
    from adapterctl.adapter import Adapter

    return lambda fd: _read_back(lambda: Adapter.open_fd(fd, path, arch=arch))


def _reads_back_dir(staging: Path) -> None:
    from adapterctl.adapter import Adapter

    _read_back(lambda: Adapter.open(staging))


def _read_back(opener) -> None:
    try:
        opener().close()
    except AdapterError as exc:
        raise InvalidFile(f"refusing to write an output that does not read back: {exc.message}",
                          path=exc.path) from None


def _plan(adapter: "Adapter") -> tuple[list[OutTensor], list[ModuleEntry]]:
    st = adapter.source
    target = adapter.manifest.layout
    # An explicit convert always renames, so kohya output gets SGM names even from a kohya file
    # that used diffusers module names.
    renaming = target != adapter.read.layout or any(op.op == "convert" for op in adapter.pending)
    per_module = Counter(e.module for e in adapter.manifest.modules)
    ordered: list[tuple[float, OutTensor]] = []
    entries: list[ModuleEntry] = []
    for entry in adapter.manifest.modules:
        old = entry.tensors
        if renaming or _qualified(old.down):
            qualifier = entry.role if per_module[entry.module] > 1 else None
            names = W.factor_names(adapter.arch, entry, target, qualifier=qualifier)
        else:
            names = {k: v for k, v in old.model_dump().items() if v}
        base = st.tensors[old.down].start
        alpha_dtype = entry.alpha_dtype
        keys: dict[str, str | None] = {}
        for part in ("down", "up", "magnitude", "router_weight", "router_bias"):
            src = getattr(old, part)
            if src is None:
                continue
            keys[part] = names.get(part, src)
            ordered.append((st.tensors[src].start, OutTensor.copy(st, src, keys[part])))
        if target == "kohya":
            if old.alpha is not None and not renaming:
                keys["alpha"] = old.alpha
                ordered.append((st.tensors[old.alpha].start, OutTensor.copy(st, old.alpha)))
            elif old.alpha is not None and adapter.read.layout == "kohya":
                keys["alpha"] = names["alpha"]
                ordered.append((st.tensors[old.alpha].start, OutTensor.copy(st, old.alpha, names["alpha"])))
            elif renaming:
                dtype, raw = W.kohya_alpha(entry)
                keys["alpha"] = names["alpha"]
                ordered.append((base + 0.5, OutTensor.from_bytes(names["alpha"], dtype, (), raw)))
                alpha_dtype = dtype  # the manifest must describe the tensor it now has
        elif old.alpha is not None and not renaming:
            keys["alpha"] = old.alpha  # network alphas of an old diffusers file stay where they were
            ordered.append((st.tensors[old.alpha].start, OutTensor.copy(st, old.alpha)))
        entries.append(entry.model_copy(update={"tensors": TensorKeys(**keys), "alpha_dtype": alpha_dtype}))
    ordered.sort(key=lambda item: item[0])
    return [t for _, t in ordered], entries


def _qualified(key: str) -> bool:
    """A role-qualified key (two roles on one module), which a rename can make standard again."""
    parsed = parse_key(key)
    return parsed is not None and parsed.qualifier in TAGGABLE_ROLES


def _metadata(adapter: "Adapter", manifest, path: Path, strip_foreign: bool, slots: HashSlots) -> dict[str, str]:
    meta = {} if strip_foreign else adapter.foreign_metadata()
    for key in DROPPED_STALE_KEYS:
        meta.pop(key, None)
    if "sshs_model_hash" in meta:
        meta["sshs_model_hash"] = slots.out_hex
    today = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    meta.setdefault("modelspec.sai_model_spec", MODELSPEC_VERSION)
    meta["modelspec.architecture"] = f"{adapter.arch.modelspec_architecture}"
    # File names may hold bytes that are not UTF-8 (surrogates in Python): escaped, never raw.
    meta.setdefault("modelspec.title", clip(path.stem if path.suffix else path.name, 200))
    meta.setdefault("modelspec.date", today)
    meta["modelspec.hash_sha256"] = slots.out_0x
    if manifest.layout == "diffusers":
        meta[DIFFUSERS_METADATA_KEY] = W.diffusers_metadata(list(manifest.modules), adapter.arch)
    meta[FORMAT_KEY] = f"{FORMAT_NAME}/{FORMAT_VERSION}"
    meta[MANIFEST_KEY] = manifest.to_json()
    return meta
