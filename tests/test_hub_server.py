"""The Hub-protocol test server (tests/hub_server.py) proven with the real huggingface_hub client over HTTP.

Nothing in the client is patched. HF_HUB_DISABLE_XET is read by huggingface_hub at import time, so the fixture sets
both the environment variable and the already-imported constant: with Xet on, uploads go to /xet-write-token
(not served here) and fail. Calls meant to be anonymous pass token=False so no stored token is sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

import httpx2  # noqa: E402  (huggingface_hub's own HTTP client, so always installed with it)
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from hub_server import HubServer, git_blob_sha1  # noqa: E402

REPO = "test-user/loras"
WEIGHTS = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB, binary
README = b"---\nlicense: mit\ntags:\n- lora\n---\n# A test LoRA\n"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(tmp_path / "hub") as server:
        yield server
    assert not server.errors, server.errors[0]  # requests the server could not handle are server bugs here


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=hub.token)


def _push_first(api, weights=WEIGHTS, readme=README):
    api.create_repo(REPO, exist_ok=True)
    ops = [CommitOperationAdd("lora.safetensors", weights), CommitOperationAdd("README.md", readme)]
    return api.create_commit(REPO, ops, commit_message="add lora")


def _download(hub, tmp_path, filename, **kw):
    kw.setdefault("token", hub.token)
    return Path(hf_hub_download(REPO, filename, cache_dir=tmp_path / "cache", endpoint=hub.url, **kw))


def test_create_repo_conflict_and_exist_ok(hub, api):
    url = api.create_repo(REPO)
    assert url == f"{hub.url}/{REPO}" and url.repo_id == REPO
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True) == url
    assert api.create_repo("no-namespace").repo_id == "test-user/no-namespace"  # the token's user
    # like the real Hub, a new repo holds an "initial commit" with the default .gitattributes
    assert api.list_repo_files(REPO) == [".gitattributes"]
    assert len(hub.commits(REPO)) == 1


def test_commit_goes_through_preupload_lfs_batch_put_verify_commit(hub, api):
    info = _push_first(api)
    assert len(info.oid) == 40 and info.commit_url == f"{hub.url}/{REPO}/commit/{info.oid}"
    calls = [(m, p.replace(REPO, "R")) for m, p in hub.requests if not p.startswith("/api/repos")]
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert calls == [
        ("POST", "/api/validate-yaml"),  # create_commit checks README.md metadata first
        ("POST", "/api/models/R/preupload/main"),
        ("POST", "/R.git/info/lfs/objects/batch"),
        ("PUT", f"/_lfs/{sha}"),
        ("POST", "/R.git/info/lfs/objects/verify"),
        ("POST", "/api/models/R/commit/main"),
    ]
    files = hub.files(REPO)
    assert files["lora.safetensors"] == {"sha256": sha, "size": len(WEIGHTS), "lfs": True,
                                         "oid": files["lora.safetensors"]["oid"]}
    assert files["README.md"]["lfs"] is False and hub.read(REPO, "README.md") == README
    assert hub.commits(REPO)[0] == info.oid == api.model_info(REPO).sha
    assert api.list_repo_files(REPO) == [".gitattributes", "README.md", "lora.safetensors"]


def test_preupload_decides_like_the_hub(hub, api):
    api.create_repo(REPO)
    sample = base64.b64encode(b"hello").decode()
    files = [
        {"path": "a.safetensors", "size": 5, "sample": sample},  # .gitattributes pattern
        {"path": "notes.txt", "size": 5, "sample": sample},
        {"path": "big.txt", "size": 11 * 1024 * 1024, "sample": sample},  # over 10 MB
        {"path": "blob.dat", "size": 5, "sample": base64.b64encode(b"a\0b").decode()},  # binary
        {"path": "tmp/x.log", "size": 5, "sample": sample},
    ]
    r = httpx2.post(f"{hub.url}/api/models/{REPO}/preupload/main", json={"files": files, "gitIgnore": "*.log\n"},
                    headers={"Authorization": f"Bearer {hub.token}"})
    modes = {f["path"]: (f["uploadMode"], f["shouldIgnore"]) for f in r.json()["files"]}
    assert modes == {"a.safetensors": ("lfs", False), "notes.txt": ("regular", False), "big.txt": ("lfs", False),
                     "blob.dat": ("lfs", False), "tmp/x.log": ("regular", True)}


def test_lfs_put_is_checked_and_may_be_chunked(hub, api):
    api.create_repo(REPO)
    data = b"\0" * 100_000
    oid = hashlib.sha256(data).hexdigest()
    auth = {"Authorization": f"Bearer {hub.token}"}
    put = f"{hub.url}/_lfs/{oid}"
    assert httpx2.put(put, content=data).status_code == 403  # no batch call announced it
    batch = httpx2.post(f"{hub.url}/{REPO}.git/info/lfs/objects/batch", headers=auth,
                        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
    assert batch["objects"][0]["actions"]["upload"]["href"] == put
    assert httpx2.put(put, content=data[1:]).status_code == 400  # bytes do not hash to the oid
    chunks = (data[i : i + 30_000] for i in range(0, len(data), 30_000))  # a generator => chunked encoding
    assert httpx2.put(put, content=chunks).status_code == 200
    again = httpx2.post(f"{hub.url}/{REPO}.git/info/lfs/objects/batch", headers=auth,
                        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).json()
    assert "actions" not in again["objects"][0]  # already stored: the client skips the upload


def test_download_is_byte_identical_and_metadata_matches(hub, api, tmp_path):
    info = _push_first(api)
    path = _download(hub, tmp_path, "lora.safetensors")
    assert path.read_bytes() == WEIGHTS and f"/snapshots/{info.oid}/" in path.as_posix()
    assert _download(hub, tmp_path, "README.md").read_bytes() == README
    assert api.file_exists(REPO, "lora.safetensors") and not api.file_exists(REPO, "missing.bin")
    with pytest.raises(RemoteEntryNotFoundError):
        _download(hub, tmp_path, "missing.bin")
    with pytest.raises(RevisionNotFoundError):
        _download(hub, tmp_path, "README.md", revision="no-such-branch")
    [lora, readme] = api.get_paths_info(REPO, ["lora.safetensors", "README.md", "absent"])
    assert lora.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest() and lora.size == len(WEIGHTS)
    assert readme.lfs is None and readme.blob_id == git_blob_sha1(README)


def test_revision_pinning_after_a_second_commit(hub, api, tmp_path):
    first = _push_first(api).oid
    new = WEIGHTS[::-1]
    second = api.upload_file(path_or_fileobj=new, path_in_repo="lora.safetensors", repo_id=REPO).oid
    assert hub.commits(REPO)[:2] == [second, first]
    assert _download(hub, tmp_path, "lora.safetensors", revision=first).read_bytes() == WEIGHTS
    assert _download(hub, tmp_path, "lora.safetensors").read_bytes() == new
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == hub.commits(REPO)
    assert [c.title for c in api.list_repo_commits(REPO, revision=first)] == ["add lora", "initial commit"]
    # an unchanged file is skipped by the client (preupload reports its remote oid): no commit POST
    before = len(hub.requests)
    assert api.upload_file(path_or_fileobj=README, path_in_repo="README.md", repo_id=REPO).oid == second
    assert not any(p.endswith("/commit/main") for _, p in hub.requests[before:])


def test_snapshot_tree_and_deletes(hub, api, tmp_path):
    _push_first(api)
    api.create_commit(REPO, [CommitOperationAdd("styles/a/one.safetensors", b"\0one"),
                             CommitOperationAdd("styles/two.txt", b"two")], commit_message="nested")
    snap = Path(snapshot_download(REPO, cache_dir=tmp_path / "snap", endpoint=hub.url, token=hub.token))
    got = {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}
    assert got["lora.safetensors"] == WEIGHTS and got["styles/a/one.safetensors"] == b"\0one"
    assert set(got) == {".gitattributes", "README.md", "lora.safetensors", "styles/a/one.safetensors",
                        "styles/two.txt"}
    top = {(e.path, type(e).__name__) for e in api.list_repo_tree(REPO, path_in_repo="styles")}
    assert top == {("styles/a", "RepoFolder"), ("styles/two.txt", "RepoFile")}
    [entry] = api.list_repo_tree(REPO, path_in_repo="styles/a", expand=True)
    assert entry.last_commit.title == "nested"
    api.create_commit(REPO, [CommitOperationDelete("styles/")], commit_message="drop styles")
    assert api.list_repo_files(REPO) == [".gitattributes", "README.md", "lora.safetensors"]


def test_refs_and_branches(hub, api, tmp_path):
    first = _push_first(api).oid
    api.create_branch(REPO, branch="v1")
    api.create_branch(REPO, branch="v1", exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        api.create_branch(REPO, branch="v1")
    api.upload_file(path_or_fileobj=b"changed", path_in_repo="README.md", repo_id=REPO, revision="v1")
    refs = {b.name: b.target_commit for b in api.list_repo_refs(REPO).branches}
    assert refs == {"main": first, "v1": hub.commits(REPO, "v1")[0]} and refs["v1"] != first
    assert _download(hub, tmp_path, "README.md", revision="v1").read_bytes() == b"changed"
    assert _download(hub, tmp_path, "README.md", revision="main").read_bytes() == README


def test_corrupt_next_is_returned_by_the_client_unverified(hub, api, tmp_path):
    _push_first(api)
    hub.corrupt_next(REPO, "lora.safetensors")
    bad = _download(hub, tmp_path, "lora.safetensors").read_bytes()
    # huggingface_hub 2.4 only checks the size: the flipped byte lands in its cache as if it were good
    assert len(bad) == len(WEIGHTS) and bad != WEIGHTS
    assert sum(a != b for a, b in zip(bad, WEIGHTS)) == 1
    good = _download(hub, tmp_path, "lora.safetensors", force_download=True).read_bytes()
    assert good == WEIGHTS  # only the next GET was corrupted


def test_head_and_range_over_plain_http(hub, api):
    sha = _push_first(api).oid
    url = f"{hub.url}/{REPO}/resolve/main/lora.safetensors"
    head = httpx2.head(url)
    lfs_sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert head.status_code == 200 and head.headers["X-Repo-Commit"] == sha
    assert head.headers["ETag"] == head.headers["X-Linked-Etag"] == f'"{lfs_sha}"'
    assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(len(WEIGHTS))
    r = httpx2.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == WEIGHTS[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
    assert httpx2.get(url, headers={"Range": "bytes=-4"}).content == WEIGHTS[-4:]
    assert httpx2.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"}).status_code == 416
    readme = httpx2.head(f"{hub.url}/{REPO}/resolve/{sha}/README.md")
    assert readme.headers["ETag"] == f'"{git_blob_sha1(README)}"' and "X-Linked-Etag" not in readme.headers
    missing = httpx2.head(f"{hub.url}/{REPO}/resolve/main/nope")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"


def test_wrong_token_gets_401_and_commits_nothing(hub, api):
    api.create_repo(REPO)
    bad = HfApi(endpoint=hub.url, token="hf_wrong")
    with pytest.raises(HfHubHTTPError) as err:
        bad.create_commit(REPO, [CommitOperationAdd("x.safetensors", b"\0x")], commit_message="nope")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token=False).create_repo("test-user/other")
    assert err.value.response.status_code == 401
    assert len(hub.commits(REPO)) == 1 and "test-user/other" not in hub.store.repos
    with pytest.raises(HfHubHTTPError):
        api.create_commit(REPO, [CommitOperationAdd("x.txt", b"x")], commit_message="stale",
                          parent_commit="0" * 40)  # 412: someone committed since


def test_private_repo_needs_the_token(hub, api, tmp_path):
    api.create_repo(REPO, private=True)
    api.upload_file(path_or_fileobj=b"secret", path_in_repo="s.txt", repo_id=REPO)
    assert api.model_info(REPO).private is True
    anon = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info(REPO)
    with pytest.raises(RepositoryNotFoundError):
        _download(hub, tmp_path, "s.txt", token=False)
    assert _download(hub, tmp_path, "s.txt").read_bytes() == b"secret"


def test_hostile_name_planted_with_commit_files(hub, api, tmp_path):
    api.create_repo(REPO)
    sha = hub.commit_files(REPO, {"../evil.safetensors": b"\0x", "ok.txt": b"ok"})
    assert hub.commits(REPO)[0] == sha and hub.files(REPO)["../evil.safetensors"]["lfs"] is True
    assert "../evil.safetensors" in api.list_repo_files(REPO)
    with pytest.raises(ValueError, match=r"'\.\.' path segment"):  # the client refuses; callers must handle it
        snapshot_download(REPO, cache_dir=tmp_path / "snap", endpoint=hub.url, token=hub.token)


def test_listings_paginate_with_link_headers(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(tmp_path / "hub", page_size=2) as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo(REPO)
        for i in range(3):
            api.upload_file(path_or_fileobj=b"%d" % i, path_in_repo=f"f{i}.txt", repo_id=REPO)
        assert api.list_repo_files(REPO) == [".gitattributes", "f0.txt", "f1.txt", "f2.txt"]
        assert len(api.list_repo_commits(REPO)) == 4
        assert sum(p.endswith("/tree/main") for _, p in hub.requests) == 2


def test_state_survives_a_restart(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with HubServer(tmp_path / "hub", token="hf_fixed") as hub:
        sha = _push_first(HfApi(endpoint=hub.url, token=hub.token)).oid
    with HubServer(tmp_path / "hub", token="hf_fixed") as hub:
        assert HfApi(endpoint=hub.url, token=False).model_info(REPO).sha == sha
        assert hub.read(REPO, "lora.safetensors") == WEIGHTS


def test_modelcard_load_uses_hf_endpoint(hub, api, tmp_path):
    _push_first(api)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    code = ("import json; from huggingface_hub import ModelCard; c = ModelCard.load(%r); "
            "print(json.dumps({'license': c.data.license, 'tags': c.data.tags, 'text': c.text}))" % REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout.strip().splitlines()[-1])
    assert card == {"license": "mit", "tags": ["lora"], "text": "# A test LoRA\n"}
