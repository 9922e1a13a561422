#!/usr/bin/env python
"""Training-loop benchmark: adapterctl's B-LoRA loop against a reference-style loop, same model, one run.

    .venv/bin/python bench/bench_train.py --runs 3                  # tiny base, CPU, 2 threads
    .venv/bin/python bench/bench_train.py --device cuda --full-sdxl  # SDXL architecture, random weights
    .venv/bin/python bench/bench_train.py --full-sdxl --dry-run      # build it on `meta`: shapes only

* **ours**: ``adapterctl.torch.train.train`` itself: latents and prompt embeddings computed once,
  VAE and both text encoders freed before the loop.
* **ref**: the reference trainers' loop on the same model, LoRA modules (``adapt`` +
  ``MethodHooks``), optimizer, noise, timesteps and loss, but ``vae.encode`` (fp32) on the image at
  every step and both text encoders kept loaded (in the weights' dtype) after one prompt encode.

Each variant runs in a fresh interpreter (rounds interleaved). Step times come from the progress
callback; ``--warmup`` steps are left out and setup is reported apart. Memory: RSS after the base
is built, peak over the run, and peak over the measured steps (``/proc/self/clear_refs`` resets
the high-water mark after the warm-up); on CUDA the allocator's statistics. Checks: same modules
and parameter count, finite losses, every LoRA moved, the reference's latent mean equals ours.

``--full-sdxl``: the SDXL architecture from ``load_arch("sdxl")``'s configs, random weights, handed
to both loops in fp32 on the CPU as ``load_base`` returns a pipeline. No SDXL tokenizer files exist
offline, so its tokenizers use the tiny base's 514-token vocabulary (ids fit the 49408-entry
embeddings): prompt text does not change speed or memory.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_files", HERE / "bench_files.py")
bf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bf)  # stdlib-only at import: the parent never imports torch

VARIANTS = ("ours", "ref")
TARGETS = [  # for real SDXL on one GPU (the issue); judged only with --device cuda --full-sdxl
    ("speedup", "ref s/step ÷ ours", ">=", 1.5), ("peak_ratio", "ours peak ÷ ref peak", "<=", 0.6),
    ("peak_gb", "ours peak memory, GB (1e9 B)", "<=", 14.0),
    ("projected_1000_s", "ours setup + 1000 steps, s", "<=", 600.0)]


# ---------------------------------------------------------------------------------------- child
def build_full_sdxl(device: str):
    """The SDXL pipeline from the shipped configs, random weights, built directly on ``device``."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from adapterctl.arch import load_arch
    from adapterctl.torch.base import TINY_ARCH, BaseModel, _strip, _tokenizer_args

    arch = load_arch("sdxl")
    torch.manual_seed(0)
    with torch.device(device):
        models = {"unet": UNet2DConditionModel.from_config(arch.config("unet")),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**arch.config("text_encoder"))),
                  "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**arch.config("text_encoder_2"))),
                  "vae": AutoencoderKL.from_config(_strip(arch.pipeline_config("vae")))}
    vocab = json.loads((load_arch(TINY_ARCH).tokenizer_dir() / "vocab.json").read_text(encoding="utf-8"))
    toks = {n: CLIPTokenizer(vocab=vocab, merges=[], **_tokenizer_args(arch.pipeline_config(n)))
            for n in ("tokenizer", "tokenizer_2")}
    pipe = StableDiffusionXLPipeline(scheduler=EulerDiscreteScheduler.from_config(
        _strip(arch.pipeline_config("scheduler"))), **models, **toks)
    for m in models.values():
        m.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return BaseModel(pipe, arch, "sdxl-random", None)


def _image(tmp: str):
    import numpy as np
    from PIL import Image

    from adapterctl.torch.images import load_image

    rng = np.random.default_rng(0)  # smooth gradients plus noise: a deterministic 640x512 photo stand-in
    y, x = np.mgrid[0:512, 0:640]
    rgb = np.stack([x / 640 * 255, y / 512 * 255, (x + y) % 256], -1) + rng.normal(0, 20, (512, 640, 3))
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(f"{tmp}/photo.png")
    return load_image(f"{tmp}/photo.png")


class Meter:
    """Step timestamps and memory: the high-water mark is reset once the warm-up steps are done."""

    def __init__(self, warmup: int, cuda: bool):
        import torch

        self.torch, self.warmup, self.cuda, self.seconds, self.losses, self.vae_s = torch, warmup, cuda, [], [], []

    def now_mb(self) -> dict:
        if self.cuda:
            c = self.torch.cuda
            return {"cur": c.memory_allocated() / 2**20, "peak": c.max_memory_allocated() / 2**20}
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return {"cur": int(status["VmRSS"].split()[0]) / 1024, "peak": int(status["VmHWM"].split()[0]) / 1024}

    def step(self, step: int, loss: float, seconds: float) -> None:
        self.seconds.append(seconds)
        self.losses.append(loss)
        if step == self.warmup:
            self.setup_peak = self.now_mb()["peak"]
            if self.cuda:
                self.torch.cuda.synchronize()
                self.torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def ref_loop(config, image, base, meter: Meter):
    """train()'s loop with the reference's waste: the VAE encode at every step, the text encoders kept loaded."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from adapterctl.torch.encode import encode_prompt, unet_inputs
    from adapterctl.torch.images import prepare, to_tensor
    from adapterctl.torch.layers import adapt, trainable
    from adapterctl.torch.methods import MethodHooks
    from adapterctl.torch.recipe import get_method
    from adapterctl.torch.train import _optimizer, pick_device

    method = get_method(config.method)
    device, half = pick_device()
    wdt = torch.float32 if config.precision == "no" or device.type == "cpu" else \
        {"auto": half, "fp16": torch.float16, "bf16": torch.bfloat16}[config.precision]
    pipe = base.pipe  # each part to the device in the dtype the reference gives it
    pipe.vae.to(device, torch.float32)  # fp32, resident, run at every step
    pipe.text_encoder.to(device, wdt)  # the weights' dtype, and kept loaded after the prompt is encoded
    pipe.text_encoder_2.to(device, wdt)
    unet = pipe.unet
    unet.requires_grad_(False)
    unet.to(device, wdt)
    prompt = encode_prompt(pipe, config.prompt, device)  # once, as the reference
    vae, res = pipe.vae, config.resolution
    array, crop = prepare(image, res)
    pixels = to_tensor(array).to(device, torch.float32)
    time_ids = torch.tensor([[*image.original_size, crop[0], crop[1], res, res]], dtype=torch.float32)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    wrappers = adapt({"unet": unet}, method.targets(base.arch, config), contexts={})
    hooks = MethodHooks(method, base.arch, config)
    hooks.build(wrappers, torch.Generator().manual_seed(config.seed))
    for w in wrappers.values():
        w.branches.to(device)
    params = trainable(wrappers)
    optimizer, _ = _optimizer(hooks.param_groups(params, config), config, device)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas, n_t = sched.alphas_cumprod.to(device), sched.config.num_train_timesteps
    gen = torch.Generator().manual_seed(config.seed + 1)
    cond = unet_inputs(prompt, time_ids, device, wdt)
    factor, trainable_params = vae.config.scaling_factor, [p for _, p in params]
    started = time.perf_counter()
    for step in range(config.steps):
        t_vae = time.perf_counter()
        with torch.no_grad():
            dist = vae.encode(pixels).latent_dist
        mean, std = dist.mean.float() * factor, dist.std.float() * factor
        if device.type == "cuda":
            torch.cuda.synchronize()
        meter.vae_s.append(time.perf_counter() - t_vae)  # the step's share that re-encodes, same process
        latent = mean + std * torch.randn(mean.shape, generator=gen).to(device)
        noise = torch.randn(latent.shape, generator=gen).to(device)
        t = torch.randint(0, n_t, (1,), generator=gen).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latent + (1 - a).sqrt() * noise).to(wdt)
        with torch.autocast(device.type, dtype=wdt, enabled=device.type == "cuda"):
            pred = unet(noisy, t, **cond).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable_params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step(step + 1, float(loss.detach()), time.perf_counter() - started)
    return wrappers, mean


def child(args) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    from adapterctl.torch.base import load_base
    from adapterctl.torch.recipe import TrainConfig
    from adapterctl.torch.train import pick_device, train

    cuda = pick_device()[0].type == "cuda"
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no GPU")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        image = _image(tmp)
    base = build_full_sdxl("cuda" if cuda else "cpu") if args.full_sdxl else load_base("tiny")
    if cuda:  # as load_base returns it: on the CPU, in fp32 (built on the GPU only because that is faster)
        base.pipe.to("cpu")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(method="b-lora", steps=args.warmup + args.steps, resolution=args.resolution,
                         gradient_checkpointing=args.gradient_checkpointing).resolved(base.arch, base.resolution)
    meter = Meter(args.warmup, cuda)
    built, t1 = meter.now_mb()["cur"], time.perf_counter()
    out = {"variant": args.variant, "latent_check": None}
    if args.variant == "ours":
        result = train(config, image, base, fingerprint={"bench": True},
                       progress=lambda p: meter.step(p.step, p.loss, p.seconds))
        wrappers = result.wrappers
    else:
        wrappers, step_mean = ref_loop(config, image, base, meter)
    if cuda:
        torch.cuda.synchronize()
    mem, t_end = meter.now_mb(), time.perf_counter()
    if args.variant == "ref":  # after the clock: one more encode, as train() does it, on the same pixels
        from adapterctl.torch.encode import encode_image

        ours_mean = encode_image(base.pipe, image, config.resolution, flip=False, device=step_mean.device).mean
        out["latent_check"] = float((ours_mean - step_mean).abs().max() / ours_mean.abs().max())
    secs = meter.seconds
    steps = [b - a for a, b in zip([0.0] + secs, secs)][args.warmup:]
    ups = [b.up.detach().float().abs().sum().item() for w in wrappers.values() for b in w.branches.values()]
    out.update({
        "device": "cuda" if cuda else "cpu", "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "base": base.name,
        "resolution": config.resolution, "rank": config.rank, "modules": len(wrappers),
        "lora_params": sum(b.down.numel() + b.up.numel() for w in wrappers.values() for b in w.branches.values()),
        "build_s": t1 - t0, "setup_s": (t_end - t1) - secs[-1], "step_s": steps,
        "s_per_step": statistics.median(steps), "losses_finite": all(map(math.isfinite, meter.losses)),
        "vae_share": statistics.median(v / d for v, d in zip(meter.vae_s[args.warmup:], steps))
        if meter.vae_s else None,
        "losses": meter.losses, "loras_moved": sum(u > 0 for u in ups),
        "loras": len(ups), "memory": "cuda max_memory_allocated" if cuda else "RSS (VmRSS/VmHWM)",
        "built_mb": built, "setup_peak_mb": meter.setup_peak, "loop_peak_mb": mem["peak"], "end_mb": mem["cur"],
        "peak_mb": max(meter.setup_peak, mem["peak"])})
    return out


def dry_run(args) -> dict:
    """Full SDXL on `meta` (no memory): both loops' setup and one step's shapes, forward and backward."""
    import tempfile

    import torch

    from adapterctl.torch.encode import encode_image, encode_prompt, unet_inputs
    from adapterctl.torch.layers import adapt, trainable
    from adapterctl.torch.methods import MethodHooks
    from adapterctl.torch.recipe import TrainConfig, get_method

    t0 = time.perf_counter()
    base = build_full_sdxl("meta")
    config = TrainConfig(method="b-lora", resolution=args.resolution).resolved(base.arch, base.resolution)
    pipe, method = base.pipe, get_method(config.method)
    n = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("unet", "vae", "text_encoder",
                                                                            "text_encoder_2")}
    with tempfile.TemporaryDirectory() as tmp:
        image = _image(tmp)
    prompt = encode_prompt(pipe, config.prompt, "meta")
    latents = encode_image(pipe, image, config.resolution, flip=False, device="meta")
    wrappers = adapt({"unet": pipe.unet.to(torch.bfloat16)}, method.targets(base.arch, config))
    with torch.device("meta"):
        MethodHooks(method, base.arch, config).build(wrappers, None)
    pred = pipe.unet(torch.zeros(latents.mean.shape, device="meta", dtype=torch.bfloat16),
                     torch.zeros(1, dtype=torch.long, device="meta"),
                     **unet_inputs(prompt, latents.time_ids, "meta", torch.bfloat16)).sample
    pred.float().square().mean().backward()
    params = trainable(wrappers)
    if not all(p.grad is not None and p.grad.shape == p.shape for _, p in params):
        raise SystemExit("CHECK FAILED: a LoRA parameter got no gradient")
    lora = sum(p.numel() for _, p in params)
    # Weights alone (no activations), GB: in the loop, a bf16 UNet plus fp32 LoRA, grads and AdamW's two
    # states; the reference also keeps bf16 TEs and the fp32 VAE. train() moves the whole fp32 pipeline
    # to the device before it encodes (its setup peak); the reference moves each part in its final dtype.
    loop = (2 * n["unet"] + 16 * lora) / 1e9
    return {"dry_run": True, "base": base.name, "resolution": config.resolution, "rank": config.rank,
            "modules": len(wrappers), "lora_params": lora, "params": n, "latent_shape": list(latents.mean.shape),
            "prompt_shape": list(prompt.tokens.shape), "unet_out_shape": list(pred.shape),
            "weights_gb": {"ours_loop": loop, "ref_loop": loop + (2 * (n["text_encoder"] + n["text_encoder_2"])
                                                                  + 4 * n["vae"]) / 1e9,
                           "ours_setup_fp32_pipeline": 4 * sum(n.values()) / 1e9},
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------- parent
def summarize(runs: list[dict]) -> dict:
    med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
    return {"runs": len(runs), "s_per_step": med("s_per_step"), "min_step_s": min(min(r["step_s"]) for r in runs),
            "max_step_s": max(max(r["step_s"]) for r in runs), "setup_s": med("setup_s"), "build_s": med("build_s"),
            "built_mb": med("built_mb"), "peak_mb": max(r["peak_mb"] for r in runs),
            "loop_peak_mb": max(r["loop_peak_mb"] for r in runs),
            "above_built_mb": max(r["peak_mb"] - r["built_mb"] for r in runs),
            "others_cores": med("others_cores"), "discarded_attempts": sum(r["discarded"] for r in runs),
            "per_run": runs}


def render(s: dict, ratios: dict, unit: str) -> str:
    lines = [f"| loop | s/step (median) | min–max s | setup s | build s | after build {unit} | peak {unit} | "
             f"peak in loop {unit} | peak − after build {unit} | others' cores |", "|---|" + "---:|" * 9]
    for v, label in (("ours", "ours (`train()`)"), ("ref", "reference-style (VAE every step, TEs loaded)")):
        x = s[v]
        lines.append(f"| {label} | {x['s_per_step']:.3f} | {x['min_step_s']:.3f}–{x['max_step_s']:.3f} | "
                     f"{x['setup_s']:.2f} | {x['build_s']:.2f} | {x['built_mb']:.0f} | {x['peak_mb']:.0f} | "
                     f"{x['loop_peak_mb']:.0f} | {x['above_built_mb']:.0f} | {x['others_cores']:.2f} |")
    lines.append(f"| **ours ÷ ref** | **{ratios['s_per_step']:.3f}** | | {ratios['setup_s']:.2f} | | | "
                 f"**{ratios['peak_mb']:.3f}** | {ratios['loop_peak_mb']:.3f} | {ratios['above_built_mb']:.3f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", choices=("child",), help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=30, help="measured steps per run (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="steps run first and not measured (default 3, min 1)")
    ap.add_argument("--runs", type=int, default=1, help="fresh processes per variant, interleaved (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in both (default 2)")
    ap.add_argument("--resolution", type=int, help="training resolution (default: the base's, 128 tiny, 1024 SDXL)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--full-sdxl", action="store_true", help="the SDXL architecture, random weights (needs cuda)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="in both loops (the reference uses it)")
    ap.add_argument("--dry-run", action="store_true", help="with --full-sdxl: build on `meta`, check shapes, no timing")
    ap.add_argument("--max-contention", type=float, default=0.5, metavar="CORES",
                    help="repeat a run when other processes used more cores meanwhile (default 0.5; <0: never)")
    ap.add_argument("--retries", type=int, default=2, help="repeats per run at most, the quietest kept (default 2)")
    ap.add_argument("--json", action="store_true", help="print the results JSON instead of the table")
    ap.add_argument("--out-dir", type=Path, default=HERE / "out")
    args = ap.parse_args(argv)
    if args.mode == "child":
        print(json.dumps(dry_run(args) if args.dry_run else child(args)))
        return 0
    if args.warmup < 1 or args.steps < 1 or args.runs < 1:
        ap.error("--warmup, --steps and --runs must be at least 1")
    if args.dry_run and not args.full_sdxl:
        ap.error("--dry-run checks the --full-sdxl path")
    if args.full_sdxl and args.device != "cuda" and not args.dry_run:
        ap.error("--full-sdxl needs --device cuda (about 14 GB of fp32 weights); on a CPU use --dry-run")
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # train() takes a GPU whenever it sees one
    me = str(Path(__file__).resolve())
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]

    def run(variant: str) -> dict:
        """One fresh child; repeated (up to --retries) while other processes used > --max-contention cores."""
        best, stdout = None, out / f"train-run-{variant}.stdout"
        for attempt in range(1 + (args.retries if args.max_contention >= 0 else 0)):
            res = bf.spawn([sys.executable, me, "child", "--variant", variant, *passed], stdout_path=stdout, env=env)
            if res["rc"]:
                raise SystemExit(f"FAILED: {variant} exited {res['rc']}\n{res['stderr']}")
            got = {**json.loads(stdout.read_text().strip().splitlines()[-1]), "wall_s": res["wall_s"],
                   "others_cores": res["contention"] or 0.0, "discarded": attempt}
            best = got if best is None or got["others_cores"] < best["others_cores"] else {**best, "discarded": attempt}
            if args.max_contention < 0 or got["others_cores"] <= args.max_contention:
                break
        return best

    if args.dry_run:
        result = run("ours")
        print(json.dumps(result, indent=2))
        return 0
    load_before = os.getloadavg()
    runs: dict[str, list] = {v: [] for v in VARIANTS}
    for r in range(args.runs):
        for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            runs[v].append(run(v))
            if not args.json:
                print(f"round {r + 1}/{args.runs}: {v} {runs[v][-1]['s_per_step']:.3f} s/step, "
                      f"peak {runs[v][-1]['peak_mb']:.0f} MiB", file=sys.stderr)
    load_after = os.getloadavg()
    s = {v: summarize(runs[v]) for v in VARIANTS}
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise SystemExit(f"CHECK FAILED: {what}")

    first, refs = runs["ours"][0], runs["ref"]
    for r in runs["ours"] + refs:
        need((r["modules"], r["lora_params"]) == (first["modules"], first["lora_params"]), "different LoRA modules")
        need(r["losses_finite"], f"{r['variant']}: a loss was not finite")
        need(r["loras_moved"] == r["loras"], f"{r['variant']}: {r['loras'] - r['loras_moved']} LoRAs never moved")
    worst = max(r["latent_check"] for r in refs)
    need(worst <= 1e-4, f"the reference's per-step latent mean differs from train()'s: {worst:.2e}")
    # Same draws in the same order: on a CPU (fp32 everywhere) both loops follow one trajectory.
    drift = max(abs(x - y) / abs(x) for a in runs["ours"] for b in refs for x, y in zip(a["losses"], b["losses"]))
    need(first["device"] != "cpu" or drift <= 1e-4, f"the loops' losses differ on a CPU: {drift:.2e}")
    checks = [f"same {first['modules']} modules and {first['lora_params']} LoRA parameters in both",
              "every loss finite; every LoRA's up moved from 0", f"losses: ours vs reference max rel. diff {drift:.1e}"
              + (" (same trajectory)" if first["device"] == "cpu" else " (TE dtypes differ on a GPU)"),
              f"the reference's per-step latent mean = train()'s encode_image mean (max rel. diff {worst:.1e})"]
    ratios = {k: s["ours"][k] / s["ref"][k] for k in ("s_per_step", "setup_s", "peak_mb", "loop_peak_mb",
                                                      "above_built_mb")}
    judged = first["device"] == "cuda" and args.full_sdxl
    share = statistics.median(r["vae_share"] for r in refs)
    values = {"speedup": 1 / ratios["s_per_step"], "peak_ratio": ratios["peak_mb"],
              "peak_gb": s["ours"]["peak_mb"] * 2**20 / 1e9,
              "projected_1000_s": s["ours"]["setup_s"] + 1000 * s["ours"]["s_per_step"]}
    targets = [{"target": f"{name} {op} {goal}", "value": values[key], "judged": judged,
                "met": (values[key] >= goal if op == ">=" else values[key] <= goal) if judged else None}
               for key, name, op, goal in TARGETS]
    unit = "MiB"
    table = render(s, ratios, unit)
    results = {
        "schema": "adapterctl.bench-train/1",
        "when": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "command": " ".join([Path(sys.executable).name, "bench/bench_train.py", *passed]),
        "machine": bf.machine_info(out), "device": first["device"], "gpu": first["gpu"], "torch": first["torch"],
        "threads": first["threads"], "base": first["base"], "resolution": first["resolution"], "rank": first["rank"],
        "modules": first["modules"], "lora_params": first["lora_params"], "steps": args.steps, "warmup": args.warmup,
        "memory_metric": first["memory"], "memory_unit": unit,
        "loadavg_1_5_15": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "variants": s, "ratios": ratios, "speedup": values["speedup"],
        "ref_vae_share": share, "speedup_from_vae_share": 1 / (1 - share), "targets": targets, "checks": checks,
        "table_markdown": table}
    (out / "train-results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, torch {first['torch']}, "
          f"{first['threads']} threads, device {first['device']}{' (' + first['gpu'] + ')' if first['gpu'] else ''}"
          f"; base {first['base']} at {first['resolution']} px, rank {first['rank']}, {first['modules']} modules; "
          f"{args.steps} measured steps after {args.warmup} warm-up, {args.runs} run(s); memory: {first['memory']}; "
          f"load average before/after {load_before[0]:.2f}/{load_after[0]:.2f}; discarded (contended) attempts: "
          f"{sum(x['discarded_attempts'] for x in s.values())}\n")
    print(table)
    print(f"\nspeed-up (ref s/step ÷ ours): {values['speedup']:.3f}; within the reference's own steps the VAE "
          f"re-encode takes {share:.1%} (median per step), i.e. ×{1 / (1 - share):.3f} if the rest were equal")
    print("targets" + ("" if judged else " (for SDXL on a GPU; not judged here)") + ":")
    for t in targets:
        print(f"  {({True: 'met', False: 'MISSED', None: 'n/a'})[t['met']]:6} {t['target']}: {t['value']:.3f}")
    print("checks:\n" + "\n".join(f"  ok  {c}" for c in checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
