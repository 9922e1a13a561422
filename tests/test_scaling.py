"""Scale rules, checked against peft's own pattern matcher rather than our reading of it."""

import math

import pytest
from peft.utils.other import get_pattern_key

from adapterctl.errors import LayoutError
from adapterctl.layouts.patterns import PatternTable
from adapterctl.layouts.scaling import PeftScaling, compact_patterns, decode_scalar, encode_scalar

PATHS = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q",
    "up_blocks.0.attentions.0.transformer_blocks.10.attn1.to_q",
    "up_blocks.0.resnets.0.conv1",
    "text_model.encoder.layers.1.self_attn.q_proj",
]


@pytest.mark.parametrize("patterns", [
    {"to_q": 4},
    {"up_blocks.0.attentions.0.transformer_blocks.1.attn1.to_q": 8},
    {"conv1": 2, "attn1.to_q": 16},
    {"layers.1.self_attn.q_proj": 3},
    {"^up_blocks.*": 2, "to_q": 4},  # first match in file order wins, as in peft
    {"to_q": 4, "^up_blocks.*": 2},
    {"attn1\\.to_(q|k)": 5, ".*resnets.*": 6},
    {"transformer_blocks.1.attn1.to_q|conv1": 7},
    {"to.q": 8},  # '.' is a regex wildcard here too
])
def test_pattern_matching_agrees_with_peft(patterns):
    table = PatternTable(patterns, where="test")
    keys = list(patterns)
    for path in PATHS:
        index = table.first_match(path)
        ours = keys[index] if index is not None else None
        theirs = get_pattern_key(keys, path)
        assert (ours if ours is not None else path) == theirs, path


def test_first_match_across_chunks_agrees_with_peft():
    # More patterns than one chunk holds: the chunked search must still return peft's first match.
    keys = [f"transformer_blocks.{i}.attn1.to_q" for i in range(200)] + ["to_q", "conv1"]
    table = PatternTable({k: i for i, k in enumerate(keys)}, where="test")
    for path in PATHS + [f"up_blocks.0.attentions.0.transformer_blocks.{i}.attn1.to_q" for i in (0, 77, 199, 250)]:
        index = table.first_match(path)
        theirs = get_pattern_key(keys, path)
        assert (keys[index] if index is not None else path) == theirs, path


def test_catastrophic_pattern_is_matched_in_linear_time():
    import time

    table = PatternTable({"(.|.)*Z": 1, "(a*)*b": 2, "(x+x+)+y": 3}, where="test")
    start = time.perf_counter()
    assert table.first_match("a" * 5000) is None and table.first_match("x" * 5000) is None
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("pattern", ["(?=x)", "(a)\\1", "(", ""])
def test_patterns_re2_cannot_match_are_refused(pattern):
    with pytest.raises(LayoutError):
        PatternTable({pattern: 1}, where="test").first_match("to_q")


@pytest.mark.parametrize("config", [
    {"r": 0}, {"r": "8"}, {"r": True}, {"r": 8.5}, {"lora_alpha": "x"}, {"lora_alpha": float("nan")},
    {"use_rslora": "false"}, {"use_dora": 1}, {"rank_pattern": []}, {"rank_pattern": {"a": 0}},
    {"alpha_pattern": {"a": None}}, {"r": 1 << 40},
])
def test_bad_lora_config_fields_are_layout_errors(config):
    with pytest.raises(LayoutError):
        PeftScaling.from_config(config, where="test")


def test_exact_path_patterns_only_match_themselves():
    fields = compact_patterns({p: (4, 4.0) for p in PATHS} | {PATHS[1]: (8, 2.0)})
    assert fields["r"] == 4 and fields["lora_alpha"] == 4.0
    assert fields["rank_pattern"] == {PATHS[1]: 8} and fields["alpha_pattern"] == {PATHS[1]: 2.0}
    cfg = PeftScaling(r=fields["r"], lora_alpha=fields["lora_alpha"], rank_pattern=fields["rank_pattern"],
                      alpha_pattern=fields["alpha_pattern"])
    assert cfg.scale(PATHS[1]) == (8, 2.0, 0.25)
    assert cfg.scale(PATHS[2]) == (4, 4.0, 1.0)  # transformer_blocks.10 is not transformer_blocks.1


def test_rslora():
    r, alpha, scale = PeftScaling(r=16, lora_alpha=8, use_rslora=True).scale("x")
    assert math.isclose(scale, 8 / 4)


@pytest.mark.parametrize("dtype, value", [("F16", 16.0), ("BF16", 32.0), ("F32", 0.1), ("F64", 1 / 3),
                                          ("I64", 8.0), ("I32", 4.0)])
def test_alpha_scalars_round_trip(dtype, value):
    raw = encode_scalar(dtype, value)
    got = decode_scalar(dtype, raw)
    assert got == (value if dtype not in ("F32",) else pytest.approx(value, rel=1e-7))


def test_alpha_decoding_matches_torch():
    import torch
    from safetensors.torch import save

    for dtype, tdtype in (("F16", torch.float16), ("BF16", torch.bfloat16), ("I64", torch.int64)):
        t = torch.tensor(12.5 if dtype != "I64" else 12).to(tdtype)
        blob = save({"a": t})
        raw = blob[-t.element_size():]  # one tensor: its bytes end the file
        assert decode_scalar(dtype, raw) == float(t)
