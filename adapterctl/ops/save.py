"""Writing an adapter: the planned tensors (model/plan.py), the header, and the manifest.

Copied factors go byte for byte from their input, each input read once in order (the same pass
hashes it for provenance); computed factors are produced one branch at a time as the writer
reaches them. The output is read back before it gets its name.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from adapterctl.errors import AdapterError, InvalidFile
from adapterctl.format.constants import (DROPPED_STALE_KEYS, FORMAT_KEY, FORMAT_NAME,
                                         FORMAT_VERSION, MANIFEST_KEY, MODELSPEC_VERSION)
from adapterctl.format.manifest import Provenance, Source
from adapterctl.io.atomic import atomic_directory
from adapterctl.io.writer import HashSlots, write_safetensors
from adapterctl.layouts.lora_config import peft_adapter_config
from adapterctl.layouts.peft_dir import CONFIG_NAME, WEIGHTS_NAME
from adapterctl.layouts.registry import get as get_layout
from adapterctl.model.plan import InputFile, plan_tensors
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter


@dataclass(frozen=True)
class SaveResult:
    path: Path
    layout: str
    tensors: int
    bytes: int
    sha256: str
    source_sha256: Optional[str]
    source_sha256s: tuple[str, ...] = ()  # every input's, in order (a merge has several)


def save_adapter(adapter: "Adapter", path: Path, *, force: bool, strip_foreign: bool, durable: bool = False,
                 reader: type, protect: tuple[Path, ...] = ()) -> SaveResult:
    """``reader``: the Adapter class, whose ``open``/``open_fd`` read the output back before it
    is named (passed in, so that this module never imports the one that calls it)."""
    _refuse_nonfinite(adapter)
    target = adapter.manifest.layout
    sources = adapter.input_adapters()
    tensors, entries = plan_tensors(
        adapter.arch, target, list(adapter.manifest.modules), adapter.origins,
        [InputFile(a.source, a.read.layout, {e.tensors.down: e.alpha for e in a.read.entries}) for a in sources],
        rename=any(op.op == "convert" for op in adapter.pending))
    slots = HashSlots.new(len(sources))
    manifest = adapter.manifest.model_copy(update={"modules": entries, "provenance": _provenance(adapter, slots)})
    metadata = _metadata(adapter, manifest, path, strip_foreign, slots)
    inputs: tuple[Path, ...] = protect
    for a in sources:
        inputs += (a.source.path, a.path)
        if a.peft_config is not None:  # a peft input is its directory and both files in it
            inputs += (a.path / CONFIG_NAME,)
    inputs = tuple(dict.fromkeys(inputs))
    files = [a.source for a in sources]
    layout = get_layout(target)  # may be a read-only layout whose names are kept (split, tag)
    if layout.directory:  # peft: the weights and adapter_config.json, staged and renamed together
        with atomic_directory(path, force=force, inputs=inputs, allowed=frozenset({CONFIG_NAME, WEIGHTS_NAME}),
                              verify=_reads_back_dir(reader)) as staging:
            result = write_safetensors(staging / WEIGHTS_NAME, tensors, metadata, sources=files,
                                       durable=durable, slots=slots, check_finite=True)
            config = peft_adapter_config(entries, adapter.arch)
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    else:
        result = write_safetensors(path, tensors, metadata, sources=files, force=force, inputs=inputs,
                                   durable=durable, slots=slots, verify=_reads_back(reader, path, adapter.arch.name),
                                   check_finite=True)
    return SaveResult(path=path, layout=target, tensors=len(tensors), bytes=result.nbytes,
                      sha256=result.sha256, source_sha256=result.source_sha256,
                      source_sha256s=result.source_sha256s)


def _provenance(adapter: "Adapter", slots: HashSlots) -> Provenance:
    """A single-file derivation extends its input's history by one source. A merge starts a new
    history: its sources are the inputs, in argument order (their own histories stay in them,
    found by sha256), and the merge operation names them by index."""
    inputs = adapter.input_adapters()
    here = [Source(sha256=token, name=clip(a.path.name, 200), layout=a.read.layout)
            for token, a in zip(slots.sources, inputs)]
    if adapter.inputs:
        return Provenance(sources=here, operations=list(adapter.pending))
    previous = adapter.manifest.provenance
    return Provenance(sources=list(previous.sources) + here,
                      operations=list(previous.operations) + list(adapter.pending))


def _refuse_nonfinite(adapter: "Adapter") -> None:
    # JSON has no NaN: the manifest would store null, and every loader would apply NaN or inf.
    for e in adapter.manifest.modules:
        if not (math.isfinite(e.alpha) and math.isfinite(e.scale)):
            raise InvalidFile(f"'{e.module}' has alpha {e.alpha} (scale {e.scale}), which is not finite; refusing to "
                              "write an adapter that no loader can apply", path=str(adapter.path))


def _reads_back(reader, path: Path, arch: str):
    """Before the output gets its name: adapterctl must read it back, header, layout and manifest."""
    return lambda fd: _read_back(lambda: reader.open_fd(fd, path, arch=arch))


def _reads_back_dir(reader):
    return lambda staging: _read_back(lambda: reader.open(staging))


def _read_back(opener) -> None:
    try:
        opener().close()
    except AdapterError as exc:
        raise InvalidFile(f"refusing to write an output that does not read back: {exc.message}",
                          path=exc.path) from None


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
    meta.update(get_layout(manifest.layout).header_metadata(list(manifest.modules), adapter.arch))
    meta[FORMAT_KEY] = f"{FORMAT_NAME}/{FORMAT_VERSION}"
    meta[MANIFEST_KEY] = manifest.to_json()
    return meta
