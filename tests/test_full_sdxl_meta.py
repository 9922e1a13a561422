"""Interop on the *full* SDXL architecture, with no weights.

The real SDXL UNet (diffusers) and both CLIP text encoders (transformers) are built from the
map's configs on ``meta`` and then given uninitialised CPU storage with ``to_empty``: every
module name and shape is the real one, the address space is ~14 GB, but untouched pages are
never resident. LoRA files written by adapterctl are then loaded by diffusers and by peft
themselves, and what those libraries built is compared with the file, in factored form only
(A/B tensors and scalings; never a dense delta W).

Facts this file relies on (checked against diffusers 0.42 / peft 0.21 / transformers 5):
- LoRA must be loaded with ``low_cpu_mem_usage=False``: with True, diffusers/peft create the
  LoRA layers on a meta model but leave their weights on ``meta`` (nothing is loaded).
- transformers 5 ``CLIPTextModel`` (TE1) has no ``text_model.`` level in live module names;
  ``CLIPTextModelWithProjection`` (TE2) keeps it; files on disk keep it for both.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")
peft = pytest.importorskip("peft")

from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402

import adapterctl  # noqa: E402
from adapterctl.arch import load_arch  # noqa: E402
from adapterctl.io.writer import OutTensor, write_safetensors  # noqa: E402
from adapterctl.validate import validate_path  # noqa: E402

SDXL = diffusers.StableDiffusionXLPipeline  # the LoRA loader mixin lives on the pipeline class
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
STYLE_BLOCK = "up_blocks.0.attentions.1"
RANK, CONV_RANK = 2, 1
# Most modules get alpha = rank/2 (scale 0.5, as a typical kohya file); these get alpha = rank
# (scale 1), so per-module alpha patterns must survive conversion, a split, and the TE1 renaming.
FULL_SCALE = (re.compile(r"^text_encoder\.text_model\.encoder\.layers\.0\."),
              re.compile(rf"^unet\.{re.escape(STYLE_BLOCK)}\.transformer_blocks\.0\."))
KOHYA_METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": str(RANK),
    "ss_network_alpha": str(RANK / 2),
    "ss_network_args": '{"conv_dim": "1", "conv_alpha": "0.5"}',
    "ss_base_model_version": "sdxl_base_v1-0",
}


# --- models --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arch():
    return load_arch("sdxl")


@pytest.fixture(scope="module")
def meta_models(arch):
    """The three SDXL components on ``meta``, built once; tests take deep copies (0.2 s each)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return {
            "unet": diffusers.UNet2DConditionModel(**arch.config("unet")),
            "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**arch.config("text_encoder"))),
            "text_encoder_2": transformers.CLIPTextModelWithProjection(
                transformers.CLIPTextConfig(**arch.config("text_encoder_2"))),
        }


def materialise(meta_models, *components):
    # to_empty gives real (uninitialised) CPU storage that is never written, so it costs address
    # space, not resident memory; LoRA layers injected afterwards get real weights.
    return {c: copy.deepcopy(meta_models[c]).to_empty(device="cpu") for c in components}


def live_path(spec, model) -> str:
    if spec.component != "unet" and not hasattr(model, "text_model"):
        return spec.path.removeprefix("text_model.")  # transformers 5 flattened CLIPTextModel
    return spec.path


def lora_layers(model, prefix: str = "") -> dict[str, LoraLayer]:
    return {n.removeprefix(prefix): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def expected_layers(arch, models, names) -> dict[str, set[str]]:
    want = {c: set() for c in models}
    for name in names:
        spec = arch.get(name)
        want[spec.component].add(live_path(spec, models[spec.component]))
    return want


def resident_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- the full-coverage kohya LoCon file ------------------------------------------------------


def _factors(rng, spec, rank):
    kernel = tuple(spec.kernel) if spec.kernel else ()
    down = rng.normal(0, 1 / rank, size=(rank, spec.in_features) + kernel).astype(np.float16)
    up = rng.normal(0, 0.02, size=(spec.out_features, rank) + ((1, 1) if kernel else ())).astype(np.float16)
    return down, up


def _t(name, arr):
    return OutTensor.from_bytes(name, "F16", arr.shape, arr.tobytes())


def write_kohya(path: Path, arch, lora: dict) -> Path:
    out = []
    for name, (down, up, alpha) in lora.items():
        base = arch.kohya_name(name)  # SGM names for the UNet, as sd-scripts writes them
        out += [_t(f"{base}.alpha", np.array(alpha, dtype=np.float16)),
                _t(f"{base}.lora_down.weight", down), _t(f"{base}.lora_up.weight", up)]
    write_safetensors(path, out, dict(KOHYA_METADATA))
    return path


@pytest.fixture(scope="module")
def full_lora(arch):
    """canonical name -> (down, up, alpha) for every one of the map's 1,059 modules."""
    rng = np.random.default_rng(2024)
    lora = {}
    for spec in arch.modules.values():
        rank = CONV_RANK if spec.kind == "conv" else RANK
        alpha = float(rank) if any(p.match(spec.name) for p in FULL_SCALE) else rank / 2
        lora[spec.name] = (*_factors(rng, spec, rank), alpha)
    return lora


@pytest.fixture(scope="module")
def kohya_file(tmp_path_factory, arch, full_lora):
    return write_kohya(tmp_path_factory.mktemp("full") / "full_locon.safetensors", arch, full_lora)


@pytest.fixture(scope="module")
def diffusers_file(kohya_file):
    out = kohya_file.with_name("full_diffusers.safetensors")
    with adapterctl.open(kohya_file) as a:
        a.convert("diffusers").save(out)
    return out


def expected_scale(full_lora, name) -> float:
    down, _, alpha = full_lora[name]
    return alpha / down.shape[0]


def load_with_diffusers(path, models, adapter="a"):
    # The route StableDiffusionXLPipeline.load_lora_weights takes, without a pipeline object:
    # unet_config lets lora_state_dict map kohya SGM block names; metadata is our
    # lora_adapter_metadata (None for a kohya file, which yields network_alphas instead).
    unet = models.get("unet")
    state_dict, alphas, metadata = SDXL.lora_state_dict(
        str(path), unet_config=unet.config if unet is not None else None, return_lora_metadata=True)
    if unet is not None:
        SDXL.load_lora_into_unet(state_dict, alphas, unet, adapter_name=adapter, metadata=metadata,
                                 low_cpu_mem_usage=False)
    for component in TEXT_ENCODERS:
        if component in models:
            SDXL.load_lora_into_text_encoder(state_dict, alphas, models[component], prefix=component,
                                             adapter_name=adapter, metadata=metadata, low_cpu_mem_usage=False)
    return state_dict, alphas, metadata


def check_factors_and_scales(arch, models, full_lora, names, adapter="a"):
    """Every LoRA layer holds the file's exact factors (fp16 -> fp32 is exact) and alpha/rank."""
    wrong_scale, wrong_bytes = [], []
    for name in names:
        spec = arch.get(name)
        model = models[spec.component]
        layer = model.get_submodule(live_path(spec, model))
        down, up, _ = full_lora[name]
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        assert a.device.type == "cpu" and b.device.type == "cpu", f"{name}: LoRA weights left on {a.device}"
        if not (torch.equal(a, torch.from_numpy(down).to(a.dtype)) and torch.equal(b, torch.from_numpy(up).to(b.dtype))):
            wrong_bytes.append(name)
        if not math.isclose(layer.scaling[adapter], expected_scale(full_lora, name), rel_tol=1e-12):
            wrong_scale.append((name, layer.scaling[adapter], expected_scale(full_lora, name)))
    assert not wrong_bytes, f"{len(wrong_bytes)} modules hold other factors than the file, e.g. {wrong_bytes[:3]}"
    assert not wrong_scale, f"{len(wrong_scale)} modules mis-scaled, e.g. {wrong_scale[:3]}"


# --- 1. full-coverage LoCon: kohya -> adapterctl diffusers -> diffusers loader --------------


def test_generated_file_covers_the_whole_map(arch, kohya_file):
    with adapterctl.open(kohya_file) as a:
        assert {e.module for e in a.modules} == set(arch.modules)
        assert len(a.modules) == 1059
        assert a.layout == "kohya" and a.method == "locon"
        assert Counter(e.component for e in a.modules) == {"unet": 794, "text_encoder": 72, "text_encoder_2": 193}


def test_converted_file_loads_into_full_sdxl_exactly(arch, meta_models, full_lora, diffusers_file):
    with adapterctl.open(diffusers_file) as a:
        names = [e.module for e in a.modules]
        # Conversion only renames: the bytes on disk are the source's, and the scale read back
        # from lora_adapter_metadata is the kohya alpha/rank.
        with safe_open(str(diffusers_file), framework="np") as fh:
            for e in a.modules:
                down, up, _ = full_lora[e.module]
                assert np.array_equal(fh.get_tensor(e.tensors.down), down)
                assert np.array_equal(fh.get_tensor(e.tensors.up), up)
                assert math.isclose(e.scale, expected_scale(full_lora, e.module), rel_tol=1e-12)
    assert set(names) == set(arch.modules)

    rss_before = resident_bytes()
    models = materialise(meta_models, "unet", *TEXT_ENCODERS)
    _, alphas, metadata = load_with_diffusers(diffusers_file, models)
    assert alphas is None and metadata is not None  # the scale travelled as LoraConfig fields

    want = expected_layers(arch, models, names)
    for component, model in models.items():
        assert set(lora_layers(model)) == want[component], component
    assert {c: len(w) for c, w in want.items()} == {"unet": 794, "text_encoder": 72, "text_encoder_2": 193}
    check_factors_and_scales(arch, models, full_lora, names)

    # adapterctl's reported ||delta W|| is the one diffusers applies, compared in factored form:
    # ||s B A||_F^2 = s^2 tr((B^T B)(A A^T)), an r x r product, never the dense matrix.
    from adapterctl.stats import module_stats

    with adapterctl.open(diffusers_file) as a:
        ours = {e.module: module_stats(a, e).norm for e in a.modules}
    for name, norm in ours.items():
        spec = arch.get(name)
        layer = models[spec.component].get_submodule(live_path(spec, models[spec.component]))
        b = layer.lora_B["a"].weight.double().flatten(1)
        a_ = layer.lora_A["a"].weight.double().flatten(1)
        live = layer.scaling["a"] * torch.sqrt(torch.trace((b.T @ b) @ (a_ @ a_.T))).item()
        assert math.isclose(norm, live, rel_tol=1e-9), name

    if rss_before is not None:
        # ~13.6 GB of fp32 base weights exist, but none was touched: only LoRA tensors are resident.
        grown = resident_bytes() - rss_before
        assert grown < 2 * 2**30, f"resident memory grew by {grown / 2**30:.1f} GiB"


def test_diffusers_reads_the_original_kohya_file_onto_the_same_modules(arch, meta_models, full_lora, kohya_file):
    """Our SGM names agree with diffusers' own kohya converter on the full SDXL UNet."""
    models = materialise(meta_models, "unet", *TEXT_ENCODERS)
    _, alphas, metadata = load_with_diffusers(kohya_file, models)
    assert metadata is None and alphas  # kohya route: network alphas, no LoraConfig metadata
    want = expected_layers(arch, models, arch.modules)
    for component, model in models.items():
        assert set(lora_layers(model)) == want[component], component
    # The factors arrive intact by this route too.
    for name, (down, up, _) in full_lora.items():
        spec = arch.get(name)
        layer = models[spec.component].get_submodule(live_path(spec, models[spec.component]))
        assert torch.equal(layer.lora_A["a"].weight, torch.from_numpy(down).float()), name
        assert torch.equal(layer.lora_B["a"].weight, torch.from_numpy(up).float()), name
    # diffusers' kohya route derives one LoraConfig per component from network alphas, and only
    # modules whose alpha differs from the most common one can come out wrong (observed with
    # diffusers 0.42: the attention and all TE1 modules among our alpha = rank modules get 0.5).
    # A file converted by adapterctl does not depend on that path (test above: all exact).
    common = Counter(alpha for *_, alpha in full_lora.values()).most_common(1)[0][0]
    misscaled = []
    for name in full_lora:
        spec = arch.get(name)
        layer = models[spec.component].get_submodule(live_path(spec, models[spec.component]))
        if not math.isclose(layer.scaling["a"], expected_scale(full_lora, name), rel_tol=1e-12):
            misscaled.append(name)
    assert all(full_lora[name][2] != common for name in misscaled), misscaled[:3]


# --- 2. a one-block split loads onto that block only ----------------------------------------


def test_block_split_loads_onto_that_block_only(arch, meta_models, full_lora, kohya_file, tmp_path):
    out = tmp_path / "style_block.safetensors"
    with adapterctl.open(kohya_file) as a:
        split = a.split(keep_blocks=[STYLE_BLOCK])
        names = [e.module for e in split.modules]
        split.convert("diffusers").save(out)
    groups = Counter(arch.get(n).group for n in names)
    assert groups == {"attn": 80, "ff": 20, "proj": 2}  # B-LoRA's 80 linears + ff + proj_in/out
    assert set(names) == set(arch.resolve_selector(STYLE_BLOCK))

    models = materialise(meta_models, "unet", *TEXT_ENCODERS)
    state_dict, _, _ = load_with_diffusers(out, models)
    assert all(k.startswith(f"unet.{STYLE_BLOCK}.") for k in state_dict)
    assert set(lora_layers(models["unet"])) == {arch.get(n).path for n in names}
    for component in TEXT_ENCODERS:
        assert not lora_layers(models[component]), f"{component} got LoRA layers from a UNet-only file"
    # transformer_blocks.0 keeps alpha = rank (scale 1) while the rest of the block has 0.5.
    check_factors_and_scales(arch, models, full_lora, names)
    assert {round(expected_scale(full_lora, n), 3) for n in names} == {0.5, 1.0}


# --- 3. shape validation against the map, and the map against the live model ---------------


def test_validate_passes_on_the_full_file_and_its_conversion(kohya_file, diffusers_file):
    for path in (kohya_file, diffusers_file):
        report = validate_path(path)
        checks = {c.name: c for c in report.checks}
        assert report.status(strict=True) == "pass", [c.__dict__ for c in report.checks if c.status != "pass"]
        assert checks["shapes"].status == "pass"


@pytest.mark.parametrize("module, bad_shape", [
    # An SD1.5 cross-attention LoRA factor: 768-wide text embeddings instead of SDXL's 2048.
    ("unet.up_blocks.0.attentions.1.transformer_blocks.3.attn2.to_k", (RANK, 768)),
    # A 1x1 kernel where conv_in has 3x3.
    ("unet.conv_in", (CONV_RANK, 4, 1, 1)),
])
def test_validate_fails_on_a_wrong_input_width(arch, full_lora, tmp_path, module, bad_shape):
    lora = dict(full_lora)
    _, up, alpha = lora[module]
    lora[module] = (np.zeros(bad_shape, dtype=np.float16), up, alpha)
    path = write_kohya(tmp_path / "bad.safetensors", arch, lora)
    report = validate_path(path)
    shapes = next(c for c in report.checks if c.name == "shapes")
    assert shapes.status == "fail" and module in shapes.message
    assert report.status(strict=False) == "fail"


def test_map_shapes_equal_the_live_full_models(arch, meta_models):
    """The arch JSON is true to diffusers/transformers: same modules, same widths and kernels."""
    live_counts = Counter()
    for component, model in meta_models.items():
        for _, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                live_counts[component] += 1
    assert live_counts == Counter(s.component for s in arch.modules.values())
    for spec in arch.modules.values():
        model = meta_models[spec.component]
        module = model.get_submodule(live_path(spec, model))
        if spec.kind == "conv":
            assert isinstance(module, torch.nn.Conv2d), spec.name
            got = (module.in_channels, module.out_channels, tuple(module.kernel_size))
        else:
            assert isinstance(module, torch.nn.Linear), spec.name
            got = (module.in_features, module.out_features, None)
        assert got == (spec.in_features, spec.out_features, spec.kernel), spec.name


# --- 4. peft: a UNet-only peft directory into the full UNet --------------------------------


@pytest.fixture(scope="module")
def unet_peft_dir(kohya_file):
    out = kohya_file.parent / "unet_peft"
    with adapterctl.open(kohya_file) as a:
        a.split(keep_blocks=["unet"]).convert("peft").save(out)
    return out


def test_peft_dir_loads_with_peftmodel(arch, meta_models, full_lora, unet_peft_dir):
    from peft import PeftModel

    models = materialise(meta_models, "unet")
    wrapped = PeftModel.from_pretrained(models["unet"], str(unet_peft_dir), adapter_name="a",
                                        low_cpu_mem_usage=False)
    unet_names = [s.name for s in arch.modules.values() if s.component == "unet"]
    assert set(lora_layers(wrapped, "base_model.model.")) == {arch.get(n).path for n in unet_names}
    # PeftModel injects in place, so the bare UNet now holds the layers under its own names.
    check_factors_and_scales(arch, models, full_lora, unet_names)


def test_peft_dir_state_dict_has_no_missing_or_unexpected_keys(arch, meta_models, full_lora, unet_peft_dir):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    models = materialise(meta_models, "unet")
    config = LoraConfig.from_pretrained(str(unet_peft_dir))
    inject_adapter_in_model(config, models["unet"], adapter_name="a", low_cpu_mem_usage=False)
    # Keys of a peft directory are PeftModel's; the bare model's own names lack the wrapper.
    weights = {k.removeprefix("base_model.model."): v
               for k, v in load_file(str(unet_peft_dir / "adapter_model.safetensors")).items()}
    result = set_peft_model_state_dict(models["unet"], weights, adapter_name="a")
    assert not [k for k in result.missing_keys if ".lora_" in k]
    assert not result.unexpected_keys
    unet_names = [s.name for s in arch.modules.values() if s.component == "unet"]
    check_factors_and_scales(arch, models, full_lora, unet_names)


def test_te1_peft_dir_fails_loudly_on_flattened_clip(arch, meta_models, kohya_file, tmp_path):
    """Known limit: a peft directory names live modules, and TE1's live names depend on the
    transformers version. On a flattened CLIPTextModel the load must fail, never load nothing."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import NoMatchingPeftModuleError

    models = materialise(meta_models, "text_encoder")
    if hasattr(models["text_encoder"], "text_model"):
        pytest.skip("this transformers keeps CLIPTextModel.text_model")
    out = tmp_path / "te1_peft"
    with adapterctl.open(kohya_file) as a:
        a.split(keep_blocks=["text_encoder"]).convert("peft").save(out)
    with pytest.raises(NoMatchingPeftModuleError):
        PeftModel.from_pretrained(models["text_encoder"], str(out), adapter_name="a", low_cpu_mem_usage=False)
