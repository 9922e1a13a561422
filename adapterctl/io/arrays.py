"""Tensor bytes as numpy arrays, for the few commands that compute (torch is never needed)."""

from __future__ import annotations

import numpy as np

from adapterctl.io.safetensors_file import SafetensorsFile

_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "U16": np.uint16,
          "U32": np.uint32, "U64": np.uint64}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


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
