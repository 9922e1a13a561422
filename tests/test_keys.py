"""The key grammar: every layout's key shapes parse to the right module path and part."""

import pytest

from adapterctl.layouts.registry import parse_key


@pytest.mark.parametrize("key, family, component, path, part, qualifier", [
    ("lora_unet_input_blocks_4_1_proj_in.lora_down.weight", "kohya", "unet", "input_blocks_4_1_proj_in", "down", None),
    ("lora_unet_output_blocks_1_1_transformer_blocks_0_attn1_to_q.alpha", "kohya", "unet",
     "output_blocks_1_1_transformer_blocks_0_attn1_to_q", "alpha", None),
    ("lora_te2_text_model_encoder_layers_3_mlp_fc1.lora_up.weight", "kohya", "text_encoder_2",
     "text_model_encoder_layers_3_mlp_fc1", "up", None),
    ("unet.up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight", "diffusers", "unet",
     "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q", "down", None),
    ("unet.up_blocks.0.attentions.1.proj_in.lora_B.style.weight", "diffusers", "unet",
     "up_blocks.0.attentions.1.proj_in", "up", "style"),
    ("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", "diffusers", "text_encoder_2",
     "text_model.encoder.layers.0.self_attn.q_proj", "down", None),
    ("unet.unet.up_blocks.0.attentions.0.transformer_blocks.2.attn2.to_out.0.lora.up.weight", "diffusers-old", "unet",
     "up_blocks.0.attentions.0.transformer_blocks.2.attn2.to_out.0", "up", None),
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
     "diffusers-legacy-attn", "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", "down", None),
    ("text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.up.weight", "diffusers-legacy-attn",
     "text_encoder", "text_model.encoder.layers.0.self_attn.k_proj", "up", None),
    ("base_model.model.down_blocks.1.attentions.0.proj_out.lora_A.weight", "peft", None,
     "down_blocks.1.attentions.0.proj_out", "down", None),
    ("base_model.model.mid_block.attentions.0.proj_out.lora_magnitude_vector", "peft", None,
     "mid_block.attentions.0.proj_out", "magnitude", None),
    ("unet.mid_block.resnets.0.conv1.lora_experts_A.weight", "diffusers", "unet", "mid_block.resnets.0.conv1",
     "expert_down", None),
    ("unet.mid_block.resnets.0.conv1.lora_router.bias", "diffusers", "unet", "mid_block.resnets.0.conv1",
     "router_bias", None),
    ("text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_linear_layer.down.weight", "diffusers-old",
     "text_encoder", "text_model.encoder.layers.1.mlp.fc2", "down", None),
])
def test_parse(key, family, component, path, part, qualifier):
    p = parse_key(key)
    assert (p.family, p.component, p.path, p.part, p.qualifier) == (family, component, path, part, qualifier)


def test_doubled_prefix_is_flagged():
    assert parse_key("unet.unet.mid_block.attentions.0.proj_in.lora.down.weight").doubled_prefix
    assert not parse_key("unet.mid_block.attentions.0.proj_in.lora.down.weight").doubled_prefix


@pytest.mark.parametrize("key, algo", [
    ("lora_unet_input_blocks_4_1_proj_in.hada_w1_a", "loha"),
    ("lora_unet_input_blocks_4_1_proj_in.lokr_w2", "lokr"),
    ("lora_unet_input_blocks_4_1_proj_in.diff", "full"),
    ("lora_unet_input_blocks_4_1_proj_in.oft_blocks", "oft"),
])
def test_lycoris_is_recognised(key, algo):
    p = parse_key(key)
    assert p.family == "lycoris" and p.lycoris == algo


@pytest.mark.parametrize("key", ["model.diffusion_model.input_blocks.0.0.weight", "lora_unet_", "random"])
def test_unknown_keys(key):
    assert parse_key(key) is None
