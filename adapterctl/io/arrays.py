"""Tensor bytes as numpy arrays, for the few commands that compute (torch is never needed)."""

from __future__ import annotations

import numpy as np

from adapterctl.io.safetensors_file import SafetensorsFile

_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "U16": np.uint16,
          "U32": np.uint32, "U64": np.uint64}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# 8-bit floats as loaders define them (torch.float8_e4m3fn, float8_e5m2): bit masks of non-finite
# values. e4m3fn has no infinity and one NaN pattern per sign (S.1111.111); e5m2 follows IEEE,
# so an all-ones exponent (S.11111.xx) is inf or NaN.
_F8_NONFINITE = {"F8_E4M3": (0x7F, 0x7F), "F8_E5M2": (0x7C, 0x7C)}
CHECKED_FLOAT_DTYPES = FLOAT_DTYPES + tuple(_F8_NONFINITE)


def read_array(st: SafetensorsFile, name: str) -> np.ndarray:
    """The tensor as a numpy array; bf16 is widened to float32 exactly."""
    info = st.tensors[name]
    raw = st.read(name)
    if info.dtype == "BF16":
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif info.dtype in _NUMPY:
        arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY[info.dtype]).newbyteorder("<"))
    else:
        raise ValueError(f"{info.dtype} tensors cannot be read as numbers here")
    return arr.reshape(info.shape)


def as_matrix(arr: np.ndarray) -> np.ndarray:
    """LoRA factor as a 2-D float64 matrix: conv [r, in, kh, kw] -> [r, in*kh*kw]; up [out, r, 1, 1] -> [out, r]."""
    return np.asarray(arr, dtype=np.float64).reshape(arr.shape[0], -1)


def count_nonfinite(st: SafetensorsFile, name: str) -> int:
    """NaN and Inf values in a float tensor of any dtype, F8 included (0 for integer dtypes)."""
    dtype = st.tensors[name].dtype
    if dtype in _F8_NONFINITE:
        mask, value = _F8_NONFINITE[dtype]
        raw = np.frombuffer(st.read(name), dtype=np.uint8)
        return int(np.count_nonzero((raw & mask) == value))
    if dtype not in FLOAT_DTYPES:
        return 0
    arr = read_array(st, name)
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))
