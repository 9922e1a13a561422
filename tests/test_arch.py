"""The SDXL architecture map: drift against the real libraries, counts, names, presets."""

from __future__ import annotations

import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

import adapterctl.arch as arch
from adapterctl.errors import UnknownArchitecture, UsageError

REPO = Path(__file__).resolve().parents[1]
BLORA_BLOCKS = ("up_blocks.0.attentions.0", "up_blocks.0.attentions.1")


@pytest.fixture(scope="module")
def sdxl() -> arch.ArchMap:
    return arch.load_arch("sdxl")


@pytest.fixture(scope="module")
def generator():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from adapterctl.arch import generate

    return generate


# --- (1) drift ---------------------------------------------------------------------------


def test_shipped_json_matches_fresh_generation(generator):
    files = generator.outputs()
    assert {p.name for p in files} >= {"sdxl.json", "sdxl-tiny.json", "vocab.json", "merges.txt"}
    for path, fresh in files.items():
        assert path.read_text(encoding="utf-8") == fresh, f"{path.name} is stale: run python -m adapterctl.arch.generate"


def test_tiny_map_has_sdxl_names_at_toy_width(sdxl):
    tiny = arch.load_arch("sdxl-tiny")
    unet = [n for n in sdxl.modules if n.startswith("unet.")]
    assert [n for n in tiny.modules if n.startswith("unet.")] == unet, "sdxl-tiny must name every SDXL UNet module"
    assert set(tiny.modules) <= set(sdxl.modules), "the tiny text encoders are shallower, never differently named"
    assert all(tiny.modules[n].sgm == sdxl.modules[n].sgm and tiny.modules[n].block == sdxl.modules[n].block
               for n in tiny.modules)
    assert max(m.in_features for m in tiny.modules.values()) <= 256 < max(m.in_features for m in sdxl.modules.values())
    blora = arch.target_presets("sdxl-tiny")["b-lora"].modules(tiny)
    assert len(blora) == 160 and blora == arch.target_presets("sdxl")["b-lora"].modules(sdxl)


def test_check_flag_reports_stale_file(generator, tmp_path):
    stale = tmp_path / "sdxl.json"
    stale.write_text("{}", encoding="utf-8")
    assert generator.main(["--check", "--output", str(stale)]) == 1


# --- (2) counts --------------------------------------------------------------------------


def test_module_counts(sdxl):
    by = Counter((m.component, m.kind) for m in sdxl.modules.values())
    assert by == {("unet", "linear"): 743, ("unet", "conv"): 51,
                  ("text_encoder", "linear"): 72, ("text_encoder_2", "linear"): 193}
    groups = Counter(m.group for m in sdxl.modules.values())
    # sd-scripts' LoRA network: 70 transformer blocks x 10 linears + 22 proj_in/proj_out.
    assert groups["attn"] + groups["ff"] == 70 * 10
    assert groups["proj"] == 22
    assert groups["attn"] + groups["ff"] + groups["proj"] == 722
    te = Counter(m.component for m in sdxl.modules.values() if m.group in ("te_attn", "te_mlp"))
    assert te == {"text_encoder": 12 * 6, "text_encoder_2": 32 * 6}
    assert [m.name for m in sdxl.modules.values() if m.group == "te_proj"] == ["text_encoder_2.text_projection"]
    assert len(arch.target_presets()["kohya-lora"].modules(sdxl)) == 722 + 72 + 192


def test_schema_invariants(sdxl):
    assert sdxl.components == ("unet", "text_encoder", "text_encoder_2")
    assert sdxl.modelspec_architecture == "stable-diffusion-xl-v1-base/lora"
    for m in sdxl.modules.values():
        assert m.name == f"{m.component}.{m.path}"
        assert (m.kernel is None) == (m.kind == "linear")
        assert (m.sgm is None) == (m.component != "unet")
    blocks = sdxl.blocks()
    assert len(blocks) == len(set(blocks)) == 81
    assert blocks[:3] == ["time_embedding", "add_embedding", "conv_in"]
    assert "mid_block.attentions.0" in blocks and "text_encoder_2.text_projection" in blocks


# --- (3) B-LoRA --------------------------------------------------------------------------


def test_blora_blocks(sdxl):
    for block in BLORA_BLOCKS:
        attn = [n for n in sdxl.resolve_selector(block) if sdxl.modules[n].group == "attn"]
        assert len(attn) == 80
        for n in attn:
            spec = sdxl.modules[n]
            cross_kv = ".attn2.to_k" in n or ".attn2.to_v" in n
            assert spec.in_features == (2048 if cross_kv else 1280)
            assert spec.out_features == 1280
    targets = arch.target_presets()["b-lora"]
    picked = targets.modules(sdxl)
    assert targets.modules_per_block == 80
    assert picked == [n for b in BLORA_BLOCKS for n in sdxl.resolve_selector(b) if sdxl.modules[n].group == "attn"]
    # 28.2M LoRA parameters at rank 64, as the paper reports.
    assert sum(64 * (sdxl.modules[n].in_features + sdxl.modules[n].out_features) for n in picked) == 28_180_480


def test_role_presets(sdxl):
    presets = arch.role_presets()
    assert presets["b-lora"].roles == {"content": BLORA_BLOCKS[:1], "style": BLORA_BLOCKS[1:]}
    unzip = presets["unziplora"]
    assert unzip.roles["content"] == ("up_blocks.0.attentions.0", "up_blocks.0.attentions.2")
    assert len(unzip.roles["style"]) == 4
    content = {n for s in unzip.roles["content"] for n in sdxl.resolve_selector(s)}
    style = {n for s in unzip.roles["style"] for n in sdxl.resolve_selector(s)}
    assert content and style and not content & style
    assert len(arch.target_presets()["unziplora"].modules(sdxl)) == 560


# --- (4) SGM names ------------------------------------------------------------------------

# DESIGN.md section 2, block level; checked independently of our rule code.
SGM_TABLE = {
    "input_blocks.0.0": "conv_in", "input_blocks.1.0": "down_blocks.0.resnets.0",
    "input_blocks.2.0": "down_blocks.0.resnets.1", "input_blocks.3.0": "down_blocks.0.downsamplers.0",
    "input_blocks.4.0": "down_blocks.1.resnets.0", "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1", "input_blocks.6.0": "down_blocks.1.downsamplers.0",
    "input_blocks.7.0": "down_blocks.2.resnets.0", "input_blocks.8.1": "down_blocks.2.attentions.1",
    "middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
    "middle_block.2": "mid_block.resnets.1", "output_blocks.0.1": "up_blocks.0.attentions.0",
    "output_blocks.1.1": "up_blocks.0.attentions.1", "output_blocks.2.2": "up_blocks.0.upsamplers.0",
    "output_blocks.4.0": "up_blocks.1.resnets.1", "output_blocks.5.2": "up_blocks.1.upsamplers.0",
    "output_blocks.8.0": "up_blocks.2.resnets.2", "out.2": "conv_out",
    "time_embed.0": "time_embedding", "label_emb.0.0": "add_embedding",
}


@pytest.mark.parametrize("sgm_block,block", sorted(SGM_TABLE.items()))
def test_sgm_table(sdxl, sgm_block, block):
    assert {sdxl.modules[n].block for n in sdxl.resolve_selector(sgm_block)} == {block}


def test_sgm_leaf_names(sdxl):
    u = sdxl.modules
    assert u["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"].sgm == \
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert u["unet.down_blocks.0.resnets.0.conv1"].sgm == "input_blocks.1.0.in_layers.2"
    assert u["unet.up_blocks.2.resnets.0.conv2"].sgm == "output_blocks.6.0.out_layers.3"
    assert u["unet.mid_block.resnets.1.time_emb_proj"].sgm == "middle_block.2.emb_layers.1"
    assert u["unet.up_blocks.0.resnets.0.conv_shortcut"].sgm == "output_blocks.0.0.skip_connection"
    assert u["unet.down_blocks.0.downsamplers.0.conv"].sgm == "input_blocks.3.0.op"
    assert u["unet.up_blocks.1.upsamplers.0.conv"].sgm == "output_blocks.5.2.conv"
    assert u["unet.add_embedding.linear_2"].sgm == "label_emb.0.2"


def _kohya_state_dict(sdxl, *, sgm: bool):
    import torch

    sd = {}
    for spec in sdxl.modules.values():
        flat = sdxl.kohya_name(spec.name, sgm=sgm)
        k = spec.kernel
        sd[f"{flat}.lora_down.weight"] = torch.zeros(1, spec.in_features, *k) if k else torch.zeros(1, spec.in_features)
        sd[f"{flat}.lora_up.weight"] = torch.zeros(spec.out_features, 1, *((1, 1) if k else ()))
        sd[f"{flat}.alpha"] = torch.tensor(1.0)
    return sd


def _diffusers_landing(sdxl, sd):
    """Run diffusers' own kohya->peft path (as load_lora_weights does); module -> keys."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    unet_config = types.SimpleNamespace(**sdxl.config("unet"))
    converted, alphas = StableDiffusionXLPipeline.lora_state_dict(sd, unet_config=unet_config)
    landed: dict[str, set[str]] = {}
    for component in sdxl.components:
        part = {k.removeprefix(component + "."): v for k, v in converted.items() if k.startswith(component + ".")}
        if component == "unet":
            part = convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        for key in part:
            module, _, suffix = key.rpartition(".lora_")
            landed.setdefault(f"{component}.{module}", set()).add("lora_" + suffix)
    return landed, alphas


# Facts about diffusers 0.42's converter for kohya files written with *diffusers* module
# names: add_embedding.linear_1/_2 both collapse to "add.embedding.linear" (its SDXL
# index-stripping heuristic fires on "emb").  The SGM spelling maps every module.
DIFFUSERS_FLAVOUR_UNSUPPORTED = {"unet.add_embedding.linear_1", "unet.add_embedding.linear_2"}


@pytest.mark.parametrize("sgm", [True, False], ids=["sgm-names", "diffusers-names"])
def test_mapping_matches_diffusers_converter(sdxl, generator, sgm):
    landed, alphas = _diffusers_landing(sdxl, _kohya_state_dict(sdxl, sgm=sgm))
    ok = {name for name, keys in landed.items() if keys == {"lora_A.weight", "lora_B.weight"}}
    missed = set(sdxl.modules) - ok
    strays = set(landed) - set(sdxl.modules)
    assert strays == (set() if sgm else {"unet.add.embedding.linear"})
    assert missed <= (set() if sgm else DIFFUSERS_FLAVOUR_UNSUPPORTED), sorted(missed)[:10]
    # UNet alphas land on "<module>.alpha", except attention q/k/v/out: diffusers names
    # those after its legacy processor keys (text encoders likewise keep their legacy
    # suffixes), and peft then ignores a non-majority alpha there.
    plain = {n for n, s in sdxl.modules.items() if s.component == "unet" and s.group != "attn"} - missed
    assert {n + ".alpha" for n in plain} <= set(alphas)


# --- (5) kohya names ---------------------------------------------------------------------


def test_kohya_names_round_trip(sdxl):
    table = sdxl.kohya_names()
    # canonical + SGM spellings, plus TE1 without `text_model` (transformers-5 trainers)
    te1 = sum(1 for m in sdxl.modules.values() if m.component == "text_encoder" and m.path.startswith("text_model."))
    assert te1 == 72
    assert len(table) == len(sdxl.modules) + sum(1 for m in sdxl.modules.values() if m.sgm) + te1
    for name, spec in sdxl.modules.items():
        assert table[sdxl.kohya_name(name)] == name
        assert table[sdxl.kohya_name(name, sgm=False)] == name
    q = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert sdxl.kohya_name(q) == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert sdxl.kohya_name(q, sgm=False) == "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert table["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] == \
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    te2_fc2 = "text_encoder_2.text_model.encoder.layers.31.mlp.fc2"
    assert table["lora_te2_text_model_encoder_layers_31_mlp_fc2"] == te2_fc2
    assert table["lora_te1_encoder_layers_0_self_attn_q_proj"] == "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert "lora_te2_encoder_layers_31_mlp_fc2" not in table  # CLIPTextModelWithProjection kept its wrapper
    assert sdxl.kohya_names() is table  # cached
    with pytest.raises(TypeError):  # and shared, so read-only
        table["x"] = "y"
    with pytest.raises(KeyError):
        sdxl.kohya_name("unet.nope")


def test_resolve_selector(sdxl):
    block = sdxl.resolve_selector("up_blocks.0.attentions.1")
    assert len(block) == 102 and sdxl.resolve_selector("output_blocks.1.1") == block
    assert sdxl.resolve_selector("unet.up_blocks.0.attentions.1") == block
    one = "unet.mid_block.attentions.0.proj_out"
    assert sdxl.resolve_selector(one) == [one]
    assert sdxl.resolve_selector("middle_block.1.proj_out") == [one]
    assert len(sdxl.resolve_selector("text_encoder_2.layers.*")) == 192
    assert len(sdxl.resolve_selector("unet.*.attn2.to_k")) == 70
    assert len(sdxl.resolve_selector("unet")) == 794
    assert sdxl.resolve_selector("up_blocks.9") == [] and sdxl.resolve_selector("") == []
    assert sdxl.resolve_selector("up_blocks.0.attentions.1.transformer_blocks.1")[0].endswith("blocks.1.attn1.to_q")


# --- (6) LBW -----------------------------------------------------------------------------


def test_lbw_labels_and_lists(sdxl):
    assert arch.lbw_list(12) == ["BASE", "IN04", "IN05", "IN07", "IN08", "MID",
                                 "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"]
    assert arch.lbw_list(20) == ["BASE", *(f"IN{i:02d}" for i in range(9)), "MID", *(f"OUT{i:02d}" for i in range(9))]
    with pytest.raises(UsageError):
        arch.lbw_list(17)
    label = {n: s.lbw for n, s in sdxl.modules.items()}
    assert label["unet.conv_in"] == "IN00" and label["unet.conv_out"] is None
    assert label["unet.time_embedding.linear_1"] is None and label["unet.add_embedding.linear_1"] is None
    assert label["unet.down_blocks.1.downsamplers.0.conv"] == "IN06"
    assert label["unet.mid_block.resnets.1.conv1"] == "MID"
    assert label["unet.up_blocks.1.upsamplers.0.conv"] == "OUT05"
    assert {label[n] for n in sdxl.resolve_selector("up_blocks.1.attentions.2")} == {"OUT05"}
    assert {s.lbw for s in sdxl.modules.values() if s.component != "unet"} == {"BASE"}
    # IN04 etc. name an SGM block: resnet convs share their attention's slot.
    assert sdxl.lbw_index("unet.down_blocks.1.resnets.0.conv1", 12) == 1
    assert sdxl.lbw_index("unet.down_blocks.0.resnets.0.conv1", 12) is None  # IN01: left at 1
    assert sdxl.lbw_index("unet.down_blocks.0.resnets.0.conv1", 20) == 2
    assert sdxl.lbw_index("unet.conv_out", 20) is None
    assert sdxl.lbw_index("text_encoder.text_model.encoder.layers.0.mlp.fc1", 12) == 0


def test_lbw_presets(sdxl):
    presets = arch.lbw_presets()
    assert presets["b-lora"] == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert all(len(v) in (12, 20) for v in presets.values())
    blora = set(arch.target_presets()["b-lora"].modules(sdxl))
    for n, spec in sdxl.modules.items():
        if spec.group == "attn":
            w = presets["b-lora"][sdxl.lbw_index(n, 12)]
            w20 = presets["b-lora20"][sdxl.lbw_index(n, 20)]
            assert w == w20
            assert (w == 1) == (spec.block in BLORA_BLOCKS) == (n in blora)


# --- (7) unknown architectures, aliases -------------------------------------------------


def test_unknown_architecture():
    with pytest.raises(UnknownArchitecture) as err:
        arch.load_arch("sd9")
    assert "sdxl" in err.value.hint
    with pytest.raises(UnknownArchitecture):
        arch.load_arch("../sdxl")
    with pytest.raises(UnknownArchitecture):
        arch.role_presets("sd9")
    assert "sdxl" in arch.known_architectures()
    assert arch.load_arch("sdxl_base_v1-0") is arch.load_arch() is arch.load_arch("SDXL")
    assert arch.load_arch("stable-diffusion-xl-v1-base/lora").name == "sdxl"


# --- (8) import cost ---------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, adapterctl.arch as a; m = a.load_arch(); a.role_presets(); a.lbw_presets(); "
        "m.resolve_selector('unet.*.attn1.to_q'); "
        "heavy = [x for x in ('torch', 'numpy', 'diffusers', 'transformers', 'safetensors') if x in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
