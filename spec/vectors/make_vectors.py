#!/usr/bin/env python
"""Generate the adapterctl conformance vectors (see README.md in this directory).

    python spec/vectors/make_vectors.py              # rewrite every vector and expected file here
    python spec/vectors/make_vectors.py --out DIR    # somewhere else

Everything is deterministic: tensor values come from integer arithmetic (no RNG whose algorithm
could change between numpy versions), headers carry fixed metadata, and the one vector produced
by adapterctl's own writer has its dates and timestamps pinned afterwards. So a regeneration must
reproduce these bytes exactly, and a test checks that it does.

Expected files: for an invalid vector the expectation is written here by hand (error code, exit
code, a fragment of the message); for a valid one it is the recorded ``adapterctl inspect NAME
--json`` output without the ``path`` field, so a change in what inspect reports shows up as a diff
to review.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from adapterctl.arch import load_arch  # noqa: E402
from adapterctl.format.manifest import Manifest  # noqa: E402
from adapterctl.io.safetensors_file import SafetensorsFile  # noqa: E402
from adapterctl.io.writer import OutTensor, write_safetensors  # noqa: E402

FIXED_DATE = "2025-01-01"
FIXED_TIME = "2025-01-01T00:00:00+00:00"
EXPECTED_SUFFIX = ".expected.json"

ARCH = load_arch("sdxl")

# Real SDXL module names from the architecture map; small ones, so each vector stays a few KB.
Q640 = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # 640 -> 640, SGM input_blocks.4.1
K2048 = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"  # 2048 -> 640
SKIP = "unet.down_blocks.1.resnets.0.conv_shortcut"  # conv 1x1, 320 -> 640
CONV_IN = "unet.conv_in"  # conv 3x3, 4 -> 320
TE1_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"  # 768 -> 768
BLORA_CONTENT = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 1280 -> 1280
BLORA_STYLE = "unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"


# -- deterministic tensor bytes -----------------------------------------------------------------

def _values(count: int, seed: int) -> list[float]:
    # A multiplicative hash of the index: spread-out small values, exact in fp16, identical everywhere.
    return [(((i + 1) * 2654435761 + seed * 40503) % 2001 - 1000) / 32768 for i in range(count)]


def _pack(dtype: str, values: list[float]) -> bytes:
    fmt = {"F16": "e", "F32": "f"}[dtype]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def tensor(name: str, shape: tuple[int, ...], seed: int, dtype: str = "F16") -> OutTensor:
    count = 1
    for d in shape:
        count *= d
    return OutTensor.from_bytes(name, dtype, shape, _pack(dtype, _values(count, seed)))


def scalar(name: str, dtype: str, value: float) -> OutTensor:
    fmt = {"F16": "<e", "F32": "<f", "I64": "<q", "BF16": None}[dtype]
    if dtype == "BF16":
        raw = struct.pack("<f", value)[2:]  # exact for the small values used here
    else:
        raw = struct.pack(fmt, int(value) if dtype == "I64" else value)
    return OutTensor.from_bytes(name, dtype, (), raw)


def factors(module: str, rank: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    spec = ARCH.get(module)
    assert spec is not None, module
    if spec.kernel:
        return (rank, spec.in_features, *spec.kernel), (spec.out_features, rank, 1, 1)
    return (rank, spec.in_features), (spec.out_features, rank)


def pair(module: str, rank: int, seed: int, down: str, up: str) -> list[OutTensor]:
    d, u = factors(module, rank, seed)
    return [tensor(down, d, seed), tensor(up, u, seed + 1)]


def kohya(module: str, *, sgm: bool = True) -> str:
    return ARCH.kohya_name(module, sgm=sgm)


def diffusers(module: str) -> str:
    return module  # canonical names are already "<component>.<path>"


# -- raw files, for headers no writer would produce --------------------------------------------

def raw_file(path: Path, header: dict | bytes, data: bytes = b"", *, header_len: int | None = None) -> None:
    body = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    n = len(body) if header_len is None else header_len
    path.write_bytes(n.to_bytes(8, "little") + body + data)


def _entry(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


# -- valid vectors ----------------------------------------------------------------------------

KOHYA_META = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "2",
    "ss_network_alpha": "1.0",
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_output_name": "valid_kohya_sgm_locon",
}


def valid_kohya_sgm_locon(out: Path) -> None:
    """kohya, SGM names, LoCon: a linear, a 1x1 and a 3x3 conv, one TE1 layer; alphas in F16."""
    tensors = []
    for seed, (module, rank, alpha) in enumerate([(CONV_IN, 1, 1.0), (SKIP, 2, 1.0), (Q640, 2, 1.0),
                                                  (TE1_Q, 1, 0.5)]):
        base = kohya(module)
        tensors.append(scalar(f"{base}.alpha", "F16", alpha))
        tensors += pair(module, rank, 10 * seed, f"{base}.lora_down.weight", f"{base}.lora_up.weight")
    write_safetensors(out / "valid_kohya_sgm_locon.safetensors", tensors, dict(KOHYA_META), force=True)


def valid_kohya_diffusers_names(out: Path) -> None:
    """kohya prefix with diffusers module names; one alpha stored as I64, one missing (alpha = rank)."""
    a, b = kohya(Q640, sgm=False), kohya(K2048, sgm=False)
    tensors = [scalar(f"{a}.alpha", "I64", 1)]
    tensors += pair(Q640, 2, 1, f"{a}.lora_down.weight", f"{a}.lora_up.weight")
    tensors += pair(K2048, 1, 3, f"{b}.lora_down.weight", f"{b}.lora_up.weight")
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"}
    write_safetensors(out / "valid_kohya_diffusers_names.safetensors", tensors, meta, force=True)


def valid_diffusers_metadata(out: Path) -> None:
    """diffusers lora_A/lora_B with lora_adapter_metadata; a rank_pattern/alpha_pattern exception."""
    tensors = pair(Q640, 2, 5, f"{Q640}.lora_A.weight", f"{Q640}.lora_B.weight")
    tensors += pair(K2048, 1, 7, f"{K2048}.lora_A.weight", f"{K2048}.lora_B.weight")
    tensors += pair(TE1_Q, 2, 9, f"{TE1_Q}.lora_A.weight", f"{TE1_Q}.lora_B.weight")
    k_path = ARCH.get(K2048).path
    config = {
        "unet.r": 2, "unet.lora_alpha": 4.0, "unet.rank_pattern": {k_path: 1}, "unet.alpha_pattern": {k_path: 1.0},
        "unet.target_modules": sorted([ARCH.get(Q640).path, k_path]), "unet.use_rslora": False,
        "unet.use_dora": False,
        # Text-encoder paths in this metadata omit "text_model." (spec/FORMAT.md §8).
        "text_encoder.r": 2, "text_encoder.lora_alpha": 2.0,
        "text_encoder.target_modules": [ARCH.get(TE1_Q).path.removeprefix("text_model.")],
    }
    meta = {"lora_adapter_metadata": json.dumps(config, sort_keys=True, separators=(",", ":"))}
    write_safetensors(out / "valid_diffusers_metadata.safetensors", tensors, meta, force=True)


def _blora_tensors(prefix: str) -> list[OutTensor]:
    tensors = []
    for seed, module in ((11, BLORA_CONTENT), (13, BLORA_STYLE)):
        path = ARCH.get(module).path
        tensors += pair(module, 1, seed, f"{prefix}{path}.lora.down.weight", f"{prefix}{path}.lora.up.weight")
    return tensors


def valid_blora_old_diffusers(out: Path) -> None:
    """The official B-LoRA output shape (old diffusers naming, no alpha), one module per block: roles inferred."""
    write_safetensors(out / "valid_blora_old_diffusers.safetensors", _blora_tensors("unet."), {}, force=True)


def valid_blora_doubled_prefix(out: Path) -> None:
    """Same, with the doubled 'unet.unet.' prefix some published B-LoRA files carry."""
    write_safetensors(out / "valid_blora_doubled_prefix.safetensors", _blora_tensors("unet.unet."), {}, force=True)


def valid_tagged_adapterctl(out: Path) -> None:
    """adapterctl's own output: B-LoRA tagged with the preset and converted to diffusers (stored manifest).

    Written by the library, then its date and operation timestamps are pinned and the same tensors
    rewritten with that metadata, so the file is reproducible while the manifest stays the library's.
    """
    from adapterctl.adapter import Adapter

    name = "valid_tagged_adapterctl.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        with Adapter.open(out / "valid_blora_old_diffusers.safetensors") as adapter:
            adapter.tag(preset="b-lora").convert("diffusers").save(Path(tmp) / name)
        _pin_volatile(Path(tmp) / name, out / name)


def valid_merged_cat(out: Path) -> None:
    """adapterctl's merge output: two vectors merged with 'cat' (weights 1 and 0.5). The shared
    module is computed (rank 2 + 2), the others are copied; provenance lists both inputs and the
    merge operation with its 'inputs' indices. cat is elementwise arithmetic, so the bytes do not
    depend on the machine's BLAS."""
    import adapterctl

    name = "valid_merged_cat.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        with adapterctl.open(out / "valid_kohya_sgm_locon.safetensors") as a, \
                adapterctl.open(out / "valid_kohya_diffusers_names.safetensors") as b:
            adapterctl.merge([a, b], "cat", weights=[1.0, 0.5]).save(Path(tmp) / name)
        _pin_volatile(Path(tmp) / name, out / name)


def _pin_volatile(src: Path, dst: Path, edit: Callable[[dict], None] | None = None) -> None:
    with SafetensorsFile(src) as st:
        meta = dict(st.metadata)
        meta["modelspec.date"] = FIXED_DATE
        manifest = json.loads(meta["adapterctl.manifest"])
        for op in manifest["provenance"]["operations"]:
            op["at"] = FIXED_TIME
        if edit is None:
            meta["adapterctl.manifest"] = Manifest.model_validate(manifest).to_json()
        else:  # a deliberately wrong manifest: keep it as plain JSON, the models might refuse it
            edit(manifest)
            meta["adapterctl.manifest"] = json.dumps(manifest, separators=(",", ":"))
        order = sorted(st.tensors.values(), key=lambda t: t.start)
        write_safetensors(dst, [OutTensor.copy(st, t.name) for t in order], meta, force=True)


def valid_content_style_same_module(out: Path) -> None:
    """Two roles on one module, as role-qualified peft adapter slots: lora_A.content / lora_A.style."""
    tensors = []
    for seed, role in ((21, "content"), (23, "style")):
        tensors += pair(Q640, 2, seed, f"{Q640}.lora_A.{role}.weight", f"{Q640}.lora_B.{role}.weight")
    tensors += pair(K2048, 1, 25, f"{K2048}.lora_A.style.weight", f"{K2048}.lora_B.style.weight")
    write_safetensors(out / "valid_content_style_same_module.safetensors", tensors, {}, force=True)


def valid_expert_styleinject(out: Path) -> None:
    """StyleInject-shaped experts: A [n, r, in], B [out, r] shared or [n, out, r], router [n, d] + [n]."""
    spec = ARCH.get(Q640)
    n, r = 2, 1
    tensors = [
        tensor(f"{Q640}.lora_experts_A.weight", (n, r, spec.in_features), 31),
        tensor(f"{Q640}.lora_experts_B.weight", (spec.out_features, r), 32),
        tensor(f"{Q640}.lora_router.bias", (n,), 33),
        tensor(f"{Q640}.lora_router.weight", (n, spec.in_features), 34),
    ]
    k = ARCH.get(K2048)
    tensors += [
        tensor(f"{K2048}.lora_experts_A.weight", (n, r, k.in_features), 35),
        tensor(f"{K2048}.lora_experts_B.weight", (n, k.out_features, r), 36),
        tensor(f"{K2048}.lora_router.bias", (n,), 37),
        tensor(f"{K2048}.lora_router.weight", (n, k.in_features), 38),
    ]
    write_safetensors(out / "valid_expert_styleinject.safetensors", tensors, {}, force=True)


def valid_peft_dir(out: Path) -> None:
    """A peft adapter directory: adapter_model.safetensors + adapter_config.json (UNet only)."""
    d = out / "valid_peft_dir"
    d.mkdir(exist_ok=True)
    tensors = []
    for seed, module in ((41, Q640), (43, K2048)):
        path = ARCH.get(module).path
        tensors += pair(module, 2, seed, f"base_model.model.{path}.lora_A.weight",
                        f"base_model.model.{path}.lora_B.weight")
    write_safetensors(d / "adapter_model.safetensors", tensors, {"format": "pt"}, force=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 1, "target_modules": ["to_q", "to_k"],
              "rank_pattern": {}, "alpha_pattern": {}, "use_rslora": False, "use_dora": False,
              "lora_dropout": 0.0, "bias": "none", "task_type": None}
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def valid_lycoris_loha(out: Path) -> None:
    """A LyCORIS LoHa file: readable, detected and reported (and refused by convert)."""
    tensors = []
    for seed, module in ((51, Q640), (55, TE1_Q)):
        spec, base = ARCH.get(module), kohya(module)
        r = 2
        tensors.append(scalar(f"{base}.alpha", "F16", 1.0))
        tensors += [tensor(f"{base}.hada_w1_a", (spec.out_features, r), seed),
                    tensor(f"{base}.hada_w1_b", (r, spec.in_features), seed + 1),
                    tensor(f"{base}.hada_w2_a", (spec.out_features, r), seed + 2),
                    tensor(f"{base}.hada_w2_b", (r, spec.in_features), seed + 3)]
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha"}),
            "ss_base_model_version": "sdxl_base_v1-0"}
    write_safetensors(out / "valid_lycoris_loha.safetensors", tensors, meta, force=True)


def valid_control_chars(out: Path) -> None:
    """Untrusted strings: ESC sequences, a BEL, bidi overrides and C1 controls in metadata and in a key."""
    base = kohya(Q640)
    tensors = pair(Q640, 1, 61, f"{base}.lora_down.weight", f"{base}.lora_up.weight")
    tensors.append(tensor("lora_unet_\x1b[2J\u202eevil.lora_down.weight", (1, 4), 62))
    tensors.append(tensor("lora_unet_\x1b[2J\u202eevil.lora_up.weight", (4, 1), 63))
    meta = {"modelspec.title": "\x1b[31mred\x1b[0m \u202etxt.exe", "ss_output_name": "bell\x07\x9b1m",
            "note\x1b]0;pwned\x07": "\u2066isolate\u2069 line\u2028break"}
    write_safetensors(out / "valid_control_chars.safetensors", tensors, meta, force=True)


VALID: list[Callable[[Path], None]] = [
    valid_kohya_sgm_locon, valid_kohya_diffusers_names, valid_diffusers_metadata, valid_blora_old_diffusers,
    valid_blora_doubled_prefix, valid_tagged_adapterctl, valid_content_style_same_module,
    valid_expert_styleinject, valid_peft_dir, valid_lycoris_loha, valid_control_chars, valid_merged_cat,
]


# -- invalid vectors ----------------------------------------------------------------------------

def _small_header(extra: dict | None = None, **over) -> tuple[dict, bytes]:
    """A well-formed one-module kohya header (2 tensors, F16) plus its data, to be broken by the caller."""
    base = kohya(Q640)
    down = {"dtype": "F16", "shape": [1, 640], "data_offsets": [0, 1280]}
    up = {"dtype": "F16", "shape": [640, 1], "data_offsets": [1280, 2560]}
    header = {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up}
    header.update(extra or {})
    return header, _pack("F16", _values(1280, 71))


def invalid_truncated(out: Path) -> None:
    # A whole valid file, cut 100 bytes before its end (an interrupted download).
    full = out / "valid_kohya_sgm_locon.safetensors"
    data = full.read_bytes()
    (out / "invalid_truncated.safetensors").write_bytes(data[:-100])


def invalid_truncated_length(out: Path) -> None:
    (out / "invalid_truncated_length.safetensors").write_bytes(b"\x10\x00\x00")


def invalid_header_len_gt_file(out: Path) -> None:
    header, data = _small_header()
    raw_file(out / "invalid_header_len_gt_file.safetensors", header, data, header_len=1 << 20)


def invalid_header_over_cap(out: Path) -> None:
    # Only the 8-byte length claims the cap + 1 byte; nothing of that size is ever allocated.
    raw_file(out / "invalid_header_over_cap.safetensors", b"{}", header_len=100_000_000 + 1)


def invalid_json(out: Path) -> None:
    raw_file(out / "invalid_json.safetensors", b'{"lora_unet_x.lora_down.weight": {"dtype": "F16",', b"")


def invalid_duplicate_keys(out: Path) -> None:
    header, data = _small_header()
    text = json.dumps(header, separators=(",", ":"))
    first = next(iter(header))
    dup = text[:-1] + "," + json.dumps(first) + ":" + json.dumps(header[first], separators=(",", ":")) + "}"
    raw_file(out / "invalid_duplicate_keys.safetensors", dup.encode(), data)


def invalid_offsets_out_of_range(out: Path) -> None:
    header, data = _small_header()
    up = header[f"{kohya(Q640)}.lora_up.weight"]
    up["data_offsets"] = [1280 + 4096, 2560 + 4096]
    raw_file(out / "invalid_offsets_out_of_range.safetensors", header, data)


def invalid_overlapping_offsets(out: Path) -> None:
    header, data = _small_header()
    up = header[f"{kohya(Q640)}.lora_up.weight"]
    up["data_offsets"] = [640, 1920]
    raw_file(out / "invalid_overlapping_offsets.safetensors", header, data[:1920])


def invalid_unknown_dtype(out: Path) -> None:
    header, data = _small_header()
    header[f"{kohya(Q640)}.lora_down.weight"]["dtype"] = "Q4_K"
    raw_file(out / "invalid_unknown_dtype.safetensors", header, data)


def invalid_shape_size_mismatch(out: Path) -> None:
    header, data = _small_header()
    header[f"{kohya(Q640)}.lora_down.weight"]["shape"] = [2, 640]
    raw_file(out / "invalid_shape_size_mismatch.safetensors", header, data)


def invalid_trailing_bytes(out: Path) -> None:
    header, data = _small_header()
    raw_file(out / "invalid_trailing_bytes.safetensors", header, data + b"\0" * 16)


def invalid_zero_length(out: Path) -> None:
    (out / "invalid_zero_length.safetensors").write_bytes(b"")


def _pickle_bytes() -> bytes:
    # Plain data, protocol 2: the bytes start with PROTO 2 like old torch.save output. Never loaded.
    return pickle.dumps({"state_dict": {"lora_unet_x.lora_down.weight": [0.0, 1.0]}, "epoch": 1}, protocol=2)


def invalid_pickle_ckpt(out: Path) -> None:
    (out / "invalid_pickle.ckpt").write_bytes(_pickle_bytes())


def invalid_pickle_renamed(out: Path) -> None:
    # What torch.save writes since 1.6: a zip archive holding data.pkl. Fixed date for stable bytes.
    path = out / "invalid_pickle_renamed.safetensors"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("archive/data.pkl", date_time=(2025, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, _pickle_bytes())


def invalid_rank_mismatch(out: Path) -> None:
    base = kohya(Q640)
    tensors = [tensor(f"{base}.lora_down.weight", (2, 640), 81), tensor(f"{base}.lora_up.weight", (640, 3), 82)]
    write_safetensors(out / "invalid_rank_mismatch.safetensors", tensors, {}, force=True)


def invalid_unknown_arch_modelspec(out: Path) -> None:
    base = kohya(Q640)
    tensors = pair(Q640, 1, 83, f"{base}.lora_down.weight", f"{base}.lora_up.weight")
    meta = {"modelspec.sai_model_spec": "1.0.1", "modelspec.architecture": "stable-diffusion-v1/lora"}
    write_safetensors(out / "invalid_unknown_arch_modelspec.safetensors", tensors, meta, force=True)


def invalid_unknown_arch_sd15_names(out: Path) -> None:
    # SD1.5 has attention in down_blocks.0 (320 wide, 768-wide text context); SDXL does not.
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = [tensor(f"{base}.lora_down.weight", (1, 768), 85), tensor(f"{base}.lora_up.weight", (320, 1), 86)]
    write_safetensors(out / "invalid_unknown_arch_sd15_names.safetensors", tensors, {}, force=True)


def invalid_manifest_disagrees(out: Path) -> None:
    def wrong_rank(manifest: dict) -> None:
        manifest["modules"][0]["rank"] = 4

    _pin_volatile(out / "valid_tagged_adapterctl.safetensors", out / "invalid_manifest_disagrees.safetensors",
                  wrong_rank)


# name -> (writer, expected error). Exit codes are adapterctl.errors': 2 input, 3 invalid/unsafe
# file, 4 unknown architecture / layout.
INVALID: dict[str, tuple[Callable[[Path], None], dict]] = {
    "invalid_truncated": (invalid_truncated, {
        "code": "invalid_file", "exit": 3, "message_contains": "file truncated or offsets out of range"}),
    "invalid_truncated_length": (invalid_truncated_length, {
        "code": "invalid_file", "exit": 3, "message_contains": "shorter than the 8-byte header length"}),
    "invalid_header_len_gt_file": (invalid_header_len_gt_file, {
        "code": "invalid_file", "exit": 3, "message_contains": "is larger than the file"}),
    "invalid_header_over_cap": (invalid_header_over_cap, {
        "code": "invalid_file", "exit": 3, "message_contains": "exceeds the 100000000-byte cap"}),
    "invalid_json": (invalid_json, {
        "code": "invalid_file", "exit": 3, "message_contains": "header is not valid JSON"}),
    "invalid_duplicate_keys": (invalid_duplicate_keys, {
        "code": "invalid_file", "exit": 3, "message_contains": "duplicate key"}),
    "invalid_offsets_out_of_range": (invalid_offsets_out_of_range, {
        "code": "invalid_file", "exit": 3, "message_contains": "offsets out of range"}),
    "invalid_overlapping_offsets": (invalid_overlapping_offsets, {
        "code": "invalid_file", "exit": 3, "message_contains": "overlaps"}),
    "invalid_unknown_dtype": (invalid_unknown_dtype, {
        "code": "invalid_file", "exit": 3, "message_contains": "unknown dtype"}),
    "invalid_shape_size_mismatch": (invalid_shape_size_mismatch, {
        "code": "invalid_file", "exit": 3, "message_contains": "needs 2560 bytes but its offsets span 1280"}),
    "invalid_trailing_bytes": (invalid_trailing_bytes, {
        "code": "invalid_file", "exit": 3, "message_contains": "16 trailing bytes"}),
    "invalid_zero_length": (invalid_zero_length, {
        "code": "invalid_file", "exit": 3, "message_contains": "empty file"}),
    "invalid_pickle": (invalid_pickle_ckpt, {
        "code": "unsafe_file", "exit": 3, "message_contains": "never unpickles"}),
    "invalid_pickle_renamed": (invalid_pickle_renamed, {
        "code": "unsafe_file", "exit": 3, "message_contains": "pickle"}),
    "invalid_rank_mismatch": (invalid_rank_mismatch, {
        "code": "layout_error", "exit": 4, "message_contains": "rank mismatch"}),
    "invalid_unknown_arch_modelspec": (invalid_unknown_arch_modelspec, {
        "code": "unknown_architecture", "exit": 4, "message_contains": "stable-diffusion-v1"}),
    "invalid_unknown_arch_sd15_names": (invalid_unknown_arch_sd15_names, {
        "code": "unknown_architecture", "exit": 4, "message_contains": "match the sdxl map"}),
    "invalid_manifest_disagrees": (invalid_manifest_disagrees, {
        "code": "invalid_file", "exit": 3, "message_contains": "rank 4 in the manifest"}),
}


# -- driver -------------------------------------------------------------------------------------

def vector_name(path: Path) -> str:
    """'x.safetensors' / 'x.ckpt' / directory 'x' -> 'x' (the stem of its expected file)."""
    return path.name if path.is_dir() else path.name.split(".", 1)[0]


def write_vectors(out: Path) -> list[Path]:
    """Write every vector file and the (hand-written) invalid expectations; return the vector paths."""
    out.mkdir(parents=True, exist_ok=True)
    for make in VALID:  # invalid ones derive from some valid ones, so these come first
        make(out)
    for name, (make, error) in INVALID.items():
        make(out)
        (out / f"{name}{EXPECTED_SUFFIX}").write_text(json.dumps({"error": error}, indent=2) + "\n", encoding="utf-8")
    return vector_paths(out)


def vector_paths(directory: Path) -> list[Path]:
    names = [f.__name__ for f in VALID] + list(INVALID)
    found = {vector_name(p): p for p in directory.iterdir()
             if (p.is_dir() or p.suffix in (".safetensors", ".ckpt")) and not p.name.startswith(".")}
    return [found[n] for n in names]


def cli_inspect(path: Path) -> tuple[int, str, str]:
    """Run the real CLI on one vector from inside its directory, so the reported path is relative."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "adapterctl.cli.main", "inspect", path.name, "--json"],
                          cwd=path.parent, env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def recorded(stdout: str) -> dict:
    report = json.loads(stdout)
    report.pop("path", None)  # depends on how the CLI was called
    return report


def record_valid_expectations(out: Path) -> None:
    for path in vector_paths(out):
        name = vector_name(path)
        if name in INVALID:
            continue
        rc, stdout, stderr = cli_inspect(path)
        if rc != 0:
            raise SystemExit(f"{name}: adapterctl inspect failed ({rc}): {stderr.strip()}")
        text = json.dumps(recorded(stdout), indent=2, ensure_ascii=False) + "\n"
        (out / f"{name}{EXPECTED_SUFFIX}").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--no-record", action="store_true",
                        help="write the vectors only; keep the valid vectors' expected files as they are")
    args = parser.parse_args(argv)
    paths = write_vectors(args.out)
    if not args.no_record:
        record_valid_expectations(args.out)
    for p in paths:
        size = sum(f.stat().st_size for f in p.iterdir()) if p.is_dir() else p.stat().st_size
        print(f"{p.name:45s} {size:8d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
