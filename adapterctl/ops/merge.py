"""Merging several adapters into one: pairing branches by module, roles, weights, and the plan.

    merged = adapterctl.merge([a, b], method="zip")      # Adapter; nothing is computed yet
    merged.save("out.safetensors")                        # each merged module computed, written, freed
    merged.report.to_dict()                               # what was measured, once saved

Per module, the parts are the inputs' branches on it (after role picking). Two or more parts are
merged by the method, one module at a time when the writer reaches it; a single part is copied
byte for byte, its weight going into alpha. The output has one branch per module, so every
layout can hold it; a merged branch has scale 1 (alpha = rank) and no role unless all its parts
had the same one. Foreign metadata of the inputs is not carried over: it describes them, not
the merge. Provenance lists every input and the merge (format/manifest.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Sequence

from pydantic import ValidationError

from adapterctl.errors import LayoutError, UnsupportedConversion, UsageError
from adapterctl.format.manifest import ModuleEntry
from adapterctl.io.arrays import writable_dtype
from adapterctl.model.origins import Computed, FromInput, key_of
from adapterctl.ops.block_weights import BlockWeights, parse_block_weights
from adapterctl.ops.merge_calibrated import CalibratedMergeReport, calibrate_zip, calibration_request
from adapterctl.ops.merge_report import MergeReport, measure
from adapterctl.ops.methods.base import MergeMethod
from adapterctl.textsafe import clip

if TYPE_CHECKING:
    from adapterctl.adapter import Adapter



def merge(adapters: Sequence["Adapter"], method: str, *, weights: Optional[Sequence[float]] = None,
          block_weights: Sequence[str] = (), content: Optional[int] = None, style: Optional[int] = None,
          pick_roles: bool = False, to: Optional[str] = None, measure_quality: bool = False,
          base=None, revision: Optional[str] = None, content_image=None, style_image=None,
          content_prompt: Optional[str] = None, style_prompt: Optional[str] = None,
          calibration_steps: Optional[int] = None, resolution: Optional[int] = None, progress=None,
          **method_params) -> "Adapter":
    """A derived adapter that merges ``adapters`` with ``method`` (see ``merge_methods()``).

    ``content``/``style``: indices of the inputs to take those roles from (pair methods pick them
    from the roles when not given). ``pick_roles``: take roles that way for other methods too.
    ``measure_quality``: also compute the interference proxies into ``report``.

    ``base`` (zip only): a base model (``"tiny"``, a folder, a checkpoint, a Hub id, or a loaded
    ``adapterctl.torch.base.BaseModel``) through which the mergers are calibrated on the reference
    images, now, before this returns (``adapterctl.torch.zip_calibrate``; needs the train extra).
    The images and prompts default to those the inputs' ``train`` provenance records;
    ``calibration_steps`` (default 100), ``seed`` (default 0), ``resolution`` (default: the
    training resolution the content input records, else the style input's, else the base
    model's native one) and ``progress(step, steps, loss, overlap)`` tune the run; the report
    (a ``CalibratedMergeReport``) keeps the run's ``calibration``."""
    from adapterctl.ops.registry import method as find_method

    meth = find_method(method)
    calibrate_on = calibration_request(meth, base, revision=revision, content_image=content_image,
                                        style_image=style_image, content_prompt=content_prompt,
                                        style_prompt=style_prompt, calibration_steps=calibration_steps,
                                        resolution=resolution, progress=progress)
    seed = method_params.pop("seed", None) if calibrate_on is not None else None
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise UsageError(f"--seed must be an integer from 0 to 2^63 - 1, not {clip(repr(seed), 40)}")
    params = _params(meth, method_params)
    adapters = list(adapters)
    _check_inputs(meth, adapters)
    arch = adapters[0].arch
    target = _target_layout(adapters[0], to)
    w = _weights(meth, weights, len(adapters))
    per_input_blocks = _block_weights(arch, block_weights, len(adapters))
    report = (MergeReport if calibrate_on is None else CalibratedMergeReport)(
        arch, meth.name, [clip(a.path.name, 200) for a in adapters], measured=measure_quality)
    chosen, both_roles, content_index = _choose(meth, adapters, content, style, pick_roles, report)
    calibration = _calibration(params, adapters) if meth.inputs == "one" else None

    groups: dict[str, list[tuple[int, ModuleEntry]]] = {}
    for index, entries in enumerate(chosen):
        for entry in entries:
            groups.setdefault(entry.module, []).append((index, entry))
    for index, entries in enumerate(chosen):
        if not entries:
            raise UsageError(f"{clip(adapters[index].path.name, 120)} contributes no branches to this merge")
    shared = sum(len({i for i, _ in parts}) == 2 for parts in groups.values())
    if meth.inputs == "pair" and not shared:
        if not both_roles:
            raise UsageError(f"{meth.name}: the content and style inputs share no module, so there is nothing to "
                             "merge", hint="merge adapters trained on the same modules, or combine these as they "
                                           "are with --method cat")
        # B-LoRA's own recipe: content and style live in different blocks, so they combine as they are.
        report.notes.append("the picked content and style branches lie in different modules (B-LoRA blocks): "
                            f"combined as they are, nothing to {meth.name}")

    planned_parts: dict[str, tuple[list[tuple[int, ModuleEntry]], list[float]]] = {}
    for module, parts in groups.items():
        weighted_parts = [(part, w[part[0]] * per_input_blocks[part[0]].weight(arch, module)) for part in parts]
        weighted_parts = [(part, f) for part, f in weighted_parts if f != 0]  # weight 0 drops a part
        if weighted_parts:
            planned_parts[module] = ([p for p, _ in weighted_parts], [f for _, f in weighted_parts])
    calibrated = None
    if calibrate_on is not None:
        calibrated = report.calibration = calibrate_zip(adapters, planned_parts, content_index, params,
                                                         calibrate_on, seed, report)
        if calibrated is not None:
            from adapterctl.ops.methods.zip import CalibratedZipParams

            # zip takes a module's parts in input order: the content input may be the second.
            mergers = {m: pair if content_index == 0 else pair[::-1] for m, pair in calibrated.mergers().items()}
            params = CalibratedZipParams(**params.model_dump(), mergers=mergers)

    out: list[ModuleEntry] = []
    origins = {}
    for module, (parts, factors) in planned_parts.items():
        if meth.inputs == "one" or len(parts) > 1:
            entry, origin = _computed(meth, params, arch, adapters, module, parts, factors, report, calibration)
            out.append(entry)
            origins[key_of(entry)] = origin
            continue
        (index, entry), factor = parts[0], factors[0]
        report.copied += 1
        copied = entry if factor == 1 else entry.model_copy(update={"alpha": entry.alpha * factor,
                                                                    "scale": entry.scale * factor})
        out.append(copied)
        origins[key_of(copied)] = FromInput(index)
    if not out:
        raise UsageError("the merge keeps no branches (every weight is 0)")

    first = replace(adapters[0], pending=(), origins={}, inputs=(), metadata={}, report=None)
    args = {"method": meth.name, "inputs": [clip(a.path.name, 200) for a in adapters], "weights": list(w),
            "block_weights": list(block_weights), **_args(params), **report.planned_summary()}
    if calibrated is not None:
        args.pop("steps", None)  # the data-free search's step cap: not used
        args.update(calibrated.args())
    zipped = meth.name == "zip" and any(isinstance(o, Computed) for o in origins.values())
    return first._derive("merge", args, inputs=tuple(adapters), origins=origins, report=report, modules=out,
                        layout=target, method="ziplora" if zipped else "merged", preset=None, role_rules=[])


def _params(meth: MergeMethod, given: dict):
    given = {k: v for k, v in given.items() if v is not None}
    try:
        return meth.Params(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            accepted = ", ".join(meth.Params.model_fields) or "none"
            raise UsageError(f"merge --method {meth.name} does not take '{where}'",
                             hint=f"its parameters: {accepted}") from None
        msg = str(err.get("msg")).removeprefix("Value error, ")
        raise UsageError(f"merge --method {meth.name}: {where + ': ' if where else ''}{msg}") from None


def _args(params) -> dict:
    out = {}
    for k, v in params.model_dump().items():
        if v is None:
            continue
        out[k] = [float(x) for x in v] if isinstance(v, list) else v
    return out


def _check_inputs(meth: MergeMethod, adapters: list["Adapter"]) -> None:
    need = {"one": (1, 1), "pair": (2, 2), "many": (2, 1 << 16)}[meth.inputs]
    if not need[0] <= len(adapters) <= need[1]:
        count = {"one": "one input", "pair": "two inputs (content and style)", "many": "two or more inputs"}
        raise UsageError(f"merge --method {meth.name} takes {count[meth.inputs]}, got {len(adapters)}")
    archs = {a.arch.name for a in adapters}
    if len(archs) > 1:
        raise UsageError(f"the inputs are for different architectures: {', '.join(sorted(archs))}",
                         hint="merge adapters of one base model")
    for a in adapters:
        if a.origins or a.inputs:
            raise UsageError(f"{clip(a.path.name, 120)} is derived and not saved; merge reads saved adapters",
                             hint="save it first, then merge the file")
        if a.read.lycoris:
            raise UnsupportedConversion(f"{clip(a.path.name, 120)} holds LyCORIS tensors "
                                        f"({', '.join(sorted(a.read.lycoris))}); merge reads plain LoRA/LoCon")
        for e in a.manifest.modules:
            if e.dora:
                raise UnsupportedConversion(f"'{clip(e.module, 120)}' in {clip(a.path.name, 120)} is DoRA; its "
                                            "magnitude is tied to the base weights, so updates cannot be summed")
            if e.role == "expert" and meth.inputs != "one":
                raise UnsupportedConversion(f"'{clip(e.module, 120)}' in {clip(a.path.name, 120)} holds experts",
                                            hint="collapse them first: adapterctl merge FILE --method experts "
                                                 "--mix W1,...,Wn")


def _target_layout(first: "Adapter", to: Optional[str]) -> str:
    from adapterctl.layouts.registry import writable, writer

    if to is None:
        return first.layout if first.layout in writable() else "kohya"
    return writer(to).name


def _weights(meth: MergeMethod, weights: Optional[Sequence[float]], n: int) -> list[float]:
    if weights is None:
        return [1.0 / n if meth.default_weight == "mean" else 1.0] * n
    weights = [float(x) for x in weights]
    if len(weights) != n:
        raise UsageError(f"--weights has {len(weights)} values for {n} inputs", hint="give one weight per input")
    if not all(math.isfinite(x) for x in weights):
        raise UsageError("--weights must be finite numbers")
    return weights


def _block_weights(arch, specs: Sequence[str], n: int):
    parsed = [parse_block_weights(arch, s) for s in specs if s.strip()]
    if not parsed:
        return [BlockWeights(spec="")] * n
    if len(parsed) == 1:
        return parsed * n
    if len(parsed) != n:
        raise UsageError(f"--block-weights given {len(parsed)} times for {n} inputs",
                         hint="give it once (for every input) or once per input, in input order")
    return parsed


def _choose(meth: MergeMethod, adapters: list["Adapter"], content: Optional[int], style: Optional[int],
            pick_roles: bool, report: MergeReport) -> tuple[list[list[ModuleEntry]], bool, Optional[int]]:
    """The branches each input contributes, whether they were picked by role from files that
    hold both roles (B-LoRA), where content and style may lie in different modules by design,
    and which input is the content one (None when roles play no part).

    Inputs named as content and style contribute every branch (the whole file is that LoRA, as
    in ZipLoRA). Otherwise, for zip/np (or with ``pick_roles``), the content input contributes its
    content branches and the style input its style branches (untagged ones if it has none)."""
    if content is not None or style is not None:
        if content is None or style is None or len(adapters) != 2 or {content, style} != {0, 1}:
            raise UsageError("content and style name the two inputs, one each")
        report.notes.append(f"content: all of {clip(adapters[content].path.name, 120)}; style: all of "
                            f"{clip(adapters[style].path.name, 120)} (as given)")
        picked = [[], []]
        picked[content], picked[style] = list(adapters[content].manifest.modules), \
            list(adapters[style].manifest.modules)
        return picked, False, content
    if meth.inputs != "pair" and not pick_roles:
        return [list(a.manifest.modules) for a in adapters], False, None
    if len(adapters) != 2:
        raise UsageError("roles are picked from exactly two inputs (content and style)")
    content, style, both = _pick_by_roles(adapters, report)
    picked = [[], []]
    for index, wanted in ((content, "content"), (style, "style")):
        a = adapters[index]
        allowed = (wanted,) if any(e.role == wanted for e in a.manifest.modules) else (None,)
        picked[index] = [e for e in a.manifest.modules if e.role in allowed]
    return picked, both, content


def _pick_by_roles(adapters: list["Adapter"], report: MergeReport) -> tuple[int, int, bool]:
    roles = [{e.role for e in a.manifest.modules} for a in adapters]
    names = [clip(a.path.name, 120) for a in adapters]
    if roles[0] >= {"content", "style"} and roles[1] >= {"content", "style"}:
        report.notes.append(f"both inputs hold content and style: took the content branches of {names[0]} (the "
                            f"first) and the style branches of {names[1]} (the second)")
        return 0, 1, True
    for c, s in ((0, 1), (1, 0)):
        if "content" in roles[c] and "style" in roles[s]:
            report.notes.append(f"content branches from {names[c]}, style branches from {names[s]} (by their roles)")
            return c, s, False
    raise UsageError("cannot tell which input is content and which is style: their branches carry no such roles",
                     hint="pass --content FILE --style FILE, or tag them first (adapterctl tag FILE --role ...)")


def _computed(meth: MergeMethod, params, arch, adapters, module: str, parts, factors, report: MergeReport,
              calibration: Optional[dict]):
    first_index, first = parts[0]
    down_shape, up_shape = _stored_shapes(adapters, parts, module)
    if meth.inputs == "one":
        if first.role != "expert":
            return first, FromInput(first_index)  # plain branches of an expert file are copied
        out_features = up_shape[-2]
        limit = min(math.prod(down_shape[2:]), out_features)
        rank = meth.output_rank((down_shape, up_shape), limit)
        tails = (out_features, tuple(down_shape[2:]), ())
    else:
        out_features = up_shape[0]
        limit = min(math.prod(down_shape[1:]), out_features)
        planned, planned_stats = None, {}
        found = meth.plan([adapters[i].branch(e) for i, e in parts], factors, params, module)
        if found is not None:  # work that must precede the header (zip's mergers, svd's dynamic rank)
            planned, planned_stats = found
            report.planned.append(planned_stats)
        rank = meth.rank([e.rank for _, e in parts], limit, params, planned)
        tails = (out_features, tuple(down_shape[1:]), tuple(up_shape[2:]))
    dtypes = {writable_dtype(e.dtype) for _, e in parts}
    roles = {e.role for _, e in parts}
    role = next(iter(roles)) if len(roles) == 1 and meth.inputs != "one" else None
    entry = first.model_copy(update={
        "rank": rank, "alpha": float(rank), "scale": 1.0, "rslora": False, "alpha_dtype": None,
        "dtype": dtypes.pop() if len(dtypes) == 1 else "F32",
        "role": role, "role_source": "declared" if role else None, "experts": None, "dora": False,
        "tensors": first.tensors.model_copy(update={"alpha": None, "magnitude": None, "router_weight": None,
                                                     "router_bias": None}),
    })

    def produce():
        if meth.inputs == "one":
            from adapterctl.model.factors import read_experts

            a = adapters[first_index]
            arrays = read_experts(a.source, first, path=a.path)
            w = meth.mixture(arrays, params, module, calibration)
            merged = meth.collapse(arrays, w, first.scale * factors[0], limit)
            report.add(module, first.block, {"experts": float(len(w)), "weights_max": float(w.max())})
            return merged
        loaded = [adapters[i].branch(e) for i, e in parts]
        merged, stats = meth.merge(loaded, factors, params, module, planned=planned)
        stats = {**planned_stats, **stats}
        if merged.rank > rank:  # stacked ranks past min(in, out): the update's own rank fits, exactly
            merged = merged.truncate(rank)
        if report.measured:
            stats = {**measure(loaded, factors, merged), **stats}
        report.add(module, first.block, stats)
        return merged

    return entry, Computed(produce, *tails)


def _stored_shapes(adapters, parts, module: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The factors' stored shapes (from the files, not the architecture map), which every part
    must share apart from its rank: else the inputs are not for one base model."""
    seen = set()
    for index, entry in parts:
        tensors = adapters[index].source.tensors
        down, up = tensors[entry.tensors.down].shape, tensors[entry.tensors.up].shape
        seen.add((tuple(down[1:]), tuple(up[:1] + up[2:])) if entry.role != "expert" else (down, up))
    if len(seen) > 1:
        shapes = sorted(seen)
        raise LayoutError(f"'{clip(module, 120)}' has different shapes in the inputs ({shapes[0]} and {shapes[1]}, "
                          "after the rank); they are not adapters of one base model")
    index, entry = parts[0]
    tensors = adapters[index].source.tensors
    down, up = tensors[entry.tensors.down].shape, tensors[entry.tensors.up].shape
    # What a dense method (ties, dare) allocates is out x in: bounded by the map's module, never
    # by what a file claims. (Smaller is allowed: the tests' scaled-down SDXL models use it.)
    spec = adapters[index].arch.get(module)
    expert = entry.role == "expert"
    fan_in, fan_out = math.prod(down[2:] if expert else down[1:]), (up[-2] if expert else up[0])
    want_in = spec.in_features * (math.prod(spec.kernel) if spec.kernel else 1)
    if fan_in * fan_out > want_in * spec.out_features:
        raise LayoutError(f"'{clip(module, 120)}' is {fan_out} x {fan_in} in {clip(adapters[index].path.name, 120)} "
                          f"but {spec.out_features} x {want_in} in the {adapters[index].arch.name} map",
                          hint="'adapterctl validate' checks every branch's shape")
    return down, up


def _calibration(params, adapters) -> Optional[dict]:
    """Mean router inputs for the expert modules, read once (each a small vector)."""
    path = getattr(params, "calibration", None)
    if path is None:
        return None
    from adapterctl.io.arrays import read_array
    from adapterctl.io.safetensors_file import SafetensorsFile

    wanted = {e.module for a in adapters for e in a.manifest.modules if e.role == "expert"}
    with SafetensorsFile(path) as st:
        for name in wanted & set(st.tensors):
            if st.tensors[name].numel > 1 << 20:
                raise UsageError(f"calibration input for '{clip(name, 120)}' has {st.tensors[name].numel} values; "
                                 "a router input is one vector")
        return {name: read_array(st, name) for name in wanted & set(st.tensors)}



