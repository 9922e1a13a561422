"""The Python API on real files: open, infer, tag, split, convert, save, and what the header says."""

import hashlib
import json

import numpy as np
import pytest

import adapterctl
from adapterctl.arch import load_arch
from adapterctl.errors import InvalidFile, UnsupportedConversion, UsageError
from adapterctl.examples.make import BLORA, HERE, LOCON
from adapterctl.io.safetensors_file import SafetensorsFile
from adapterctl.io.writer import OutTensor, write_safetensors

BLORA_PATH, LOCON_PATH = HERE / BLORA, HERE / LOCON


def data_sha256(path) -> str:
    with SafetensorsFile(path) as st:
        return hashlib.sha256(st.read_range(st.data_start, st.size - st.data_start)).hexdigest()


def test_official_blora_is_inferred():
    with adapterctl.open(BLORA_PATH) as a:
        assert a.layout == "diffusers-old" and a.method == "b-lora" and a.manifest.preset == "b-lora"
        assert a.roles() == {"content": 80, "style": 80}
        assert {e.role_source for e in a.modules} == {"inferred"}
        assert a.blocks() == {"up_blocks.0.attentions.0": 80, "up_blocks.0.attentions.1": 80}
        assert all(e.scale == 1.0 and e.alpha == e.rank for e in a.modules)  # no alphas: diffusers' scale 1


def test_split_writes_hashes_and_provenance(tmp_path):
    out = tmp_path / "style.safetensors"
    with adapterctl.open(BLORA_PATH) as a:
        saved = a.split(keep=["style"]).save(out)
    with adapterctl.open(out) as s:
        assert s.manifest_stored and s.roles() == {"style": 80}
        assert {e.block for e in s.modules} == {"up_blocks.0.attentions.1"}
        assert {e.role_source for e in s.modules} == {"inferred"}  # splitting does not promote an inference
        meta = s.metadata
        assert meta["modelspec.hash_sha256"] == "0x" + data_sha256(out) == "0x" + saved.sha256
        src = s.manifest.provenance.sources[-1]
        assert src.sha256 == data_sha256(BLORA_PATH) and src.name == BLORA
        assert [op.op for op in s.manifest.provenance.operations] == ["split"]
        assert meta["adapterctl.format"] == "adapterctl.lora/1"
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    # split keeps the source's tensor bytes exactly
    with SafetensorsFile(BLORA_PATH) as a, SafetensorsFile(out) as b:
        assert set(b.tensors) < set(a.tensors)
        assert all(a.read(n) == b.read(n) for n in b.tensors)


def test_tag_by_rules_and_selector_errors(tmp_path):
    with adapterctl.open(LOCON_PATH) as a:
        assert a.roles() == {"untagged": 23}
        tagged = a.tag(roles=["style=output_blocks.0.1", "content=up_blocks.0.resnets.0"])
        roles = tagged.roles()
        assert roles["style"] == 12 and roles["content"] == 4 and roles["untagged"] == 7
        with pytest.raises(UsageError, match="matches no module"):
            a.tag(roles=["style=up_blocks.9.attentions.0"])
        with pytest.raises(UsageError, match="unknown role"):
            a.tag(roles=["colour=up_blocks.0.attentions.0"])
        with pytest.raises(UsageError, match="no roles"):
            a.split(keep=["style"])
        out = tmp_path / "t.safetensors"
        tagged.save(out)
    with adapterctl.open(out) as t:
        assert t.roles() == roles and {e.role_source for e in t.modules if e.role} == {"declared"}
        assert [r.selector for r in t.manifest.role_rules] == ["output_blocks.0.1", "up_blocks.0.resnets.0"]


def test_foreign_metadata_is_kept_unless_stripped(tmp_path):
    with adapterctl.open(LOCON_PATH) as a:
        a.convert("diffusers").save(tmp_path / "d.safetensors")
        a.convert("diffusers").save(tmp_path / "s.safetensors", strip_foreign=True)
    with SafetensorsFile(tmp_path / "d.safetensors") as d, SafetensorsFile(tmp_path / "s.safetensors") as s:
        assert d.metadata["ss_network_dim"] == "4" and d.metadata["ss_output_name"] == "locon_example"
        assert not any(k.startswith("ss_") for k in s.metadata)
        cfg = json.loads(d.metadata["lora_adapter_metadata"])
        assert cfg["unet.r"] == 4 and cfg["unet.lora_alpha"] == 2.0 and cfg["unet.use_rslora"] is False


def test_kohya_round_trip_is_bit_exact(tmp_path):
    with adapterctl.open(LOCON_PATH) as a:
        a.convert("diffusers").save(tmp_path / "d.safetensors")
    with adapterctl.open(tmp_path / "d.safetensors") as d:
        d.convert("kohya").save(tmp_path / "k.safetensors")
    with SafetensorsFile(LOCON_PATH) as a, SafetensorsFile(tmp_path / "k.safetensors") as b:
        assert set(a.tensors) == set(b.tensors)
        for n in a.tensors:
            assert (a.tensors[n].dtype, a.tensors[n].shape, a.read(n)) == (b.tensors[n].dtype, b.tensors[n].shape,
                                                                         b.read(n))


def test_peft_needs_one_component():
    with adapterctl.open(LOCON_PATH) as a:
        with pytest.raises(UnsupportedConversion, match="one model component"):
            a.convert("peft")
        assert a.split(keep_blocks=["up_blocks.*"]).convert("peft").layout == "peft"


def _write(path, tensors, metadata=None):
    write_safetensors(path, [OutTensor.from_bytes(k, "F32", v.shape, v.astype(np.float32).tobytes())
                             for k, v in tensors.items()], metadata or {})


def test_two_roles_on_one_module_and_split_back_to_standard_keys(tmp_path):
    arch = load_arch()
    spec = arch.get("unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    rng = np.random.default_rng(0)
    tensors = {}
    for role in ("content", "style"):
        tensors[f"unet.{spec.path}.lora_A.{role}.weight"] = rng.normal(size=(2, spec.in_features))
        tensors[f"unet.{spec.path}.lora_B.{role}.weight"] = rng.normal(size=(spec.out_features, 2))
    path = tmp_path / "both.safetensors"
    _write(path, tensors)
    with adapterctl.open(path) as a:
        assert a.roles() == {"content": 1, "style": 1} and len({e.module for e in a.modules}) == 1
        with pytest.raises(UnsupportedConversion, match="two roles"):
            a.convert("kohya")
        a.split(keep=["content"]).save(tmp_path / "c.safetensors")
    with SafetensorsFile(tmp_path / "c.safetensors") as c:
        assert sorted(c.tensors) == [f"unet.{spec.path}.lora_A.weight", f"unet.{spec.path}.lora_B.weight"]
        assert c.read(f"unet.{spec.path}.lora_A.weight") == tensors[f"unet.{spec.path}.lora_A.content.weight"] \
            .astype(np.float32).tobytes()


def test_expert_branches(tmp_path):
    arch = load_arch()
    spec = arch.get("unet.up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k")
    prefix = f"unet.{spec.path}"
    rng = np.random.default_rng(1)
    tensors = {f"{prefix}.lora_experts_A.weight": rng.normal(size=(3, 2, spec.in_features)),
               f"{prefix}.lora_experts_B.weight": rng.normal(size=(spec.out_features, 2)),
               f"{prefix}.lora_router.weight": rng.normal(size=(3, spec.in_features)),
               f"{prefix}.lora_router.bias": np.zeros(3)}
    path = tmp_path / "experts.safetensors"
    _write(path, tensors)
    with adapterctl.open(path) as a:
        (e,) = a.modules
        assert (e.role, e.experts, e.rank, a.method) == ("expert", 3, 2, "styleinject")
        with pytest.raises(UnsupportedConversion, match="experts"):
            a.convert("diffusers")


def test_tampered_manifest_is_rejected(tmp_path):
    out = tmp_path / "s.safetensors"
    with adapterctl.open(BLORA_PATH) as a:
        a.split(keep=["content"]).save(out)
    with SafetensorsFile(out) as st:
        meta = dict(st.metadata)
        manifest = json.loads(meta["adapterctl.manifest"])
        tensors = [OutTensor.copy(st, n) for n in st.tensors]
        manifest["modules"][0]["rank"] = 7
        meta["adapterctl.manifest"] = json.dumps(manifest)
        write_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(InvalidFile, match="rank 7"):
        adapterctl.open(tmp_path / "bad.safetensors")


def test_kohya_dora_scale_stays_kohya(tmp_path):
    """LyCORIS/kohya dora_scale is not peft's magnitude: kohya output keeps it, others refuse."""
    arch = load_arch()
    spec = arch.get("unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    base = arch.kohya_name(spec.name, sgm=False)  # the diffusers-name flavour, so convert must rename
    rng = np.random.default_rng(2)
    path = tmp_path / "dora.safetensors"
    _write(path, {f"{base}.lora_down.weight": rng.normal(size=(2, spec.in_features)),
                  f"{base}.lora_up.weight": rng.normal(size=(spec.out_features, 2)),
                  f"{base}.dora_scale": rng.normal(size=(spec.out_features, 1))})
    with adapterctl.open(path) as a:
        (e,) = a.modules
        assert e.dora and e.tensors.magnitude.endswith("dora_scale")
        for target in ("diffusers", "peft"):
            with pytest.raises(UnsupportedConversion, match="dora_scale"):
                a.convert(target)
        a.convert("kohya").save(tmp_path / "k.safetensors")
    sgm = arch.kohya_name(spec.name)
    with SafetensorsFile(tmp_path / "k.safetensors") as k, SafetensorsFile(path) as src:
        assert {f"{sgm}.lora_down.weight", f"{sgm}.lora_up.weight", f"{sgm}.dora_scale"} <= set(k.tensors)
        assert k.read(f"{sgm}.dora_scale") == src.read(f"{base}.dora_scale")


def test_inspect_report_is_strict_json_for_a_nan_alpha(tmp_path):
    """Found by the fuzzer at a larger budget: an F16 alpha of NaN or inf must not put a float
    that JSON cannot carry into the report (API users call json.dumps on it)."""
    import shutil
    from pathlib import Path

    from adapterctl.report import inspect_report

    path = tmp_path / "nan_alpha.safetensors"
    vectors = Path(__file__).resolve().parents[1] / "spec" / "vectors"
    shutil.copyfile(vectors / "valid_kohya_sgm_locon.safetensors", path)
    with SafetensorsFile(path) as st:
        name = next(n for n, t in st.tensors.items() if n.endswith(".alpha") and t.dtype == "F16")
        offset = st.data_start + st.tensors[name].start
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00\x7c")  # +inf in F16
    with adapterctl.open(path) as a:
        report = inspect_report(a)
    text = json.dumps(report, allow_nan=False)
    assert '"Infinity"' in text


def test_operations_are_registered_units_with_typed_parameters():
    """Each op is a name + a parameter model + apply; the framework validates the parameters and
    writes the provenance record from them."""
    from adapterctl.ops import registry

    assert registry.names() == ["tag", "split", "convert", "prune"]
    with adapterctl.open(HERE / BLORA) as a:
        with pytest.raises(UsageError, match="unknown operation 'zap'"):
            a.apply("zap")
        with pytest.raises(UsageError, match="bad parameter 'keep'"):
            a.apply("split", keep="style")  # a string where a list is due: refused, not iterated
        with pytest.raises(UsageError, match="bad parameter 'colour'"):
            a.apply("split", keep=["style"], colour="red")  # unknown names are errors, not no-ops
        derived = a.apply("split", keep=["style"]).apply("convert", to="kohya")
        ops = [(op.op, op.args) for op in derived.pending]
        assert ops == [("split", {"keep": ["style"], "drop": [], "keep_blocks": []}),
                       ("convert", {"from": "diffusers-old", "to": "kohya"})]
