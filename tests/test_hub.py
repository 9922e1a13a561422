"""push, pull and sync through the real CLI against the Hub-protocol test server (tests/hub_server.py).

The real Hub is unreachable from these machines; the server speaks the protocol huggingface_hub 2.4 uses
(HF_HUB_DISABLE_XET=1), and nothing in the client is patched. CLI calls run in child interpreters (batched
through _cli_helpers.run_cli_jobs: HF_ENDPOINT and HF_HUB_OFFLINE are read per call, HF_HOME once per batch,
so each batch gets its own cache). The card tests need no server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

from _cli_helpers import REPO, cli_env, listing, run_cli_jobs  # noqa: E402
from hub_server import HubServer  # noqa: E402

BLORA = REPO / "adapterctl" / "examples" / "blora_example.safetensors"
PAINTING = REPO / "adapterctl" / "examples" / "blora_painting_example.safetensors"
SHARED = REPO / "spec" / "vectors" / "valid_content_style_same_module.safetensors"
HOSTILE = REPO / "spec" / "vectors" / "valid_control_chars.safetensors"
SEEN: list = []  # every CLI result and every directory written, for the token check at the end


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubServer(tmp_path_factory.mktemp("hubstate")) as server:
        yield server
    assert not server.errors, server.errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("hubwork")


def cli(hub, jobs, *, home: Path, offline: bool = False, token=True):
    """Run CLI calls in one child interpreter with its own HF_HOME. ``jobs``: argv lists, or (argv, extra env)."""
    env = dict(cli_env(), HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_ENDPOINT=hub.url,
               HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_TOKEN", None)
    if token:
        env["HF_TOKEN"] = hub.token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    batch = [(argv, None, extra) for argv, extra in (j if isinstance(j, tuple) else (j, {}) for j in jobs)]
    results = run_cli_jobs(batch, env=env)
    SEEN.extend(results)
    SEEN.append(home)
    return results


def ok(result) -> dict:
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result, code: int) -> str:
    assert result.rc == code, (result.rc, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- the card (no server) --------------------------------------------------------------------------------------------
def _card_files(*paths):
    from adapterctl.adapter import Adapter
    from adapterctl.hub._client import digest_file
    from adapterctl.hub.card import CardFile

    out = []
    for p in paths:
        d = digest_file(p)
        out.append(CardFile(Path(p).name, Adapter.open(p), d.sha256, d.size))
    return out


def test_card_parses_and_merges_without_losing_user_text():
    from huggingface_hub import ModelCard

    from adapterctl.hub.card import BEGIN, END, render

    files = _card_files(BLORA)
    mine = "---\nlicense: mit\ntags: [mine]\ndatasets: [x/y]\n---\n\n# My card\n\nWords I wrote.\n"
    text = render("me/blora", files, license=None, existing=mine)
    data = ModelCard(text).data.to_dict()
    assert data["license"] == "mit"  # the card's own license stays without --license
    assert data["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0" and data["library_name"] == "diffusers"
    assert data["datasets"] == ["x/y"] and data["tags"][0] == "mine"
    assert {"lora", "text-to-image", "stable-diffusion-xl", "b-lora", "content-lora", "style-lora"} <= set(data["tags"])
    assert text.index("Words I wrote.") < text.index(BEGIN) < text.index(END)
    assert "| `up_blocks.0.attentions.0` | OUT00 | content | 80 | 2 |" in text
    assert "| `up_blocks.0.attentions.1` | OUT01 | style | 80 | 2 |" in text
    assert "lbw=0,0,0,0,0,0,0,1,0,0,0,0" in text and "adapterctl pull me/blora --role style" in text
    assert "pipe.load_lora_weights('me/blora', weight_name='blora_example.safetensors')" in text
    assert render("me/blora", files, license=None, existing=text) == text  # stable: a re-push changes nothing
    edited = text.replace("Words I wrote.", "Words I changed.") + "\nA footer of mine.\n"
    again = render("me/blora", files, license="apache-2.0", existing=edited)
    assert "Words I changed." in again and again.endswith("A footer of mine.\n") and again.count(BEGIN) == 1
    assert ModelCard(again).data.license == "apache-2.0"
    new = ModelCard(render("me/blora", files, license=None)).data.to_dict()
    assert new["license"] == "openrail++"  # SDXL's own license, for an SDXL derivative
    assert "openrail" not in json.dumps(ModelCard(render("me/b", files, license="none")).data.to_dict())


def test_card_refuses_what_it_would_have_to_destroy():
    from adapterctl.errors import UsageError
    from adapterctl.hub.card import BEGIN, render

    files = _card_files(BLORA)
    with pytest.raises(UsageError, match="not a YAML mapping"):
        render("me/b", files, license=None, existing="---\n- a list\n---\ntext\n")
    with pytest.raises(UsageError, match="unbalanced"):
        render("me/b", files, license=None, existing=f"text\n{BEGIN}\nno end\n")


def test_card_escapes_file_text_and_knows_shared_modules(tmp_path):
    from huggingface_hub import ModelCard

    from adapterctl.hub.card import END, render

    text = render("me/x", _card_files(HOSTILE, SHARED), license=None)
    body = text.split("---\n", 2)[2]
    assert "\x1b" not in text and "\u202e" not in text and "\\x1b[31mred" in body
    assert text.count(END) == 1
    assert "cannot separate them" in text  # content and style on one module: LBW cannot split it
    ModelCard(text)


def test_card_from_train_provenance_and_the_tiny_test_model(tmp_path):
    from huggingface_hub import ModelCard
    from safetensors.numpy import save_file
    import numpy as np

    from adapterctl.adapter import Adapter
    from adapterctl.arch import load_arch
    from adapterctl.format.manifest import Operation
    from adapterctl.hub.card import render

    with Adapter.open(BLORA) as a:  # a file that carries a train operation, as `adapterctl train` writes it
        op = Operation(op="train", args={"base": "someone/my-sdxl", "prompt": "A [v]"}, tool="adapterctl 0.1.0",
                       at="2025-01-02T03:04:05+00:00")
        trained = dataclasses.replace(a.tag(preset="b-lora"), pending=(op,),
                                      metadata={"modelspec.trigger_phrase": "[v]"})
        trained.save(tmp_path / "trained.safetensors")
    data = ModelCard(render("me/t", _card_files(tmp_path / "trained.safetensors"), license=None)).data.to_dict()
    assert data["base_model"] == "someone/my-sdxl" and data["instance_prompt"] == "[v]"

    tiny = load_arch("sdxl-tiny")
    name = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    spec, key = tiny.modules[name], tiny.kohya_name(name)
    save_file({f"{key}.lora_down.weight": np.ones((2, spec.in_features), np.float16),
               f"{key}.lora_up.weight": np.ones((spec.out_features, 2), np.float16),
               f"{key}.alpha": np.array(2.0, np.float16)}, str(tmp_path / "tiny.safetensors"),
              metadata={"modelspec.architecture": tiny.modelspec_architecture})
    text = render("me/tiny", _card_files(tmp_path / "tiny.safetensors"), license=None)
    data = ModelCard(text).data.to_dict()
    assert "base_model" not in data and "license" not in data and "adapterctl-test-model" in data["tags"]
    assert "test model" in text and "--base tiny" in text


# -- push / pull / sync through the CLI -----------------------------------------------------------------------------
def test_push_pull_round_trip_roles_and_idempotent_push(hub, work):
    repo = "test-user/blora"
    home = work / "hf_round"
    lib, style = work / "lib", work / "style_only"
    before = len(hub.requests)
    push = ["push", BLORA, repo, "--split-roles", "--also", "kohya", "--json", "--token", hub.token]
    r = cli(hub, [push, push, ["push", BLORA, repo, "--split-roles", "--also", "kohya", "--token", hub.token],
                  ["pull", repo, "-o", lib, "--json"], ["pull", repo, "--role", "style", "-o", style, "--json"],
                  ["pull", repo, "-o", lib, "--json"]], home=home, token=False)
    first, second, third = ok(r[0]), ok(r[1]), r[2]
    assert not first["up_to_date"] and hub.commits(repo)[0] == first["commit"]
    assert len(hub.commits(repo)) == 2  # the repository's initial commit, then exactly one push
    assert second["up_to_date"] and second["commit"] == first["commit"]
    assert third.rc == 0 and "no commit made" in third.stdout and first["commit"] in third.stdout
    commit_posts = [p for m, p in hub.requests[before:] if m == "POST" and "/commit/" in p]
    assert len(commit_posts) == 1
    names = {f["path"] for f in first["files"]}
    assert names == {"blora_example.safetensors", "blora_example.content.safetensors",
                     "blora_example.style.safetensors", "blora_example.kohya.safetensors",
                     "blora_example.content.kohya.safetensors", "blora_example.style.kohya.safetensors", "README.md"}
    assert set(hub.files(repo)) == names | {".gitattributes"}

    pulled = ok(r[3])
    assert pulled["commit"] == first["commit"] and all(f["verified"] for f in pulled["files"])
    assert (lib / "blora_example.safetensors").read_bytes() == BLORA.read_bytes()
    for f in first["files"]:
        if f["path"] != "README.md":
            assert (lib / f["path"]).read_bytes() == hub.read(repo, f["path"])
    sidecar = json.loads((lib / ".adapterctl-origins.json").read_text())
    assert sidecar["format"] == "adapterctl.origins/1"
    assert sidecar["files"]["blora_example.style.safetensors"] == {
        "repo": repo, "revision": first["commit"], "path": "blora_example.style.safetensors",
        "sha256": hub.files(repo)["blora_example.style.safetensors"]["sha256"]}
    assert {f["status"] for f in ok(r[5])["files"]} == {"unchanged"}

    from adapterctl.adapter import Adapter

    role = ok(r[4])
    assert [f["path"] for f in role["files"]] == ["blora_example.style.safetensors"]  # the repo's style-only file
    with Adapter.open(style / "blora_example.style.safetensors") as a:
        assert a.roles() == {"style": 80}

    from huggingface_hub import ModelCard

    card = hub.read(repo, "README.md").decode()
    data = ModelCard(card).data.to_dict()
    assert data["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0" and "b-lora" in data["tags"]
    assert "| `up_blocks.0.attentions.1` | OUT01 | style | 80 | 2 |" in card
    assert "weight_name='blora_example.style.safetensors', adapter_name='style'" in card
    assert "`blora_example.kohya.safetensors`" in card and "<lora:blora_example.kohya:1>" in card

    # offline: the same cache, no Hub (HF_HUB_OFFLINE), and then an endpoint that refuses connections
    off = work / "offline"
    r = cli(hub, [["pull", repo, "-o", off, "--json"],
                  ["pull", repo, "blora_example.safetensors", "--role", "content", "-o", off, "--json"],
                  ["pull", f"{repo}@{first['commit']}", "blora_example.kohya.safetensors", "-o", work / "off_x",
                   "--json"]], home=home, offline=True)
    got = ok(r[0])
    assert got["offline"] and got["commit"] == first["commit"]
    assert listing(off) == listing(lib) and all("cached blob" in f["how"] for f in got["files"])
    content = ok(r[1])["files"][0]
    assert content["path"] == "blora_example.content.safetensors" and content["status"] == "unchanged"
    ok(r[2])
    r = cli(hub, [(["pull", repo, "-o", work / "unreachable", "--json"], {"HF_ENDPOINT": "http://127.0.0.1:9"})],
            home=home)
    assert ok(r[0])["offline"].startswith("cannot reach")


def test_role_extracted_locally_when_the_repo_has_no_role_file(hub, work):
    from adapterctl.adapter import Adapter

    out = work / "extract"
    r = cli(hub, [["push", BLORA, "test-user/combined", "--json"],
                  ["pull", "test-user/combined", "--role", "content", "-o", out, "--json"]], home=work / "hf_extract")
    ok(r[0])
    got = ok(r[1])
    assert got["files"][0]["role"] == "content" and "extracted content" in got["notes"][0]
    with Adapter.open(out / "blora_example.content.safetensors") as a:
        assert a.roles() == {"content": 80}
    # no origin: these bytes are not the repository's, so sync could not fetch them again
    assert json.loads((out / ".adapterctl-origins.json").read_text())["files"] == {}


def test_pinned_revision_gets_the_old_bytes(hub, work):
    repo, home = "test-user/pinned", work / "hf_pinned"
    v2 = work / "v2" / "blora_example.safetensors"
    v2.parent.mkdir()
    shutil.copyfile(PAINTING, v2)
    r = cli(hub, [["push", BLORA, repo, "--json"], ["push", v2, repo, "--json", "-m", "v2"]], home=home)
    c1, c2 = ok(r[0])["commit"], ok(r[1])["commit"]
    assert c1 != c2 and hub.commits(repo)[:2] == [c2, c1]
    r = cli(hub, [["pull", f"{repo}@{c1}", "blora_example.safetensors", "-o", work / "old", "--json"],
                  ["pull", repo, "blora_example.safetensors", "-o", work / "new", "--json"],
                  ["pull", repo, "--revision", c1, "-o", work / "old2", "--json"]], home=home)
    assert ok(r[0])["commit"] == c1 and ok(r[1])["commit"] == c2
    assert (work / "old" / "blora_example.safetensors").read_bytes() == BLORA.read_bytes()
    assert (work / "new" / "blora_example.safetensors").read_bytes() == PAINTING.read_bytes()
    assert ok(r[2])["commit"] == c1


def test_corrupted_download_is_refused_and_leaves_nothing(hub, work):
    repo, home = "test-user/corrupt", work / "hf_corrupt"
    ok(cli(hub, [["push", BLORA, repo, "--json"]], home=home)[0])
    kept = work / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("mine")
    before = listing(kept)
    hub.corrupt_next(repo, "blora_example.safetensors")
    r = cli(hub, [["pull", repo, "-o", work / "fresh"]], home=home)
    line = one_line_error(r[0], 8)
    assert "corrupt" in line and "nothing was written" in line
    assert not (work / "fresh").exists() and not [p for p in os.listdir(work) if "adapterctl-tmp" in p]
    hub.corrupt_next(repo, "blora_example.safetensors")
    r = cli(hub, [["pull", repo, "-o", kept], ["pull", repo, "-o", work / "retry", "--json"]], home=work / "hf_c2")
    one_line_error(r[0], 8)
    assert listing(kept) == before  # an existing directory is untouched, staging included
    blobs = list((work / "hf_c2" / "hub" / "models--test-user--corrupt" / "blobs").iterdir())
    assert all(p.name != hub.files(repo)["blora_example.safetensors"]["sha256"] or
               p.read_bytes() == BLORA.read_bytes() for p in blobs)  # the bad copy left the cache
    assert ok(r[1])["files"][0]["sha256"] == hub.files(repo)["blora_example.safetensors"]["sha256"]

    hub.commit_files(repo, {"notes.txt": b"a small file, stored outside LFS\n"})  # checked by its git blob id
    assert not hub.files(repo)["notes.txt"]["lfs"]
    hub.corrupt_next(repo, "notes.txt")
    r = cli(hub, [["pull", repo, "notes.txt", "-o", work / "small"],
                  ["pull", repo, "notes.txt", "-o", work / "small", "--json"]], home=work / "hf_c3")
    assert "git blob id" in one_line_error(r[0], 8)
    assert "git blob id matches" in ok(r[1])["files"][0]["how"]


HOSTILE_NAMES = ("../escape.safetensors", "a\\..\\..\\b.safetensors", "sub/../../up.safetensors", "/abs.safetensors",
                 "C:evil.safetensors", "sub//x.safetensors", "./x.safetensors", "nul\x00.safetensors",
                 "esc\x1b[2J.safetensors", ".hidden.safetensors", "sub/.git/x.safetensors", "")


def test_remote_name_rule():
    from adapterctl.hub._client import check_remote_name
    from adapterctl.hub.errors import UnsafeRemoteName

    for name in HOSTILE_NAMES:
        with pytest.raises(UnsafeRemoteName):
            check_remote_name(name)
    for name in ("a.safetensors", "styles/painting v2.safetensors", "ünï/cödé.safetensors", "a..b.safetensors"):
        assert check_remote_name(name) == name


def test_hostile_names_are_refused_before_any_download(hub, work):
    repo, home = "test-user/hostile", work / "hf_hostile"
    ok(cli(hub, [["push", BLORA, repo, "--json"]], home=home)[0])
    planted = HOSTILE_NAMES[:5] + (HOSTILE_NAMES[9],)
    hub.commit_files(repo, {name: BLORA.read_bytes() for name in planted})
    before = len(hub.requests)
    r = cli(hub, [["pull", repo, "-o", work / "h"]] + [["pull", repo, name, "-o", work / "h"] for name in planted],
            home=home)
    for result in r:
        assert "refusing the repository file" in one_line_error(result, 3)
    assert not [p for m, p in hub.requests[before:] if "/resolve/" in p]  # nothing was downloaded
    assert not (work / "h").exists() and not (work / "escape.safetensors").exists()
    hub.commit_files(repo, {name: None for name in planted})


def test_errors_are_one_line_with_hints_and_no_token(hub, work):
    home = work / "hf_errors"
    bad = work / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    before = len(hub.requests)
    r = cli(hub, [["push", bad, "test-user/x"], ["push", work, "test-user/x"], ["push", BLORA, "not a repo"],
                  ["push", BLORA, "test-user/x", "--also", "peft"]], home=home)
    for result in r:
        assert result.rc in (2, 3) and len(result.stderr.splitlines()) == 1, result.stderr
    assert len(hub.requests) == before  # every refusal came before the network
    wrong = "hf_wrong_" + "9" * 20
    r = cli(hub, [["push", BLORA, "test-user/x", "--token", wrong], ["pull", "test-user/none"],
                  ["pull", "test-user/hostile@nope"], ["pull", "test-user/hostile", "missing.safetensors"],
                  ["pull", "test-user/none"]], home=home)
    assert "401" in one_line_error(r[0], 7) and wrong not in r[0].stderr + r[0].stdout
    assert "not found" in one_line_error(r[1], 7) and "revision 'nope'" in one_line_error(r[2], 7)
    assert "missing.safetensors" in one_line_error(r[3], 7)
    ok_first = cli(hub, [["push", BLORA, "test-user/pub", "--json"],
                         ["push", BLORA, "test-user/pub", "--private"]], home=home)
    ok(ok_first[0])
    assert "is public" in one_line_error(ok_first[1], 2)
    r = cli(hub, [["pull", "test-user/none"]], home=home, offline=True)
    assert "local cache" in one_line_error(r[0], 7)


def test_branch_push_merges_an_existing_card(hub, work):
    repo, home = "test-user/carded", work / "hf_card"
    ok(cli(hub, [["push", BLORA, repo, "--json"]], home=home)[0])
    hub.commit_files(repo, {"README.md": b"---\nlicense: mit\ntags: [mine]\n---\n\nHand-written intro.\n"})
    r = cli(hub, [["push", BLORA, repo, "--revision", "dev", "--json"], ["push", BLORA, repo, "--json"]], home=home)
    dev, main = ok(r[0]), ok(r[1])
    assert dev["branch"] == "dev" and hub.commits(repo, "dev")[0] == dev["commit"]
    assert [f["status"] for f in main["files"]] == ["unchanged", "uploaded"]  # only the card changed
    card = hub.read(repo, "README.md").decode()
    assert card.startswith("---\nlicense: mit\ntags:\n- mine\n") and "Hand-written intro." in card
    assert "<!-- adapterctl:begin -->" in card


def test_sync_reproduces_a_pulled_library_and_is_all_or_nothing(hub, work):
    repo = "test-user/blora"  # pushed by the round-trip test
    lib = work / "sync_src"
    r = cli(hub, [["pull", repo, "-o", lib, "--json"], ["lock", lib, "--json"]], home=work / "hf_sync_src")
    assert ok(r[1])["with_origin"] == 6  # adapterctl lock (library/) read pull's origins sidecar
    lock = lib / "adapters.lock"
    copy = work / "sync_copy"  # a CI checkout: the lock alone, then sync and verify
    copy.mkdir()
    shutil.copyfile(lock, copy / "adapters.lock")
    r = cli(hub, [["sync", copy / "adapters.lock", "--json"], ["sync", copy / "adapters.lock", "--json"],
                  ["verify", copy / "adapters.lock"]], home=work / "hf_sync")
    assert ok(r[0])["counts"] == {"fetched": 6}
    assert listing(copy) == listing(lib)  # byte for byte, origins sidecar included
    assert ok(r[1])["counts"] == {"present": 6} and r[2].rc == 0, r[2].stdout + r[2].stderr
    expected = {k: v for k, v in listing(lib).items() if k != "adapters.lock"}

    partial = work / "sync_partial"
    partial.mkdir()
    shutil.copyfile(lib / "blora_example.safetensors", partial / "blora_example.safetensors")
    (partial / "blora_example.style.safetensors").write_bytes(b"stale")
    before = listing(partial)
    hub.corrupt_next(repo, "blora_example.kohya.safetensors")
    r = cli(hub, [["sync", lock, "-o", partial]], home=work / "hf_sync2")
    assert "corrupt" in one_line_error(r[0], 8)
    assert listing(partial) == before  # unchanged: nothing fetched before the failure was moved in
    fixed = ok(cli(hub, [["sync", lock, "-o", partial, "--json"]], home=work / "hf_sync2")[0])
    assert fixed["counts"] == {"present": 1, "fetched": 4, "replaced": 1}
    assert listing(partial) == expected

    lock.write_text(lock.read_text().replace('"repo": "test-user/blora"', '"repo": "test-user/none"', 1))
    assert "not found" in one_line_error(cli(hub, [["sync", lock, "-o", work / "never"]], home=work / "hf_s3")[0], 7)
    assert not (work / "never").exists()


def test_token_never_appears_in_output_or_files(hub, work):
    assert len(SEEN) > 30, "run with the other tests of this file"
    token = hub.token.encode()
    for item in SEEN:
        if isinstance(item, Path):
            continue
        assert hub.token not in item.stdout and hub.token not in item.stderr
    for root, _dirs, files in os.walk(work):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with open(path, "rb") as fh:
                    assert token not in fh.read(), path
