"""The model configs each architecture map is generated from, as plain data (no imports).

SDXL's are the published ones, written out in full (defaults included) so that a map never
silently follows a change of default in a future diffusers. ``sdxl-tiny`` is SDXL's topology
at toy width: every block, transformer depth and module name of SDXL, so B-LoRA, block
selectors, SGM names and LBW slots all mean the same there, but a training step takes well
under a second on a CPU. It has random weights: its images are noise, by design.

Besides the three LoRA-targetable models, a map carries what a diffusers pipeline folder needs
to be rebuilt offline (``pipeline``): model_index, VAE, scheduler and tokenizer configs.
"""

from __future__ import annotations

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json, minus the _class_name and
# _diffusers_version bookkeeping.  Written out in full (defaults included) so the map
# does not silently follow a change of default in a future diffusers.
SDXL_UNET_CONFIG: dict = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": True,
}

_CLIP_COMMON: dict = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "pad_token_id": 1,
    "vocab_size": 49408,
}
# CLIP ViT-L/14 text tower (OpenAI); SDXL uses its penultimate hidden state.
SDXL_TE1_CONFIG: dict = {
    **_CLIP_COMMON,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
}
# OpenCLIP ViT-bigG/14 text tower; unlike OpenAI CLIP it was trained with exact gelu.
SDXL_TE2_CONFIG: dict = {
    **_CLIP_COMMON,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

_MODEL_INDEX: dict = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
SDXL_SCHEDULER_CONFIG: dict = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json
SDXL_VAE_CONFIG: dict = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
_TOKENIZER: dict = {
    "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
}
# SDXL's second tokenizer pads with "!" (OpenCLIP's convention), the first with <|endoftext|>.
_TOKENIZER_2: dict = {**_TOKENIZER, "pad_token": "!"}

SDXL = {
    "configs": {"unet": SDXL_UNET_CONFIG, "text_encoder": SDXL_TE1_CONFIG, "text_encoder_2": SDXL_TE2_CONFIG},
    "pipeline": {
        "model_index": _MODEL_INDEX, "scheduler": SDXL_SCHEDULER_CONFIG, "vae": SDXL_VAE_CONFIG,
        "tokenizer": _TOKENIZER, "tokenizer_2": _TOKENIZER_2, "native_resolution": 1024,
        # The CLIP vocabularies (2 MB) are not shipped: a single-file checkpoint needs them cached.
        "tokenizer_files": None,
    },
}

# --- sdxl-tiny -------------------------------------------------------------------------------
# Widths must stay strictly increasing, or the resnets that change width in SDXL (and so carry
# conv_shortcut) would lose it. attention_head_dim holds head *counts* (SDXL's quirk).
TINY_TE1_WIDTH, TINY_TE2_WIDTH, TINY_TIME_DIM = 16, 24, 8
# Byte-level BPE with no merges: the 256 byte symbols, each again with CLIP's end-of-word mark,
# and the two specials (arch/generate.py writes the vocabulary files).
TINY_VOCAB_SIZE = 2 * 256 + 2

TINY_UNET_CONFIG: dict = {
    **SDXL_UNET_CONFIG,
    "block_out_channels": [16, 32, 64],
    "norm_num_groups": 8,
    "attention_head_dim": [1, 2, 4],
    "cross_attention_dim": TINY_TE1_WIDTH + TINY_TE2_WIDTH,
    "addition_time_embed_dim": TINY_TIME_DIM,
    # six micro-conditioning numbers, each embedded, plus the pooled TE2 output
    "projection_class_embeddings_input_dim": 6 * TINY_TIME_DIM + TINY_TE2_WIDTH,
    "sample_size": 16,
}


def _tiny_te(base: dict, width: int) -> dict:
    return {**base, "hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 2,
            "num_hidden_layers": 2, "projection_dim": width, "vocab_size": TINY_VOCAB_SIZE}


TINY_VAE_CONFIG: dict = {
    **SDXL_VAE_CONFIG,
    "block_out_channels": [8, 16, 16, 16],  # four levels: the same 8x latent downscale as SDXL
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 128,
}

SDXL_TINY = {
    "configs": {"unet": TINY_UNET_CONFIG, "text_encoder": _tiny_te(SDXL_TE1_CONFIG, TINY_TE1_WIDTH),
                "text_encoder_2": _tiny_te(SDXL_TE2_CONFIG, TINY_TE2_WIDTH)},
    "pipeline": {
        "model_index": _MODEL_INDEX, "scheduler": SDXL_SCHEDULER_CONFIG, "vae": TINY_VAE_CONFIG,
        "tokenizer": _TOKENIZER, "tokenizer_2": _TOKENIZER_2, "native_resolution": 128,
        "tokenizer_files": "sdxl-tiny.tokenizer",
    },
}
