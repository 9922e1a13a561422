"""peft adapter directories: ``adapter_config.json`` beside ``adapter_model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path

from adapterctl.errors import InputNotFound, LayoutError, UnsafeFile

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
        if config_path.stat().st_size > _MAX_CONFIG_BYTES:
            raise LayoutError(f"{CONFIG_NAME} is larger than {_MAX_CONFIG_BYTES} bytes", path=str(config_path))
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{CONFIG_NAME} is not valid JSON ({str(exc)[:120]})", path=str(config_path)) from None
    except PermissionError:
        raise InputNotFound("permission denied", path=str(config_path)) from None
    if not isinstance(config, dict):
        raise LayoutError(f"{CONFIG_NAME} is not a JSON object", path=str(config_path))
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise LayoutError(f"peft_type {peft_type} is not LoRA; adapterctl reads LoRA adapters",
                          path=str(config_path))
    return weights, config
