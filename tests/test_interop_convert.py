"""CONVERT interop: adapterctl's outputs load in real diffusers/peft with the source's exact ΔW,
and round trips reproduce the original tensors bit for bit.

Sources are random LoRAs for a tiny SDXL-topology UNet + CLIP text encoders (tests/_tiny_models.py),
plus peft adapter directories written by peft itself (rsLoRA, rank/alpha patterns, DoRA).
"""

from __future__ import annotations

import json
import struct
import time

import pytest
import torch
from safetensors import safe_open

import _tiny_models as T
import adapterctl
from adapterctl.errors import UnsupportedConversion

pytestmark = [
    pytest.mark.filterwarnings("ignore:The following alpha_pattern keys:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# Alpha values != rank in every dtype kohya files use; None = no alpha tensor (kohya: alpha = rank).
ALPHAS = [(2.0, torch.float16), (1.5, torch.bfloat16), (3, torch.int64), (0.7, torch.float32), None,
          (5.0, torch.float64), (6.0, torch.float16)]


def _rank(name: str) -> int:
    return 2 if T.spec(name).kind == "conv" else 4


def _cycling_alphas(names, *, uniform=lambda n: False, common=(2.0, torch.float16), every=1):
    """Alphas cycling through ALPHAS on every ``every``-th module, ``common`` elsewhere.

    Each exceptional module becomes one exact-path alpha_pattern in diffusers/peft configs, and
    peft matches patterns with uncached re.match: past re's 512-entry cache, loading gets slow
    (~50 s for 700 patterns). Tests that load in peft keep the exceptions sparse.
    """
    order = {n: i for i, n in enumerate(names)}

    def alpha(name):
        i = order[name]
        return common if uniform(name) or i % every else ALPHAS[(i // every) % len(ALPHAS)]

    return alpha


def _truth(branches):
    return {n: b.delta() for n, b in branches.items()}


def _raw_tensors(path) -> dict[str, tuple[str, tuple, bytes]]:
    """name -> (dtype, shape, bytes), parsed straight from the safetensors container."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items()}


def _header_metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


# ---------------------------------------------------------------------------------------------
# (b) outputs load in diffusers / peft with the source's ΔW
# ---------------------------------------------------------------------------------------------

def test_kohya_to_diffusers_loads_with_every_alpha(shapes, all_names, tmp_path):
    """Full UNet + both TEs, alphas everywhere different (attention, TE1 mlp and missing alphas
    included: the cases diffusers reads wrong from kohya), in fp16/bf16/int64/fp32/fp64."""
    branches = T.random_branches(shapes, all_names, rank=_rank, alpha=_cycling_alphas(all_names, every=5), seed=20)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "src.safetensors")
    with adapterctl.open(src) as adapter:
        adapter.convert("diffusers").save(tmp_path / "out.safetensors")
    meta = json.loads(_header_metadata(tmp_path / "out.safetensors")["lora_adapter_metadata"])
    assert meta["unet.alpha_pattern"] and {"unet.r", "text_encoder.r", "text_encoder_2.r"} <= set(meta)

    theirs = T.diffusers_load(tmp_path / "out.safetensors", T.build_models(seed=21))
    T.assert_same_deltas(theirs, _truth(branches), what="kohya -> diffusers, loaded by diffusers")


def test_kohya_diffusers_names_to_kohya_sgm_loads_in_diffusers(shapes, all_names, tmp_path):
    """kohya written with diffusers module names -> kohya with SGM names (what A1111/ComfyUI expect);
    add_embedding included, which diffusers cannot load from the diffusers-names spelling."""
    names = T.one_block_each(all_names)
    branches = T.random_branches(shapes, names, rank=_rank, seed=22,
                                 alpha=_cycling_alphas(names, uniform=lambda n: T.is_attn(n) or ".mlp." in n))
    src = T.save(T.kohya_state_dict(branches, sgm=False), tmp_path / "src.safetensors")
    with adapterctl.open(src) as adapter:
        adapter.convert("kohya").save(tmp_path / "out.safetensors")
    keys = set(_raw_tensors(tmp_path / "out.safetensors"))
    assert "lora_unet_output_blocks_2_2_conv.lora_down.weight" in keys  # up_blocks.0.upsamplers.0.conv
    assert "lora_unet_input_blocks_4_0_skip_connection.lora_up.weight" in keys
    assert not any("down_blocks" in k or "up_blocks" in k for k in keys)

    theirs = T.diffusers_load(tmp_path / "out.safetensors", T.build_models(seed=23))
    T.assert_same_deltas(theirs, _truth(branches), what="kohya(SGM) output, loaded by diffusers")


def test_diffusers_to_kohya_loads_in_diffusers(shapes, all_names, tmp_path):
    names = T.one_block_each(all_names)
    branches = T.random_branches(shapes, names, rank=_rank, seed=24)  # no metadata: scale 1
    src = T.save(T.diffusers_state_dict(branches), tmp_path / "src.safetensors")
    with adapterctl.open(src) as adapter:
        adapter.convert("kohya").save(tmp_path / "out.safetensors")
    raw = _raw_tensors(tmp_path / "out.safetensors")
    assert {struct.unpack("<f", b)[0] for k, (d, _, b) in raw.items() if k.endswith(".alpha")} == {2.0, 4.0}

    theirs = T.diffusers_load(tmp_path / "out.safetensors", T.build_models(seed=25))
    T.assert_same_deltas(theirs, _truth(branches), what="diffusers -> kohya, loaded by diffusers")


def test_unet_lora_to_peft_dir_loads_in_peft(shapes, all_names, tmp_path):
    from peft import PeftModel

    names = [n for n in T.one_block_each(all_names) if n.startswith("unet.")]
    branches = T.random_branches(shapes, names, rank=_rank, alpha=_cycling_alphas(names, every=3), seed=26)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "src.safetensors")
    with adapterctl.open(src) as adapter:
        adapter.convert("peft").save(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["alpha_pattern"] and config["rank_pattern"]

    model = PeftModel.from_pretrained(T.build_unet(seed=27), tmp_path / "adapter", adapter_name="loaded")
    T.assert_same_deltas(T.peft_deltas({"unet": model}, "loaded"), _truth(branches), what="peft dir in peft")


def test_peft_dir_needs_one_component(shapes, tmp_path):
    names = ["unet.conv_in", "text_encoder.text_model.encoder.layers.0.mlp.fc1"]
    src = T.save(T.kohya_state_dict(T.random_branches(shapes, names)), tmp_path / "two.safetensors")
    with adapterctl.open(src) as adapter, pytest.raises(UnsupportedConversion):
        adapter.convert("peft")


# peft-written sources -------------------------------------------------------------------------

# Every kind of UNet module, but only transformer_blocks.0 of each attention (keeps peft fast).
UNET_TARGETS = [T.spec(n).path for n in T.one_block_each(n for n in T.ARCH.modules if n.startswith("unet."))]


def _peft_source(directory, config, seed):
    """Write an adapter with real peft; return the ΔW (and DoRA magnitudes) peft itself holds."""
    from peft import get_peft_model

    model = get_peft_model(T.build_unet(seed=seed), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make every branch count
                param.copy_(torch.randn(param.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + torch.rand(param.shape, generator=gen))
    model.save_pretrained(directory)
    return T.peft_deltas({"unet": model}, "default"), T.peft_magnitudes({"unet": model}, "default")


@pytest.fixture(scope="module")
def rslora_dir(tmp_path_factory):
    from peft import LoraConfig

    # Patterns are peft regexes matched against dotted suffixes; kept off attention so the kohya
    # output stays loadable by diffusers (whose kohya reader drops per-module attention alphas).
    config = LoraConfig(r=4, lora_alpha=6, use_rslora=True, target_modules=UNET_TARGETS,
                        rank_pattern={"conv1": 2, "down_blocks.1.attentions.0.proj_in": 8},
                        alpha_pattern={"ff.net.2": 3, "up_blocks.0.resnets.0.conv2": 5})
    directory = tmp_path_factory.mktemp("peft") / "rslora"
    deltas, _ = _peft_source(directory, config, seed=30)
    return directory, deltas


def test_peft_rslora_patterns_source_read(rslora_dir):
    directory, want = rslora_dir
    assert len(want) == 204
    with adapterctl.open(directory) as adapter:
        assert adapter.layout == "peft" and adapter.read.scaling_source == "peft-config"
        entries = {e.module: e for e in adapter.modules}
        assert all(e.rslora for e in entries.values())
        assert entries["unet.down_blocks.1.attentions.0.proj_in"].rank == 8
        assert entries["unet.up_blocks.0.resnets.0.conv2"].alpha == 5
        T.assert_same_deltas(T.adapterctl_deltas(adapter), want, what="adapterctl reads peft rsLoRA dir")


@pytest.mark.parametrize("target", ["diffusers", "kohya", "peft"])
def test_peft_rslora_patterns_source_converts(rslora_dir, tmp_path, target):
    from peft import PeftModel

    directory, want = rslora_dir
    out = tmp_path / ("adapter" if target == "peft" else f"out.{target}.safetensors")
    with adapterctl.open(directory) as adapter:
        adapter.convert(target).save(out)
    if target == "peft":
        model = PeftModel.from_pretrained(T.build_unet(seed=31), out, adapter_name="loaded")
        got = T.peft_deltas({"unet": model}, "loaded")
    else:
        got = T.diffusers_load(out, {"unet": T.build_unet(seed=31)})
    T.assert_same_deltas(got, want, what=f"peft rsLoRA -> {target}")


def test_dora_keeps_magnitude_and_refuses_kohya(tmp_path):
    from peft import LoraConfig, PeftModel

    config = LoraConfig(r=4, lora_alpha=8, use_dora=True,
                        target_modules=r".*(blocks\.1\..*(to_q|to_v|proj_in)|resnets\.\d\.conv1)")
    want, magnitudes = _peft_source(tmp_path / "dora", config, seed=40)
    assert magnitudes and any(".conv1" in n for n in magnitudes)  # DoRA on convs too

    with adapterctl.open(tmp_path / "dora") as adapter:
        assert all(e.dora for e in adapter.modules)
        T.assert_same_deltas(T.adapterctl_deltas(adapter), want, what="adapterctl reads DoRA")
        with pytest.raises(UnsupportedConversion):
            adapter.convert("kohya")
        adapter.convert("diffusers").save(tmp_path / "dora.safetensors")
        adapter.convert("peft").save(tmp_path / "dora_peft")
    keys = set(_raw_tensors(tmp_path / "dora.safetensors"))
    assert sum(k.endswith(".lora_magnitude_vector") for k in keys) == len(magnitudes)

    models = {"unet": T.build_unet(seed=41)}
    T.assert_same_deltas(T.diffusers_load(tmp_path / "dora.safetensors", models), want, what="DoRA ΔW, diffusers")
    T.assert_same_deltas(T.peft_magnitudes(models, "probe"), magnitudes, what="DoRA magnitude, diffusers")

    model = PeftModel.from_pretrained(T.build_unet(seed=42), tmp_path / "dora_peft", adapter_name="loaded")
    T.assert_same_deltas(T.peft_deltas({"unet": model}, "loaded"), want, what="DoRA ΔW, peft")
    T.assert_same_deltas(T.peft_magnitudes({"unet": model}, "loaded"), magnitudes, what="DoRA magnitude, peft")


# B-LoRA ---------------------------------------------------------------------------------------

def test_blora_file_is_inferred_and_splits_load_in_diffusers(shapes, tmp_path):
    content, style = T.blora_modules("up_blocks.0.attentions.0"), T.blora_modules("up_blocks.0.attentions.1")
    branches = T.random_branches(shapes, content + style, seed=50)  # reference output: no alphas
    src = T.save(T.diffusers_state_dict(branches, style="old"), tmp_path / "blora.safetensors")
    assert len(_raw_tensors(src)) == 320

    with adapterctl.open(src) as adapter:
        assert adapter.roles() == {"content": 80, "style": 80}
        assert adapter.method == "b-lora"
        adapter.split(keep=["content"]).save(tmp_path / "content.safetensors")
        adapter.split(keep=["style"]).save(tmp_path / "style.safetensors")
        adapter.split(keep=["style"]).convert("kohya").save(tmp_path / "style_kohya.safetensors")

    truth = _truth(branches)
    for file, wanted in (("content", content), ("style", style), ("style_kohya", style)):
        got = T.diffusers_load(tmp_path / f"{file}.safetensors", T.build_models(seed=51, text_encoders=False))
        assert set(got) == set(wanted), file
        T.assert_same_deltas(got, {n: truth[n] for n in wanted}, what=file)


# ---------------------------------------------------------------------------------------------
# (c) round trips are exact
# ---------------------------------------------------------------------------------------------

def test_round_trip_kohya_diffusers_kohya_is_bit_exact(shapes, all_names, tmp_path):
    branches = T.random_branches(shapes, all_names, rank=_rank, alpha=_cycling_alphas(all_names), seed=60)
    src = T.save(T.kohya_state_dict(branches), tmp_path / "src.safetensors")
    with adapterctl.open(src) as adapter:
        adapter.convert("diffusers").save(tmp_path / "mid.safetensors")
    with adapterctl.open(tmp_path / "mid.safetensors") as adapter:
        adapter.convert("kohya").save(tmp_path / "back.safetensors")

    before, after = _raw_tensors(src), _raw_tensors(tmp_path / "back.safetensors")
    assert {d for k, (d, _, _) in before.items() if k.endswith(".alpha")} == {"F16", "BF16", "I64", "F32", "F64"}
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"
    # The only new tensors: alphas for branches that had none, equal to their rank (the same scale 1).
    added = sorted(set(after) - set(before))
    no_alpha = sorted(T.ARCH.kohya_name(n) + ".alpha" for n, b in branches.items() if b.alpha is None)
    assert added == no_alpha
    for key in added:
        rank = before[key.replace(".alpha", ".lora_down.weight")][1][0]
        assert after[key][0] == "F32" and struct.unpack("<f", after[key][2])[0] == rank


@pytest.mark.parametrize("via", ["peft", "kohya"])
def test_round_trip_through_diffusers_is_bit_exact(shapes, all_names, tmp_path, via):
    names = [n for n in all_names if n.startswith("unet.")] if via == "peft" else all_names
    branches = T.random_branches(shapes, names, rank=_rank, seed=61, dtype=torch.bfloat16)
    src = T.save(T.diffusers_state_dict(branches), tmp_path / "src.safetensors")
    mid = tmp_path / ("mid" if via == "peft" else "mid.safetensors")
    with adapterctl.open(src) as adapter:
        adapter.convert(via).save(mid)
    with adapterctl.open(mid) as adapter:
        adapter.convert("diffusers").save(tmp_path / "back.safetensors")
        mid_deltas = T.adapterctl_deltas(adapter)

    before, after = _raw_tensors(src), _raw_tensors(tmp_path / "back.safetensors")
    assert set(after) == set(before)
    changed = [k for k in before if after[k] != before[k]]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"
    with adapterctl.open(tmp_path / "back.safetensors") as adapter:
        T.assert_same_deltas(T.adapterctl_deltas(adapter), _truth(branches), what="scale after round trip")
    T.assert_same_deltas(mid_deltas, _truth(branches), what=f"scale in the {via} intermediate")


def test_reading_many_rank_alpha_patterns_is_fast():
    """Regression: every pattern used to be recompiled for every module (re's cache holds 512),
    which made reading back a converted tiny SDXL LoRA take ~30 s."""
    from adapterctl.layouts.scaling import PeftScaling

    paths = [f"up_blocks.0.attentions.{i % 3}.transformer_blocks.{i}.attn1.to_q" for i in range(900)]
    config = PeftScaling(r=4, lora_alpha=4.0, alpha_pattern={p: 2.0 for p in paths},
                         rank_pattern={p: 8 for p in paths[::2]})
    start = time.perf_counter()
    scales = [config.scale(p) for p in paths]
    assert time.perf_counter() - start < 10  # was ~60 s; ~0.5 s now
    assert scales[0] == (8, 2.0, 0.25) and scales[1] == (4, 2.0, 0.5)
