"""Training checkpoints: one safetensors file, never a pickle.

A checkpoint holds everything the next step depends on, so a resumed run continues the exact
trajectory of an uninterrupted one (bit for bit on a CPU, tested): the LoRA parameters (and
UnZipLoRA's mergers and column masks), the optimizer's state tensors, the step generator's
state, and the loss history. Its metadata carries the configuration fingerprint: resuming
under any other configuration, image or base model is refused, with the fields that differ.

Reading one is bounded like every other file we read: the header is parsed by the same
hardened reader, and every tensor must have exactly the name, shape and dtype the live run
expects, so a file cannot make us allocate more than the run itself does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from adapterctl.errors import InvalidFile, UsageError
from adapterctl.io.atomic import atomic_write
from adapterctl.textsafe import clip

FORMAT = "adapterctl.train-checkpoint/1"
_GENERATOR = "__generator_state__"


@dataclass
class TrainState:
    """What a checkpoint restores, besides the parameters it writes into in place."""

    step: int
    losses: list[float]


def save_checkpoint(path: Path, *, step: int, fingerprint: dict, losses: list[float],
                    tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    params: list[tuple[str, torch.nn.Parameter]], generator: torch.Generator) -> Path:
    from safetensors.torch import save

    data = {f"param.{name}": t.detach().cpu().contiguous() for name, t in tensors.items()}
    scalars: dict[str, dict[str, float]] = {}
    for name, param in params:
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                data[f"optim.{name}.{key}"] = value.detach().cpu().contiguous()
            else:  # AdamW's step count: a 0-d tensor or a number; exact as a float64
                scalars.setdefault(name, {})[key] = float(value)
    data[_GENERATOR] = generator.get_state()
    meta = {"format": FORMAT, "step": str(step), "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "losses": json.dumps(losses), "optimizer_scalars": json.dumps(scalars)}
    blob = save(data, metadata=meta)
    with atomic_write(path, force=True) as fh:
        fh.write(blob)
    return path


def check_checkpoint(path: Path, fingerprint: dict, *, unknown: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint of another run before anything is loaded: its format, and every field
    of its fingerprint but ``unknown`` (what only loading the base model tells, its revision)."""
    _, _ = _open_checked(path, fingerprint, unknown)


def _open_checked(path: Path, fingerprint: dict, unknown: tuple[str, ...] = ()):
    from adapterctl.errors import AdapterError
    from adapterctl.io.safetensors_file import SafetensorsFile

    try:
        st = SafetensorsFile(path)
    except AdapterError as exc:
        raise InvalidFile(f"not a training checkpoint: {exc.message}", path=str(path)) from None
    try:
        meta = dict(st.metadata)
        if meta.get("format") != FORMAT:
            raise InvalidFile("not an adapterctl training checkpoint", path=str(path),
                              hint="--resume takes the .ckpt.safetensors file a run wrote")
        try:
            saved = json.loads(meta["fingerprint"])
            if not isinstance(saved, dict):
                raise TypeError("fingerprint is not an object")
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidFile(f"damaged checkpoint metadata ({clip(str(exc), 120)})", path=str(path)) from None
        differs = sorted(k for k in set(saved) | set(fingerprint)
                         if k not in unknown and saved.get(k) != fingerprint.get(k))
        if differs:
            shown = ", ".join(f"{k} {clip(repr(saved.get(k)), 60)} -> {clip(repr(fingerprint.get(k)), 60)}"
                              for k in differs[:4])
            raise UsageError(f"the checkpoint is from another configuration ({shown})",
                             hint="resume with the same image, base model and flags (only --steps may change)")
    except BaseException:
        st.close()
        raise
    st.close()
    return saved, meta


def load_checkpoint(path: Path, *, fingerprint: dict, tensors: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, params: list[tuple[str, torch.nn.Parameter]],
                    generator: torch.Generator) -> TrainState:
    """Restore into the live ``tensors``, ``optimizer`` and ``generator``; returns the step reached."""
    from adapterctl.io.safetensors_file import SafetensorsFile

    _open_checked(path, fingerprint)
    st = SafetensorsFile(path)
    try:
        meta = dict(st.metadata)
        try:
            step = int(meta["step"])
            losses = [float(x) for x in json.loads(meta["losses"])]
            scalars = json.loads(meta["optimizer_scalars"])
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidFile(f"damaged checkpoint metadata ({clip(str(exc), 120)})", path=str(path)) from None
        if not 0 <= step or len(losses) != step:
            raise InvalidFile("damaged checkpoint: its step count and loss history disagree", path=str(path))
        expected = {f"param.{n}": t for n, t in tensors.items()}
        expected[_GENERATOR] = generator.get_state()
        missing = sorted(set(expected) - set(st.tensors))
        by_name = dict(params)
        optim_keys = {}
        for key in st.tensors:
            if key in expected:
                continue
            name, _, part = key.removeprefix("optim.").rpartition(".")
            # Optimizer state is whatever the optimizer keeps (AdamW: two moments; 8-bit AdamW: quantized
            # moments and their scales), but never more than a few times its parameter's size.
            if not key.startswith("optim.") or name not in by_name or not part.isidentifier() \
                    or st.tensors[key].nbytes > 8 * by_name[name].numel() + 65536:
                raise InvalidFile(f"the checkpoint holds '{clip(key, 100)}', which this run does not have",
                                  path=str(path), hint="resume with the same method, rank and blocks")
            optim_keys[key] = (name, part)
        if missing:
            raise InvalidFile(f"the checkpoint lacks {len(missing)} tensors of this run (first: "
                              f"'{clip(missing[0], 100)}')", path=str(path))
        loaded = {}
        for key, like in expected.items():
            info = st.tensors[key]
            if tuple(info.shape) != tuple(like.shape) or info.dtype != _st_dtype(like.dtype):
                raise InvalidFile(f"checkpoint tensor '{clip(key, 100)}' is {info.dtype}{list(info.shape)}, this "
                                  f"run needs {_st_dtype(like.dtype)}{list(like.shape)}", path=str(path))
            loaded[key] = _read(st, key, like.dtype, like.shape)
        optim_state: dict[str, dict[str, torch.Tensor]] = {}
        for key, (name, part) in optim_keys.items():
            info = st.tensors[key]
            dtype = _TORCH_DTYPES.get(info.dtype)
            if dtype is None:
                raise InvalidFile(f"checkpoint tensor '{clip(key, 100)}' has dtype {info.dtype}", path=str(path))
            optim_state.setdefault(name, {})[part] = _read(st, key, dtype, info.shape)
    finally:
        st.close()
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(loaded[f"param.{name}"])
    for name, param in params:
        state = {key: value.to(param.device) for key, value in optim_state.get(name, {}).items()}
        for key, value in scalars.get(name, {}).items():
            state[key] = torch.tensor(float(value), dtype=torch.float32)
        if state:
            optimizer.state[param] = state
    generator.set_state(loaded[_GENERATOR])
    return TrainState(step=step, losses=losses)


_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U8": torch.uint8,
                 "I64": torch.int64, "F64": torch.float64, "BOOL": torch.bool, "I8": torch.int8,
                 "I32": torch.int32}


def _st_dtype(dtype: torch.dtype) -> str:
    return next(name for name, t in _TORCH_DTYPES.items() if t == dtype)


def _read(st, key: str, dtype: torch.dtype, shape) -> torch.Tensor:
    raw = st.read(key)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(tuple(shape)).clone()
