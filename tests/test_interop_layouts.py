"""READ interop: every layout adapterctl reads means the same ΔW that real diffusers loads from it.

Each test writes a random LoRA file for a tiny SDXL-topology UNet + CLIP text encoders, loads it
with diffusers 0.42 (``StableDiffusionXLPipeline.lora_state_dict`` + ``load_lora_into_unet`` /
``load_lora_into_text_encoder``), reads back every peft LoRA layer (``scaling * lora_B @ lora_A``)
and compares, module by module, with adapterctl's ``scale * up @ down``. Both are also checked
against the generator's own ground truth, so an error shared by both sides cannot hide.

Where diffusers itself gets a kohya file wrong, the tests pin down exactly how (so a fix upstream
shows up here) and show that adapterctl's converted file loads right.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

import _tiny_models as T
import adapterctl

pytestmark = [
    # peft warns about the alpha patterns diffusers mis-names; the tests assert the effect instead.
    pytest.mark.filterwarnings("ignore:The following alpha_pattern keys:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

COMMON_ALPHA = 2.0  # the file-wide most common alpha; diffusers applies it where it loses the real one
# Alphas != rank in several dtypes, for the modules where diffusers honours per-module alphas.
VARIED_ALPHAS = [(1.0, torch.bfloat16), (3, torch.int64), (0.5, torch.float16), (6.0, torch.float32),
                 (1.5, torch.bfloat16), (8, torch.int64)]


def _uniform_in_diffusers(name: str) -> bool:
    """Modules whose kohya alpha diffusers 0.42 replaces by the file's most common alpha.

    Attention q/k/v/out (UNet and TE): their alphas are stored under the legacy processor names
    (``attn1.processor.to_q_lora.down.weight.alpha``, ``self_attn``) that match no module.
    TE1 mlp: the alpha pattern keeps ``text_model.``, which transformers 5's flattened
    CLIPTextModel no longer has.
    """
    return T.is_attn(name) or (name.startswith("text_encoder.") and ".mlp." in name)


def _rank(name: str) -> int:
    if T.spec(name).kind == "conv":
        return 2
    if name.endswith(("attentions.0.proj_in", "mid_block.attentions.0.proj_out")):
        return 8  # exercise diffusers' rank_pattern
    return 4


def _kohya_branches(shapes, names):
    varied = iter(VARIED_ALPHAS * len(names))

    def alpha(name):
        return (COMMON_ALPHA, torch.float16) if _uniform_in_diffusers(name) else next(varied)

    return T.random_branches(shapes, names, rank=_rank, alpha=alpha, seed=1)


def _truth(branches):
    return {n: b.delta() for n, b in branches.items()}


def test_tiny_models_have_every_sdxl_module_name(shapes, all_names):
    unet = {n for n in all_names if n.startswith("unet.")}
    assert unet == {s.name for s in T.ARCH.modules.values() if s.component == "unet"}
    assert len(unet) == 794
    # The text encoders keep SDXL's names, only with 2 layers.
    for name in all_names:
        assert T.spec(name) is not None, name
    assert "text_encoder_2.text_projection" in all_names
    assert not hasattr(shapes["text_encoder"], "text_model") and hasattr(shapes["text_encoder_2"], "text_model")


@pytest.mark.parametrize("sgm", [True, False], ids=["sgm-names", "diffusers-names"])
def test_kohya_read_equals_diffusers(shapes, all_names, tmp_path, sgm):
    names = all_names
    if not sgm:
        # diffusers mangles lora_unet_add_embedding_linear_N (see the test below): leave it out here.
        names = [n for n in T.one_block_each(names) if ".add_embedding." not in n]
    branches = _kohya_branches(shapes, names)
    path = T.save(T.kohya_state_dict(branches, sgm=sgm), tmp_path / "kohya.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        alpha_dtypes = {f.get_slice(k).get_dtype() for k in keys if k.endswith(".alpha")}
        assert any("input_blocks_4_1" in k for k in keys) == sgm
        assert any("lora_unet_up_blocks_0_upsamplers_0_conv" in k for k in keys) == (not sgm)
    assert {"F16", "BF16", "I64", "F32"} <= alpha_dtypes

    with adapterctl.open(path) as adapter:
        assert adapter.layout == "kohya" and adapter.read.unmapped == []
        ours = T.adapterctl_deltas(adapter)
        convs = {e.module for e in adapter.modules if e.kind == "conv"}
    T.assert_same_deltas(ours, _truth(branches), what="adapterctl vs truth")
    assert len(convs) == 51  # resnet conv1/conv2/conv_shortcut, down/upsamplers, conv_in/out

    theirs = T.diffusers_load(path, T.build_models(seed=2))
    T.assert_same_deltas(theirs, ours, what="diffusers vs adapterctl")


def test_kohya_diffusers_names_add_embedding_dropped_by_diffusers(shapes, tmp_path):
    """diffusers' kohya converter turns lora_unet_add_embedding_linear_1 into 'add.embedding.linear',
    which matches nothing: the branch is silently not loaded. adapterctl reads it, and its kohya
    output (SGM name label_emb_0_0) loads in diffusers."""
    names = ["unet.add_embedding.linear_1", "unet.add_embedding.linear_2",
             "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    branches = T.random_branches(shapes, names, alpha=lambda n: (COMMON_ALPHA, torch.float16), seed=3)
    path = T.save(T.kohya_state_dict(branches, sgm=False), tmp_path / "kohya_dn.safetensors")
    with adapterctl.open(path) as adapter:
        T.assert_same_deltas(T.adapterctl_deltas(adapter), _truth(branches), what="adapterctl")
        adapter.convert("kohya").save(tmp_path / "kohya_sgm.safetensors")

    theirs = T.diffusers_load(path, T.build_models(seed=2, text_encoders=False))
    assert set(theirs) == {names[2]}
    np.testing.assert_allclose(theirs[names[2]], branches[names[2]].delta(), rtol=1e-6)

    with safe_open(str(tmp_path / "kohya_sgm.safetensors"), "pt") as f:
        assert "lora_unet_label_emb_0_0.lora_down.weight" in f.keys()
    theirs = T.diffusers_load(tmp_path / "kohya_sgm.safetensors", T.build_models(seed=2, text_encoders=False))
    T.assert_same_deltas(theirs, _truth(branches), what="adapterctl's kohya output in diffusers")


@pytest.mark.parametrize("style", ["peft", "old", "legacy-attn"])
def test_diffusers_family_read_equals_diffusers(shapes, all_names, tmp_path, style):
    """unet./text_encoder./text_encoder_2. keys: lora_A/lora_B, old lora.down/up (TE:
    lora_linear_layer), and attention-processor keys (processor.to_q_lora, to_out_lora -> to_out.0)."""
    names = all_names if style == "peft" else T.one_block_each(all_names)
    branches = T.random_branches(shapes, names, rank=_rank, seed=4)  # no alphas: scale 1
    path = T.save(T.diffusers_state_dict(branches, style=style), tmp_path / f"{style}.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    if style == "legacy-attn":
        assert "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight" in keys
        assert "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.down.weight" in keys

    with adapterctl.open(path) as adapter:
        # A mixed file is labelled by its most common key family; here convs etc. outnumber attention.
        assert adapter.layout == {"peft": "diffusers"}.get(style, "diffusers-old")
        if style == "legacy-attn":
            q = next(e for e in adapter.modules if e.module.endswith("blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"))
            assert q.tensors.down.endswith("attn2.processor.to_out_lora.down.weight")
        assert adapter.read.unmapped == []
        ours = T.adapterctl_deltas(adapter)
    T.assert_same_deltas(ours, _truth(branches), what="adapterctl vs truth")

    theirs = T.diffusers_load(path, T.build_models(seed=5))
    T.assert_same_deltas(theirs, ours, what="diffusers vs adapterctl")


@pytest.mark.parametrize("style", ["old", "peft"])
def test_doubled_unet_prefix(shapes, tmp_path, style):
    """'unet.unet.' (some published B-LoRA files): diffusers 0.42 refuses it (peft finds none of the
    'unet.<path>' targets); adapterctl reads it and its diffusers output loads with the right ΔW."""
    from peft.utils.error import NoMatchingPeftModuleError

    names = T.blora_modules("up_blocks.0.attentions.1")
    branches = T.random_branches(shapes, names, seed=6)
    path = T.save(T.diffusers_state_dict(branches, style=style, unet_prefix="unet.unet."), tmp_path / "dbl.safetensors")
    with adapterctl.open(path) as adapter:
        assert adapter.read.doubled_prefix
        T.assert_same_deltas(T.adapterctl_deltas(adapter), _truth(branches), what="adapterctl")
        assert adapter.roles() == {"untagged": 80}  # one B-LoRA block alone is not inferred as b-lora
        adapter.convert("diffusers").save(tmp_path / "fixed.safetensors")

    with pytest.raises(NoMatchingPeftModuleError):
        T.diffusers_load(path, T.build_models(seed=7, text_encoders=False))
    theirs = T.diffusers_load(tmp_path / "fixed.safetensors", T.build_models(seed=7, text_encoders=False))
    T.assert_same_deltas(theirs, _truth(branches), what="converted file in diffusers")


def test_kohya_alphas_diffusers_gets_wrong_and_convert_fixes(shapes, all_names, tmp_path):
    """Known diffusers 0.42 bug class, pinned exactly, and the selling point.

    Loading kohya SDXL directly, diffusers applies the file's most common alpha instead of the
    module's own for (1) attention q/k/v/out in the UNet and the TEs, (2) TE1 mlp (transformers 5),
    and (3) modules that store no alpha (kohya: alpha = rank). ``adapterctl convert --to
    diffusers`` carries every scale in lora_adapter_metadata, and diffusers then loads all right.
    """
    from adapterctl.cli.main import run

    attn = T.blora_modules("up_blocks.0.attentions.0")
    te = [n for n in all_names if n.startswith("text_encoder")]
    others = ["unet.up_blocks.0.resnets.0.conv1", "unet.up_blocks.0.attentions.0.proj_in",
              "unet.up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"]
    names = attn + te + others
    odd = {attn[0]: (6.0, torch.bfloat16), attn[5]: (1, torch.int64), attn[9]: (0.5, torch.float16),
           "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (1.0, torch.float16),
           "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj": (3.0, torch.float16),
           "text_encoder.text_model.encoder.layers.1.mlp.fc1": (8.0, torch.float32),
           others[0]: None}  # no alpha tensor
    branches = T.random_branches(shapes, names, alpha=lambda n: odd[n] if n in odd else (COMMON_ALPHA, torch.float16),
                                 seed=8)
    truth = _truth(branches)
    path = T.save(T.kohya_state_dict(branches), tmp_path / "kohya.safetensors")
    with adapterctl.open(path) as adapter:
        T.assert_same_deltas(T.adapterctl_deltas(adapter), truth, what="adapterctl")

    direct = T.diffusers_load(path, T.build_models(seed=9))
    assert set(direct) == set(truth)
    wrong = {n for n in truth if not np.allclose(direct[n], truth[n], rtol=1e-6, atol=1e-9)}
    assert wrong == set(odd)
    for name in odd:  # exactly the most common alpha over rank, not a random error
        expected = truth[name] / branches[name].scale * (COMMON_ALPHA / branches[name].rank)
        np.testing.assert_allclose(direct[name], expected, rtol=1e-6)

    out = tmp_path / "converted.safetensors"
    assert run(["convert", str(path), "--to", "diffusers", "-o", str(out), "--quiet"]) == 0
    fixed = T.diffusers_load(out, T.build_models(seed=9))
    T.assert_same_deltas(fixed, truth, what="adapterctl convert --to diffusers, loaded by diffusers")


def test_network_alpha_in_diffusers_layout_is_ignored_by_diffusers(shapes, tmp_path):
    """A '.alpha' tensor beside diffusers-layout factors: adapterctl applies alpha/rank (kohya and
    ComfyUI semantics); diffusers 0.42 ignores it (scale 1). Pinned so a change on either side is
    seen. adapterctl's diffusers output carries the scale as metadata, which diffusers honours."""
    names = T.blora_modules("up_blocks.0.attentions.0")[:8]
    branches = T.random_branches(shapes, names, seed=10)
    sd = T.diffusers_state_dict(branches, style="old")
    sd.update({f"unet.{T.spec(n).path}.alpha": torch.tensor(1.0) for n in names})
    path = T.save(sd, tmp_path / "netalpha.safetensors")
    with adapterctl.open(path) as adapter:
        assert adapter.read.scaling_source == "network-alpha"
        assert {e.scale for e in adapter.modules} == {0.25}
        ours = T.adapterctl_deltas(adapter)
        adapter.convert("diffusers").save(tmp_path / "converted.safetensors")
    T.assert_same_deltas(ours, {n: 0.25 * b.delta() for n, b in branches.items()}, what="adapterctl")

    theirs = T.diffusers_load(path, T.build_models(seed=11, text_encoders=False))
    T.assert_same_deltas(theirs, _truth(branches), what="diffusers uses scale 1")
    theirs = T.diffusers_load(tmp_path / "converted.safetensors", T.build_models(seed=11, text_encoders=False))
    T.assert_same_deltas(theirs, ours, what="converted")
