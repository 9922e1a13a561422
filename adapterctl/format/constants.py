"""Names and numbers fixed by the adapterctl format, version 1 (see spec/FORMAT.md)."""

FORMAT_NAME = "adapterctl.lora"
FORMAT_VERSION = 1

# __metadata__ keys written by adapterctl.
MANIFEST_KEY = "adapterctl.manifest"
FORMAT_KEY = "adapterctl.format"  # "adapterctl.lora/1": readable without parsing the manifest

# diffusers reads this header key (JSON of LoraConfig fields, prefixed per component).
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

MODELSPEC_VERSION = "1.0.1"

ROLES = ("content", "style", "expert")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# The layouts themselves (which are read, which written) are listed once, in layouts/registry.py.

# Metadata keys whose value describes the bytes of the file; they are recomputed, never copied.
RECOMPUTED_KEYS = ("modelspec.hash_sha256", "sshs_model_hash")
# Kohya's legacy hash covers a byte window of the whole file, so any rewrite makes it false.
DROPPED_STALE_KEYS = ("sshs_legacy_hash",)
