"""Tensor bytes as numpy arrays, for the few commands that compute (torch is never needed)."""

from __future__ import annotations

import numpy as np

from adapterctl.io.safetensors_file import SafetensorsFile

_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "U16": np.uint16,
          "U32": np.uint32, "U64": np.uint64}

# Non-finite values by bit pattern: (unsigned view, exponent mask, value meaning inf or NaN).
# An all-ones exponent is inf/NaN in the IEEE formats (F16, BF16, F32, F64, and 8-bit e5m2);
# e4m3fn (torch.float8_e4m3fn, safetensors F8_E4M3) has no infinity and one NaN per sign,
# S.1111.111. Integer masks need no float conversion, so they raise no warning and run in C.
_NONFINITE = {
    "F8_E4M3": ("u1", 0x7F, 0x7F),
    "F8_E5M2": ("u1", 0x7C, 0x7C),
    "F16": ("<u2", 0x7C00, 0x7C00),
    "BF16": ("<u2", 0x7F80, 0x7F80),
    "F32": ("<u4", 0x7F800000, 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000, 0x7FF0000000000000),
}


def _e4m3fn_table() -> np.ndarray:
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 0x7
    normal = (1 + mantissa / 8) * np.exp2(exponent - 7.0)
    subnormal = (mantissa / 8) * 2.0 ** -6
    values = sign * np.where(exponent == 0, subnormal, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values.astype(np.float32)


def read_array(st: SafetensorsFile, name: str) -> np.ndarray:
    """The tensor as a numpy array; bf16 and 8-bit floats are widened to float32 exactly."""
    info = st.tensors[name]
    raw = st.read(name)
    if info.dtype == "BF16":
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif info.dtype == "F8_E5M2":  # the top byte of a float16
        arr = (np.frombuffer(raw, dtype=np.uint8).astype(np.uint16) << 8).view("<f2")
    elif info.dtype == "F8_E4M3":
        arr = _e4m3fn_table()[np.frombuffer(raw, dtype=np.uint8)]
    elif info.dtype in _NUMPY:
        arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY[info.dtype]).newbyteorder("<"))
    else:
        raise ValueError(f"{info.dtype} tensors cannot be read as numbers here")
    return arr.reshape(info.shape)


def nonfinite_in_bytes(raw: bytes, dtype: str) -> int:
    """NaN and Inf values among the little-endian ``dtype`` values in ``raw`` (0 for non-float dtypes)."""
    spec = _NONFINITE.get(dtype)
    if spec is None or not raw:
        return 0
    view, mask, value = spec
    bits = np.frombuffer(raw, dtype=view)
    masked = bits & bits.dtype.type(mask)
    # The mask's own value is the largest a masked element can take, so one max() answers the
    # common case (all finite) without a second temporary array.
    if masked.max() < value:
        return 0
    return int(np.count_nonzero(masked == bits.dtype.type(value)))


def count_nonfinite(st: SafetensorsFile, name: str) -> int:
    """NaN and Inf values in a tensor of any float dtype, F8 included (0 for integer dtypes)."""
    return nonfinite_in_bytes(st.read(name), st.tensors[name].dtype)


class FiniteCheck:
    """Counts NaN/Inf values in the float tensors a writer copies, chunk by chunk, so that an
    output ``validate`` would fail can be refused before it is named.

    It runs in the copy loop itself: about 0.1 ms per MiB, while a worker thread of its own
    cost far more in GIL hand-offs on small chunks (convert of a 487 MB file: +0.4 s).
    """

    def __init__(self):
        self.bad: dict[str, int] = {}

    def update(self, name: str, dtype: str, data: bytes) -> None:
        found = nonfinite_in_bytes(data, dtype)
        if found:
            self.bad[name] = self.bad.get(name, 0) + found


# dtypes a computed tensor can be written in; others (integers, 8-bit floats) are not LoRA factor dtypes
# worth rounding into, and a computed factor in one of them is written as F32 instead.
WRITABLE_FLOATS = ("F16", "BF16", "F32", "F64")


def writable_dtype(dtype: str) -> str:
    return dtype if dtype in WRITABLE_FLOATS else "F32"


def to_bytes(arr: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of ``arr`` in a safetensors float dtype; bf16 rounds to nearest even."""
    if dtype == "BF16":
        bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
        # NaN must stay NaN (rounding could carry it into inf): keep its top half as is.
        rounded = np.where((bits & 0x7F800000) == 0x7F800000, bits, rounded)
        return (rounded >> 16).astype("<u2").tobytes()
    if dtype not in ("F16", "F32", "F64"):
        raise ValueError(f"cannot write computed values as {dtype}")
    return np.ascontiguousarray(arr, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<")).tobytes()
