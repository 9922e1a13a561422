"""peft adapter directories: ``adapter_config.json`` beside ``adapter_model.safetensors``."""

from __future__ import annotations

from pathlib import Path

from adapterctl.errors import InputNotFound, LayoutError, UnsafeFile
from adapterctl.io import safe_json

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_MAX_CONFIG_BYTES = 16 * 1024 * 1024


def read_peft_dir(directory: Path) -> tuple[Path, dict]:
    config_path = directory / CONFIG_NAME
    weights = directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise InputNotFound(f"is a directory without {CONFIG_NAME}, expected a .safetensors file or a peft adapter "
                            "directory", path=str(directory))
    if not weights.is_file():
        if (directory / "adapter_model.bin").exists():
            raise UnsafeFile("peft directory holds adapter_model.bin, a pickle; adapterctl never unpickles",
                             path=str(directory), hint="re-save it with safe_serialization=True")
        raise InputNotFound(f"peft directory has no {WEIGHTS_NAME}", path=str(directory))
    try:
        with open(config_path, "rb") as fh:  # read at most the cap, whatever the file's size
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except PermissionError:
        raise InputNotFound("permission denied", path=str(config_path)) from None
    except OSError as exc:
        raise InputNotFound(f"cannot read: {exc.strerror}", path=str(config_path)) from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise LayoutError(f"{CONFIG_NAME} is larger than {_MAX_CONFIG_BYTES} bytes", path=str(config_path))
    try:
        config = safe_json.loads(raw)
    except safe_json.JsonRejected as exc:
        raise LayoutError(f"{CONFIG_NAME} is not valid JSON ({exc})", path=str(config_path)) from None
    if not isinstance(config, dict):
        raise LayoutError(f"{CONFIG_NAME} is not a JSON object", path=str(config_path))
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        from adapterctl.textsafe import clip

        raise LayoutError(f"peft_type {clip(repr(peft_type), 40)} is not LORA; adapterctl reads LoRA adapters",
                          path=str(config_path))
    return weights, config
