"""validate --for: the verdicts for diffusers agree with what real diffusers applies, and the
recorded profiles give the verdicts the issue names (an official B-LoRA loses every UNet module
in ComfyUI; convert --for comfyui fixes it)."""

from __future__ import annotations

import json

import numpy as np
import torch

import _tiny_models as T
import adapterctl
from _cli_helpers import REPO, run_cli
from adapterctl.consumers.profile import load_profiles
from adapterctl.consumers.verdict import judge


def _names(all_names):
    """Attention, ff, resnet and TE attention/mlp modules: every group the diffusers quirk tells apart."""
    picked = [n for n in all_names if ".attn1.to_q" in n or ".attn2.to_v" in n][:6]
    picked += [n for n in all_names if ".ff.net.2" in n][:2] + [n for n in all_names if ".conv1" in n][:2]
    picked += [n for n in all_names if n.startswith("text_encoder.") and ("q_proj" in n or "fc1" in n)][:4]
    return picked


def _load_and_compare(path, branches):
    """module -> what real diffusers applies / what the file means; None where it applies nothing."""
    theirs = T.diffusers_load(path, T.build_models(seed=7))
    ratios = {}
    for name, b in branches.items():
        truth = b.delta()
        got = theirs.get(name)
        if got is None or not np.any(got):
            ratios[name] = None
            continue
        ratios[name] = float(np.sum(got * truth) / np.sum(truth * truth))
        assert np.allclose(got, ratios[name] * truth, rtol=1e-3, atol=1e-6 * np.abs(truth).max()), name
    return ratios


def test_per_module_alphas_mis_scaled_by_diffusers_are_the_ones_the_verdict_names(shapes, all_names, tmp_path):
    names = _names(all_names)
    common = [n for i, n in enumerate(names) if i % 3]
    alpha = lambda n: (2.0, torch.float16) if n in common else (8.0, torch.float16)  # noqa: E731
    branches = T.random_branches(shapes, names, rank=4, alpha=alpha, seed=5)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "mixed.safetensors")
    with adapterctl.open(src) as a:
        verdict = judge(a, load_profiles()["diffusers"])
    ratios = _load_and_compare(src, branches)  # what diffusers 0.42 really applies / what the file means
    lost = {n for n, r in ratios.items() if r is None}
    wrong = {n: r for n, r in ratios.items() if r is not None and abs(r - 1) > 1e-3}
    assert wrong, "the test needs modules diffusers mis-scales"
    assert {m for m, _ in verdict.misscaled} == set(wrong)
    assert set(verdict.ignored) == lost
    for module, factor in verdict.misscaled:
        assert abs(factor - wrong[module]) < 1e-3 * abs(factor), (module, factor, wrong[module])
    assert not verdict.ok

    r = run_cli("validate", src, "--for", "diffusers", "--json")
    assert r.rc == 1
    consumers = json.loads(r.stdout)["files"][0]["consumers"]
    assert consumers[0]["consumer"] == "diffusers" and len(consumers[0]["misscaled"]) == len(wrong)


def test_uniform_alphas_pass_for_diffusers_and_load_right(shapes, all_names, tmp_path):
    names = [n for n in _names(all_names) if "self_attn" not in n]  # kohya TE attention: see the profile
    branches = T.random_branches(shapes, names, rank=4, alpha=lambda n: (2.0, torch.float16), seed=6)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "uniform.safetensors")
    with adapterctl.open(src) as a:
        assert judge(a, load_profiles()["diffusers"]).ok
    assert all(r is not None and abs(r - 1) <= 1e-3 for r in _load_and_compare(src, branches).values())
    r = run_cli("validate", src, "--for", "diffusers", "--json")  # the tiny models fail the shapes check
    verdicts = json.loads(r.stdout)["files"][0]["consumers"]
    assert verdicts[0]["consumer"] == "diffusers" and verdicts[0]["ok"], verdicts


def test_kohya_text_encoder_attention_is_lost_in_diffusers_and_the_verdict_says_so(shapes, all_names, tmp_path):
    names = [n for n in all_names if n.startswith(("text_encoder.", "text_encoder_2.")) and
             ("q_proj" in n or "fc1" in n)][:8]
    branches = T.random_branches(shapes, names, rank=4, alpha=lambda n: (2.0, torch.float16), seed=8)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "te.safetensors")
    ratios = _load_and_compare(src, branches)
    lost = {n for n, r in ratios.items() if r is None}
    assert lost == {n for n in names if "self_attn" in n} and lost
    with adapterctl.open(src) as a:
        verdict = judge(a, load_profiles()["diffusers"])
    assert set(verdict.ignored) == lost and not verdict.misscaled
    # The diffusers layout, written by adapterctl, carries them all.
    out = tmp_path / "te.diffusers.safetensors"
    assert run_cli("convert", src, "--for", "diffusers", "-o", out).rc == 0
    assert all(r is not None and abs(r - 1) <= 1e-3 for r in _load_and_compare(out, branches).values())


def test_official_blora_loses_every_unet_module_in_comfyui_and_convert_for_fixes_it(tmp_path):
    from adapterctl.examples.make import BLORA, HERE

    r = run_cli("validate", HERE / BLORA, "--for", "comfyui", "--for", "forge")
    assert r.rc == 1 and "160 of 160 modules ignored" in r.stdout and "applies nothing" in r.stdout
    assert "adapterctl convert FILE --for comfyui" in r.stdout
    out = tmp_path / "fixed.safetensors"
    r = run_cli("convert", HERE / BLORA, "--for", "comfyui", "-o", out)
    assert r.rc == 0 and "comfyui: all 160 modules applied at the right scale" in r.stderr, r.stderr
    for tool in ("comfyui", "forge", "a1111", "kohya"):
        assert run_cli("validate", out, "--for", tool).rc == 0, tool


def test_a_diffusers_layout_file_loses_attention_in_comfyui(tmp_path):
    src = REPO / "spec" / "vectors" / "valid_tagged_adapterctl.safetensors"  # diffusers layout, attention only
    with adapterctl.open(src) as a:
        verdict = judge(a, load_profiles()["comfyui"])
        assert len(verdict.ignored) == len(a.modules) and not verdict.applied


def test_peft_verdicts_agree_with_real_peft(shapes, all_names, tmp_path):
    """A kohya file: peft places none of it (the verdict says so); convert --for peft writes the
    directory peft loads completely, at the right scale (checked by loading it)."""
    from peft import PeftModel

    names = [n for n in T.one_block_each(all_names) if n.startswith("unet.")][:8]
    alphas = {n: (2.0 if i % 2 else 4.0, torch.float16) for i, n in enumerate(names)}
    branches = T.random_branches(shapes, names, rank=4, alpha=alphas.get, seed=9)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "unet.safetensors")
    with adapterctl.open(src) as a:
        before = judge(a, load_profiles()["peft"])
    assert set(before.ignored) == set(names)
    out = tmp_path / "adapter"
    r = run_cli("convert", src, "--for", "peft", "-o", out)
    assert r.rc == 0 and "peft: all 8 modules applied at the right scale" in r.stderr, r.stderr
    model = PeftModel.from_pretrained(T.build_unet(seed=10), out, adapter_name="loaded")
    T.assert_same_deltas(T.peft_deltas({"unet": model}, "loaded"), {n: b.delta() for n, b in branches.items()},
                         what="convert --for peft, loaded by peft")


def _full_sdxl_diffusers_file(path):
    """Every module of the SDXL map, rank 1, diffusers layout with lora_adapter_metadata (alpha 0.5)."""
    from adapterctl.arch import load_arch
    from adapterctl.format.constants import DIFFUSERS_METADATA_KEY
    from adapterctl.io.writer import OutTensor, write_safetensors

    arch = load_arch("sdxl")
    tensors, meta = [], {}
    for spec in arch.modules.values():
        kernel = tuple(spec.kernel) if spec.kernel else ()
        down = np.full((1, spec.in_features) + kernel, 0.01, dtype=np.float16)
        up = np.full((spec.out_features, 1) + ((1, 1) if kernel else ()), 0.01, dtype=np.float16)
        stem = f"{spec.component}.{spec.path}"
        tensors += [OutTensor.from_bytes(f"{stem}.lora_A.weight", "F16", down.shape, down.tobytes()),
                    OutTensor.from_bytes(f"{stem}.lora_B.weight", "F16", up.shape, up.tobytes())]
    for component in ("unet", "text_encoder", "text_encoder_2"):
        meta.update({f"{component}.r": 1, f"{component}.lora_alpha": 0.5})
    write_safetensors(path, tensors, {DIFFUSERS_METADATA_KEY: json.dumps(meta)})
    return len(arch.modules)


def test_convert_for_comfyui_makes_a_full_diffusers_lora_and_a_style_split_load_completely(tmp_path):
    from adapterctl.examples.make import BLORA, HERE

    full = tmp_path / "full.safetensors"
    n = _full_sdxl_diffusers_file(full)
    with adapterctl.open(full) as a:
        before = judge(a, load_profiles()["comfyui"])
    assert len(before.ignored) >= 560 and not before.ok  # every UNet attention module, at least
    style = tmp_path / "style.safetensors"
    assert run_cli("split", HERE / BLORA, "--keep", "style", "-o", style).rc == 0
    for src, modules in ((full, n), (style, 80)):
        out = tmp_path / f"{src.stem}.comfy.safetensors"
        r = run_cli("convert", src, "--for", "comfyui", "-o", out)
        assert r.rc == 0 and f"comfyui: all {modules} modules applied at the right scale" in r.stderr, r.stderr
        with adapterctl.open(out) as b:
            after = judge(b, load_profiles()["comfyui"])
            assert after.ok and len(after.applied) == modules
            assert all(abs(e.alpha / e.rank - e.scale) < 1e-9 for e in b.modules)  # scale in the alpha tensor


def test_recorded_profiles_give_the_documented_verdicts():
    """Facts read from each tool's source (the profiles cite it): A1111 and sd-scripts place no
    diffusers-layout key; Forge applies nothing past 12 unplaced keys; sd-scripts loads kohya files
    that use diffusers module names; every kohya-reading tool takes alpha / rank."""
    profiles = load_profiles()
    for tool in ("a1111", "kohya"):
        assert not any(profiles[tool].applies("diffusers", c, g) for c in ("unet", "text_encoder")
                       for g in ("attn", "ff", "te_attn"))
    assert profiles["forge"].all_or_nothing_over == 12
    assert profiles["kohya"].applies("kohya-diffusers-names", "unet", "attn")
    for tool in ("comfyui", "a1111", "forge", "kohya"):
        assert profiles[tool].scale.sources[0] in ("alpha_tensor",) or "alpha_tensor" in profiles[tool].scale.sources
        assert profiles[tool].convert_to == "kohya"
    with adapterctl.open(REPO / "spec" / "vectors" / "valid_tagged_adapterctl.safetensors") as a:
        forge = judge(a, profiles["forge"])  # 2 branches unplaced: 4 keys, under Forge's limit
        assert forge.ignored and not forge.lost_all
