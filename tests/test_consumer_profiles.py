"""Consumer profiles (adapterctl/consumers/data/*.json) are data validated by one model, each
citing the code and version it was learned from; the facts this project measured by running a
consumer's own code (DESIGN.md §2, ComfyUI 0.3.64) must be what its profile says."""

from __future__ import annotations

import json

import pytest

from adapterctl.consumers.profile import DATA, Profile, load_profiles

CONSUMERS = {"comfyui", "a1111", "forge", "diffusers", "peft", "kohya"}


def test_every_consumer_has_one_valid_profile_named_after_it():
    files = {p.stem: p for p in DATA.glob("*.json")}
    assert set(files) == CONSUMERS
    for stem, path in files.items():
        profile = Profile.model_validate(json.loads(path.read_text(encoding="utf-8")))
        assert profile.consumer == stem
        assert profile.version and all(s.version and s.path and s.repo for s in profile.sources)
        assert profile.reads, stem
    assert set(load_profiles()) == CONSUMERS


def test_an_unknown_field_or_group_is_refused():
    good = json.loads((DATA / "comfyui.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError):
        Profile.model_validate({**good, "extra": 1})
    bad_reads = [{**good["reads"][0], "groups": ["attention"]}]
    with pytest.raises(ValueError):
        Profile.model_validate({**good, "reads": bad_reads})


def test_comfyui_profile_matches_what_its_own_code_was_measured_to_do():
    comfy = load_profiles()["comfyui"]
    for group in ("attn", "ff", "proj", "resnet"):
        assert comfy.applies("kohya-sgm", "unet", group), group
    for component, groups in (("text_encoder", ("te_attn", "te_mlp")), ("text_encoder_2", ("te_attn", "te_mlp"))):
        for group in groups:
            assert comfy.applies("kohya-sgm", component, group), (component, group)
    # diffusers-named SDXL attention only in the processor form: lora_A/B and .lora.down are lost.
    assert not comfy.applies("diffusers", "unet", "attn")
    assert not comfy.applies("diffusers-old", "unet", "attn")
    assert comfy.applies("diffusers-legacy-attn", "unet", "attn")
    assert comfy.applies("diffusers", "unet", "ff")
    assert "lora_adapter_metadata" not in comfy.scale.sources and comfy.scale.default == 1.0
    assert comfy.unplaced_keys == "skipped_with_log"
