"""kohya files written under transformers 5 name TE1 modules without the `text_model` level
(CLIPTextModel lost it): `lora_te1_encoder_layers_0_...`. adapterctl reads them as the TE1
modules they are, and writes them back under the canonical `lora_te1_text_model_...` names,
which diffusers loads onto the right modules."""

from __future__ import annotations

import torch

import _tiny_models as T
import adapterctl


def _te1_names(all_names):
    return [n for n in all_names if n.startswith("text_encoder.text_model.encoder.layers.")][:6]


def _transformers5_kohya(branches) -> dict[str, torch.Tensor]:
    sd = T.kohya_state_dict(branches)
    renamed = {k.replace("lora_te1_text_model_", "lora_te1_", 1): v for k, v in sd.items()}
    assert all(k.startswith("lora_te1_encoder_layers_") for k in renamed)
    return renamed


def test_transformers5_te1_names_read_as_te1_modules(shapes, all_names, tmp_path):
    names = _te1_names(all_names)
    branches = T.random_branches(shapes, names, rank=2, alpha=lambda n: (1.0, torch.float16), seed=41)
    src = T.save(_transformers5_kohya(branches), tmp_path / "te5.safetensors")
    with adapterctl.open(src) as a:
        assert sorted(e.module for e in a.modules) == sorted(names)
        assert not a.read.unmapped


def test_convert_writes_canonical_names_that_diffusers_loads(shapes, all_names, tmp_path):
    names = _te1_names(all_names)
    branches = T.random_branches(shapes, names, rank=2, alpha=lambda n: (1.0, torch.float16), seed=42)
    src = T.save(_transformers5_kohya(branches), tmp_path / "te5.safetensors")
    out = tmp_path / "fixed.safetensors"
    with adapterctl.open(src) as a:
        a.convert("kohya").save(out)
    with adapterctl.open(out) as b:
        downs = [e.tensors.down for e in b.modules]
    assert downs and all(k.startswith("lora_te1_text_model_encoder_layers_") for k in downs), downs
    theirs = T.diffusers_load(out, T.build_models(seed=43))
    T.assert_same_deltas(theirs, {n: b.delta() for n, b in branches.items()},
                         what="transformers-5 TE1 names, repaired by convert, loaded by diffusers")
