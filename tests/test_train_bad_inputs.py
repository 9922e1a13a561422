"""Bad and odd inputs to ``adapterctl train``, through the real CLI, on ``--base tiny``.

Contract for a bad input: exactly one stderr line, starting 'error:', a non-zero exit code that
is not 70 (an internal error, i.e. a bug), the expected words in it, no traceback, and nothing
written: the directory listing (hidden temporaries, adapters and checkpoints included) and every
input's bytes are unchanged. Odd-but-valid images (CMYK, 16-bit, palette, alpha) are converted,
trained on, and the conversion is reported on stderr and in the adapter's provenance.

Cost: the CLI cases run in one interpreter (``_batch``: each call through ``cli.main.run``, with
its own environment variables); Ctrl-C runs a real process, because it needs a real signal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import REPO, CliResult, cli_env, listing, run_cli_jobs
from PIL import Image


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ADAPTER = REPO / "spec" / "vectors" / "valid_kohya_sgm_locon.safetensors"


def env(**extra: str) -> dict[str, str]:
    out = {**cli_env(), **ENV, **extra}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # the test's own launcher must not leak in
        if var not in extra:
            out.pop(var, None)
    return out


def _batch(jobs: list[tuple[list, Path, dict]], timeout: float = 600) -> list[CliResult]:
    return run_cli_jobs(jobs, env=env(), cwd=REPO, timeout=timeout)


def photo(path: Path, seed: int = 0, size: tuple[int, int] = (96, 80)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# -- a real checkpoint, for the --resume cases ------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(image, checkpoint): a b-lora run on tiny with the CLI's defaults and --steps 3, stopped
    after its first step through the library's should_stop (the path Ctrl-C takes)."""
    import torch

    from adapterctl.errors import TrainingInterrupted
    from adapterctl.torch import job
    from adapterctl.torch.recipe import TrainConfig

    d = tmp_path_factory.mktemp("ckpt")
    image = photo(d / "photo.png")
    config = TrainConfig(steps=3)
    planned = job.plan([image], config, output=d / "run.safetensors", base="tiny", force=False, resume=None,
                       layout="kohya")
    answers = iter([False])  # go on before step 1, stop before step 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(TrainingInterrupted, match="interrupted at step 1 of 3"):
            job.train_images(planned, config, base="tiny", should_stop=lambda: next(answers, True))
    finally:
        torch.set_num_threads(threads)
    ckpt = d / "run.safetensors.ckpt.safetensors"
    assert ckpt.is_file() and not (d / "run.safetensors").exists()
    return image, ckpt


# -- bad inputs -------------------------------------------------------------------------------
# Each case: (id, setup(d, ckpt) -> argv after 'train', exit code, words the error line must hold).
# Every argv writes into d (-o), so a listing of d shows anything a failed run leaves behind.

def _text_png(d, _):
    (d / "photo.png").write_text("these are not the pixels you are looking for\n")
    return [d / "photo.png"]


def _empty(d, _):
    (d / "empty.png").write_bytes(b"")
    return [d / "empty.png"]


def _directory(d, _):
    (d / "folder.png").mkdir()
    return [d / "folder.png"]


def _small(d, _):
    return [photo(d / "small.png", size=(40, 30))]


def _ok(*flags):
    def setup(d, _):
        return [photo(d / "photo.png"), *flags]
    return setup


def _ckpt_base(d, _):
    (d / "model.ckpt").write_bytes(b"\x80\x04\x95 not loaded: a pickle would run code")
    return [photo(d / "photo.png"), "--base", d / "model.ckpt"]


def _output_exists(d, _):
    (d / "out.safetensors").write_bytes(b"the user's file")
    return [photo(d / "photo.png")]


def _output_is_input(d, _):
    image = photo(d / "photo.png")
    return [image, "--force", "-o", image]


def _resume_adapter(d, _):
    adapter = d / "adapter.safetensors"
    adapter.write_bytes(ADAPTER.read_bytes())
    return [photo(d / "photo.png"), "--resume", adapter]


def _resume_other(*flags):
    def setup(d, ckpt):
        image, source = ckpt
        (d / "photo.png").write_bytes(image.read_bytes())
        (d / "run.ckpt.safetensors").write_bytes(source.read_bytes())
        return [d / "photo.png", "--steps", "3", "--resume", d / "run.ckpt.safetensors", *flags]
    return setup


CASES = [
    ("text-file-named-png", _text_png, 3, ["photo.png", "not an image"]),
    ("empty-file", _empty, 3, ["empty.png", "empty file"]),
    ("directory-as-image", _directory, 2, ["folder.png", "directory"]),
    ("missing-image", lambda d, _: [d / "missing.png"], 2, ["missing.png", "no such file"]),
    ("image-40x30", _small, 3, ["40x30", "64 px"]),
    ("unknown-method", _ok("--method", "nope"), 2, ["'nope'", "b-lora", "unziplora", "blockwise"]),
    ("blockwise-without-blocks", _ok("--method", "blockwise"), 2, ["--blocks"]),
    ("blockwise-unknown-block", _ok("--method", "blockwise", "--blocks", "up_blocks.9.attentions.0"), 2,
     ["up_blocks.9.attentions.0", "does not exist"]),
    ("blocks-with-b-lora", _ok("--blocks", "OUT01"), 2, ["--blocks", "b-lora"]),
    ("resolution-not-multiple-of-32", _ok("--resolution", "100"), 2, ["--resolution 100", "multiple of 32"]),
    ("rank-too-large", _ok("--rank", "1000"), 2, ["rank 1000 exceeds", "--rank"]),
    ("base-missing-dir", _ok("--base", "/nonexistent/dir"), 2, ["/nonexistent/dir", "--base PATH"]),
    ("base-hub-id-offline", _ok("--base", "some-org/some-model"), 2,
     ["some-org/some-model", "cache", "--base PATH"]),
    ("base-ckpt-pickle", _ckpt_base, 3, ["model.ckpt", ".safetensors"]),
    ("output-exists", _output_exists, 6, ["out.safetensors", "exists", "--force"]),
    ("output-is-the-image", _output_is_input, 2, ["photo.png", "input"]),
    ("unziplora-kohya-layout", _ok("--method", "unziplora", "--layout", "kohya"), 2,
     ["unziplora", "--layout kohya", "diffusers"]),
    ("resume-missing", _ok("--resume", "gone.ckpt.safetensors"), 2, ["gone.ckpt.safetensors", "no such"]),
    ("resume-adapter-file", _resume_adapter, 3, ["adapter.safetensors", "not an adapterctl training checkpoint"]),
    ("resume-other-lr", _resume_other("--lr", "1e-4"), 2, ["another configuration", "lr 5e-05 -> 0.0001"]),
    ("resume-other-seed", _resume_other("--seed", "7"), 2, ["another configuration", "seed 0 -> 7"]),
    ("prompt-newline", _ok("--prompt", "A [v]\nin the snow"), 2, ["--prompt", "control characters"]),
    ("prompt-escape", _ok("--prompt", "A \x1b[31m[v]"), 2, ["--prompt", "control characters"]),
]


def _argv(d: Path, setup, ckpt) -> list[str]:
    args = setup(d, ckpt)
    argv = ["train", *args, *([] if "--base" in args else ["--base", "tiny"])]
    if "--steps" not in args:
        argv += ["--steps", "2"]
    if "-o" not in argv:
        argv += ["-o", d / "out.safetensors"]
    return [str(a) for a in argv]


# -- odd images, converted --------------------------------------------------------------------

def _cmyk(path):
    Image.new("CMYK", (80, 72), (0, 255, 0, 0)).save(path, "JPEG", quality=95)


def _grey16(path):
    values = (np.arange(72 * 80, dtype=np.uint32).reshape(72, 80) * 11).astype(np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")


def _palette(path):
    Image.open(photo(path)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    assert Image.open(path).mode == "P"


def _rgba(path):
    pixels = np.random.default_rng(1).integers(0, 256, (72, 80, 4), dtype=np.uint8)
    pixels[:, :40, 3] = 0  # half transparent
    Image.fromarray(pixels, "RGBA").save(path)


ODD = [
    ("cmyk-jpeg", "cmyk.jpg", _cmyk, ["converted CMYK to RGB"]),
    ("grey-16bit-png", "grey16.png", _grey16, ["reduced 16-bit samples to 8-bit",
                                               "grayscale image repeated into three channels"]),
    ("palette-png", "palette.png", _palette, ["expanded the palette to RGB"]),
    ("rgba-png", "rgba.png", _rgba, ["flattened the alpha channel onto white"]),
]


# -- all CLI cases in one interpreter ---------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, checkpoint):
    """case id -> (directory, argv, listing before, inputs' bytes before, result)."""
    root = tmp_path_factory.mktemp("train-bad")
    jobs, meta = [], []
    for case_id, setup, _, _ in CASES:
        d = root / case_id
        d.mkdir()
        argv = _argv(d, setup, checkpoint)
        jobs.append((argv, d, {}))
        meta.append((case_id, d, argv, listing(d)))
    for case_id, name, make, _ in ODD:
        d = root / case_id
        d.mkdir()
        make(d / name)
        argv = ["train", d / name, "--base", "tiny", "--steps", "1", "-o", d / "out.safetensors"]
        jobs.append((argv, d, {}))
        meta.append((case_id, d, argv, listing(d)))
    d = root / "odd-quiet"
    d.mkdir()
    _rgba(d / "rgba.png")
    argv = ["train", d / "rgba.png", "--base", "tiny", "--steps", "1", "--quiet", "-o", d / "out.safetensors"]
    jobs.append((argv, d, {}))
    meta.append(("odd-quiet", d, argv, listing(d)))
    for rank in (0, 1):  # one process of `accelerate launch --num_processes 2`
        d = root / f"rank{rank}"
        d.mkdir()
        (d / "outdir").mkdir()
        images = [photo(d / f"{n}.png", seed=i) for i, n in enumerate("abc")]
        argv = ["train", *images, "--base", "tiny", "--steps", "1", "-o", d / "outdir"]
        jobs.append((argv, d, {"WORLD_SIZE": "2", "RANK": str(rank)}))
        meta.append((f"rank{rank}", d, argv, listing(d)))
    before_root = set(os.listdir(root))
    results = _batch([(list(map(str, argv)), cwd, extra) for argv, cwd, extra in jobs])
    assert set(os.listdir(root)) == before_root, "a run wrote outside its directory (the cwd)"
    return {case_id: (d, argv, before, res) for (case_id, d, argv, before), res in zip(meta, results)}


@pytest.mark.parametrize("case_id,code,words", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_and_writes_nothing(runs, case_id, code, words):
    d, argv, before, res = runs[case_id]
    lines = res.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    assert len(errors) == 1 and lines[-1] == errors[0], f"{argv[1:]}: stderr {res.stderr!r}"
    assert res.rc not in (0, 70), f"exit {res.rc}: {errors[0]}"
    assert res.rc == code, f"exit {res.rc}, expected {code}: {errors[0]}"
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    after = listing(d)
    assert after == before, f"the directory changed: {sorted(set(after) ^ set(before))}"


@pytest.mark.parametrize("case_id", [c[0] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_prints_only_the_error_line(runs, case_id):
    res = runs[case_id][3]
    assert len(res.stderr.splitlines()) == 1 and res.stdout == "", (res.stdout, res.stderr)


def test_bad_resume_names_only_the_differing_field(runs):
    for case_id, field in (("resume-other-lr", "lr"), ("resume-other-seed", "seed")):
        line = runs[case_id][3].stderr.splitlines()[-1]
        inside = re.search(r"another configuration \((.*?)\) \(hint:", line)
        assert inside, line
        assert [part.split(" ")[0] for part in inside.group(1).split(", ")] == [field], line


@pytest.mark.parametrize("case_id,name,notes", [(c[0], c[1], c[3]) for c in ODD], ids=[c[0] for c in ODD])
def test_odd_image_is_converted_trained_and_reported(runs, case_id, name, notes):
    import adapterctl

    d, argv, _, res = runs[case_id]
    assert res.rc == 0, res.stderr
    assert (d / "out.safetensors").is_file()
    assert set(os.listdir(d)) == {name, "out.safetensors"}, "a checkpoint or temporary was left behind"
    note_lines = [line for line in res.stderr.splitlines()
                  if line.startswith(f"{d / name}: ") and not re.match(r"step \d+/1 ", line[len(f"{d / name}: "):])]
    assert [line.split(": ", 1)[1] for line in note_lines] == notes, res.stderr
    assert "error" not in res.stderr.lower()
    provenance = adapterctl.open(d / "out.safetensors").manifest.provenance
    assert provenance.operations[0].args["image_notes"] == notes


def test_odd_image_quiet_prints_nothing_but_records_the_note(runs):
    import adapterctl

    d, _, _, res = runs["odd-quiet"]
    assert res.rc == 0 and res.stderr == "" and res.stdout == "", (res.stdout, res.stderr)
    args = adapterctl.open(d / "out.safetensors").manifest.provenance.operations[0].args
    assert args["image_notes"] == ["flattened the alpha channel onto white"]


@pytest.mark.parametrize("rank,mine", [(0, "ac"), (1, "b")])
def test_each_process_trains_its_share_of_the_images(runs, rank, mine):
    d, _, _, res = runs[f"rank{rank}"]
    assert res.rc == 0, res.stderr
    assert sorted(os.listdir(d / "outdir")) == [f"{n}.b-lora.safetensors" for n in mine]
    assert sorted(os.listdir(d)) == ["a.png", "b.png", "c.png", "outdir"]


# -- Ctrl-C, then --resume: bit for bit the uninterrupted run ---------------------------------

def test_ctrl_c_checkpoints_and_resume_equals_the_uninterrupted_run(tmp_path):
    from safetensors.numpy import load_file

    photo(tmp_path / "photo.png")
    command = ["train", "photo.png", "--base", "tiny", "--steps", "20", "-o", "out.safetensors"]
    ckpt = tmp_path / "out.safetensors.ckpt.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "adapterctl.cli.main", *command], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    try:
        deadline = time.monotonic() + 300
        for raw in proc.stderr:  # non-TTY progress: a line per 10% (every 2 steps here)
            seen.append(raw.decode("utf-8", "replace"))
            step = re.match(r"photo\.png: step (\d+)/20 ", seen[-1])
            if step and int(step.group(1)) >= 2 or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(seen) + err.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    match = re.fullmatch(r"error: interrupted at step (\d+) of 20; checkpoint saved to "
                         r"out\.safetensors\.ckpt\.safetensors \(hint: .*--resume .*\)", errors[0])
    assert match and 2 <= int(match.group(1)) < 20, errors[0]
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stderr.splitlines()[-1] == errors[0], "the error must be the last line"
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors.ckpt.safetensors", "photo.png"]

    resumed, straight = _batch([(command + ["--resume", ckpt.name], tmp_path, {}),
                                (command[:-1] + ["straight.safetensors"], tmp_path, {})])
    assert resumed.rc == 0, resumed.stderr
    assert straight.rc == 0, straight.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors", "photo.png", "straight.safetensors"], \
        "the checkpoint must be removed once the adapter is written"
    a, b = load_file(str(tmp_path / "out.safetensors")), load_file(str(tmp_path / "straight.safetensors"))
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key

