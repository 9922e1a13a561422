"""adapterctl train on the embedded tiny base, on the CPU: what is trained, what is written, and
that the files load where they should. Bad input and Ctrl-C: test_train_bad_inputs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import adapterctl  # noqa: E402
from adapterctl.arch import load_arch, role_presets, target_presets  # noqa: E402
from adapterctl.torch import quiet_libraries  # noqa: E402
from adapterctl.torch.base import load_base  # noqa: E402
from adapterctl.torch.images import load_image  # noqa: E402
from adapterctl.torch.layers import set_active, trainable  # noqa: E402
from adapterctl.torch.recipe import TrainConfig  # noqa: E402
from adapterctl.torch.train import train  # noqa: E402
from adapterctl.torch import job  # noqa: E402

from _cli_helpers import run_cli_batch  # noqa: E402
from _tiny_models import adapterctl_deltas, assert_same_deltas, diffusers_load, quiet_loaders  # noqa: E402

TINY = load_arch("sdxl-tiny")
BLORA = target_presets("sdxl-tiny")["b-lora"].modules(TINY)
STYLE_BLOCK, CONTENT_BLOCK = "up_blocks.0.attentions.1", "up_blocks.0.attentions.0"


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    quiet_libraries()
    quiet_loaders()
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    smooth = np.kron(rng.random((10, 12, 3)), np.ones((16, 16, 1)))  # blocks of colour: a learnable image
    Image.fromarray((smooth * 255).astype("uint8")).save(path)
    return path


def _run(photo: Path, **config):
    base = load_base("tiny")
    cfg = TrainConfig(**config).resolved(base.arch, base.resolution)
    image = load_image(photo)
    return train(cfg, image, base, fingerprint=cfg.fingerprint()), base, image


@pytest.fixture(scope="module")
def blora(photo, tmp_path_factory):
    result, base, image = _run(photo, steps=16, lr=0.1)  # a large lr: the tiny UNet is random
    from adapterctl.torch.export import to_adapter

    out = tmp_path_factory.mktemp("blora") / "photo.b-lora.safetensors"
    to_adapter(result, image, base).save(out)
    return result, base, out


def _fixed_loss(result, base, photo, draws: int = 12) -> float:
    """The training loss on fixed draws (timesteps, noise), so two models are compared fairly."""
    from diffusers import DDPMScheduler

    from adapterctl.torch.encode import encode_image, encode_prompt, unet_inputs

    fresh = load_base("tiny").pipe  # encoders (the trained pipeline freed its own)
    latents = encode_image(fresh, load_image(photo), 128, flip=False)
    cond = unet_inputs(encode_prompt(fresh, "A [v]"), latents.time_ids, "cpu", torch.float32)
    sched = DDPMScheduler.from_config(fresh.scheduler.config)
    gen = torch.Generator().manual_seed(1234)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            latent, _ = latents.sample(gen, False)
            noise = torch.randn(latent.shape, generator=gen)
            t = torch.randint(0, 1000, (1,), generator=gen)
            pred = base.pipe.unet(sched.add_noise(latent, noise, t), t, **cond).sample
            total += float(torch.nn.functional.mse_loss(pred, noise))
    return total / draws


def test_loss_decreases(blora, photo):
    result, base, _ = blora
    wrappers = list(result.wrappers.values())
    set_active(wrappers, [])  # the LoRA off: the untouched base (training starts at ΔW = 0)
    before = _fixed_loss(result, base, photo)
    set_active(wrappers, None)
    after = _fixed_loss(result, base, photo)
    assert after < before * 0.98, f"fixed-draw loss {before:.4f} -> {after:.4f}"


def test_only_the_chosen_blocks_are_trained_and_written(blora):
    result, base, out = blora
    assert sorted(result.wrappers) == sorted(BLORA) and len(BLORA) == 160
    names = {name.split(":")[0] for name, _ in trainable(result.wrappers)}
    assert names == set(BLORA)
    # The frozen base weights are bit-identical to a fresh tiny UNet's.
    fresh = dict(load_base("tiny").pipe.unet.named_parameters())
    for name, p in base.pipe.unet.named_parameters():
        if ".branches." in name:
            continue
        plain = name.replace(".base.", ".")
        assert torch.equal(p, fresh[plain]), name
    a = adapterctl.open(out)
    assert {e.module for e in a.modules} == set(BLORA)
    assert {e.block for e in a.modules} == {CONTENT_BLOCK, STYLE_BLOCK}
    # The file's ΔW is the trained one (scale 1, fp32).
    got = adapterctl_deltas(a)
    for name in BLORA[:5] + BLORA[-5:]:
        branch = result.wrappers[name].branches[_role(name)]
        want = (branch.scale * branch.up.detach().double() @ branch.down.detach().double()).numpy()
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-9)


def _role(name: str) -> str:
    return "content" if CONTENT_BLOCK in name else "style"


def test_output_validates_with_roles_and_provenance(blora, photo):
    _, _, out = blora
    (res,) = run_cli_batch([["validate", "--strict", out]])
    assert res.rc == 0, res.stdout + res.stderr
    a = adapterctl.open(out)
    assert a.roles() == {"content": 80, "style": 80} and a.method == "b-lora" and a.layout == "kohya"
    assert a.manifest.preset == "b-lora" and a.arch.name == "sdxl-tiny"
    assert all(e.role_source == "declared" for e in a.modules)
    assert len({e.alpha for e in a.modules}) == 1, "one uniform alpha (ComfyUI/A1111 scale it right)"
    (op,) = a.manifest.provenance.operations
    args = op.args
    assert op.op == "train" and args["method"] == "b-lora" and args["steps"] == 16
    assert args["image_sha256"] == load_image(photo).sha256 and args["prompt"] == "A [v]"
    assert args["base"] == "tiny" and args["rank"] == 8 and args["lr"] == 0.1 and args["seed"] == 0
    assert {"torch", "diffusers", "transformers"} <= set(args)
    assert a.metadata["modelspec.trigger_phrase"] == "[v]" and "photo" in a.metadata["modelspec.title"]


def test_split_style_loads_in_diffusers_and_touches_only_the_style_block(blora, tmp_path):
    _, _, out = blora
    style = tmp_path / "style.safetensors"
    (res,) = run_cli_batch([["split", out, "--keep", "style", "-o", style]])
    assert res.rc == 0, res.stderr
    unet = load_base("tiny").pipe.unet
    loaded = diffusers_load(style, {"unet": unet})
    assert {n.split(".transformer_blocks")[0] for n in loaded} == {f"unet.{STYLE_BLOCK}"}
    assert_same_deltas(loaded, adapterctl_deltas(adapterctl.open(style)), what="style split in diffusers")
    assert len(loaded) == 80


def test_resume_equals_uninterrupted_bit_for_bit(photo, tmp_path):
    whole, _, _ = _run(photo, steps=4, lr=1e-3, flip=True)
    base = load_base("tiny")
    cfg = TrainConfig(steps=4, lr=1e-3, flip=True).resolved(base.arch, base.resolution)
    image, ckpt = load_image(photo), tmp_path / "run.ckpt.safetensors"
    done = []
    first = train(cfg, image, base, fingerprint=cfg.fingerprint(), checkpoint=ckpt,
                  progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2)
    assert first.stopped and first.steps_done == 2 and ckpt.exists()
    base = load_base("tiny")
    rest = train(cfg, image, base, fingerprint=cfg.fingerprint(), resume=ckpt)
    assert rest.resumed_from == 2 and rest.losses == whole.losses
    a, b = dict(trainable(whole.wrappers)), dict(trainable(rest.wrappers))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unziplora_masks_are_disjoint_where_columns_are_separated(photo, tmp_path):
    result, base, image = _run(photo, method="unziplora", steps=4, mask_every=2, lr=1e-3)
    free = role_presets("sdxl-tiny")["unziplora"].roles
    separated = 0
    for name, w in result.wrappers.items():
        block = TINY.block_of(name)
        owner = [role for role, blocks in free.items() if block in blocks]
        if owner:  # block separation: that role alone, every column, no mask
            assert list(w.branches) == owner and w.branches[owner[0]].mask is None
            continue
        separated += 1
        content, style = (w.branches[r].mask > 0 for r in ("content", "style"))
        assert not bool((content & style).any()), f"{name}: content and style share a column"
        k = -(-w.branches["content"].out_features // 10)
        assert int(content.sum()) == int(style.sum()) == 2 * k, "two rounds of top-10% picks each"
    in_free = sum(TINY.block_of(n) in {b for bs in free.values() for b in bs} for n in result.wrappers)
    assert separated == len(result.wrappers) - in_free and separated > 0
    from adapterctl.torch.export import to_adapter

    out = tmp_path / "u.safetensors"
    to_adapter(result, image, base, layout="diffusers").save(out)
    a = adapterctl.open(out)
    assert a.method == "unziplora" and set(a.roles()) == {"content", "style"}
    shared = [m for m in {e.module for e in a.modules} if sum(e.module == m for e in a.modules) == 2]
    assert len(shared) == separated
    # The file's two branches of a separated module write disjoint output rows (masks folded into up).
    deltas = {}
    for entry in a.modules:
        f = a.branch(entry)
        deltas[(entry.module, entry.role)] = np.abs(f.dense()).sum(axis=1) > 0
    for m in shared[:20]:
        assert not np.any(deltas[(m, "content")] & deltas[(m, "style")])
    style = tmp_path / "u.style.safetensors"
    (res,) = run_cli_batch([["split", out, "--keep", "style", "-o", style]])
    assert res.rc == 0, res.stderr
    loaded = diffusers_load(style, {"unet": load_base("tiny").pipe.unet})
    assert_same_deltas(loaded, adapterctl_deltas(adapterctl.open(style)), what="unziplora style in diffusers")


def test_blockwise_trains_chosen_blocks_with_locon(photo):
    result, _, _ = _run(photo, method="blockwise", blocks=("OUT02",), conv_rank=4, steps=1)
    blocks = {TINY.block_of(n) for n in result.wrappers}
    assert blocks == {"up_blocks.0.attentions.2", "up_blocks.0.resnets.2", "up_blocks.0.upsamplers.0"}
    convs = [n for n in result.wrappers if TINY.modules[n].kind == "conv"]
    assert convs and all(result.wrappers[n].branches["lora"].rank == 4 for n in convs)


def test_save_pretrained_folder_is_the_same_base(photo, tmp_path):
    """--base DIR goes through diffusers' real loading path; tiny saved and reloaded is the same model,
    so the same run gives the same adapter bytes."""
    folder = tmp_path / "tiny-sdxl"
    load_base("tiny").pipe.save_pretrained(folder)
    outs = []
    for base in ("tiny", str(folder)):
        target = tmp_path / f"{len(outs)}.safetensors"
        planned = job.plan([photo], TrainConfig(steps=2, lr=1e-3), output=target, base=base, force=False,
                           resume=None, layout="kohya")
        (outcome,) = job.train_images(planned, TrainConfig(steps=2, lr=1e-3), base=base)
        outs.append(target)
    from safetensors.numpy import load_file

    a, b = load_file(str(outs[0])), load_file(str(outs[1]))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ops = [adapterctl.open(p).manifest.provenance.operations[0].args["base"] for p in outs]
    assert ops == ["tiny", str(folder)]


def test_cli_train_json_and_layouts(photo, tmp_path):
    out = tmp_path / "p.safetensors"
    (res,) = run_cli_batch([["train", photo, "--base", "tiny", "--steps", "2", "--layout", "diffusers", "-o", out,
                             "--json"]])
    assert res.rc == 0, res.stderr
    import json

    doc = json.loads(res.stdout)
    (item,) = doc["adapters"]
    assert item["steps"] == 2 and item["output"].endswith("p.safetensors") and item["loss"]["first"] > 0
    a = adapterctl.open(out)
    assert a.layout == "diffusers" and a.roles() == {"content": 80, "style": 80}
    loaded = diffusers_load(out, {"unet": load_base("tiny").pipe.unet})
    assert_same_deltas(loaded, adapterctl_deltas(a), what="trained diffusers layout")
