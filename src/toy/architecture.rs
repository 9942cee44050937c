//! The toy models' configurations, written as the reference libraries write them
//! (transformers' `config.json` and `preprocessor_config.json`, diffusers' `config.json` and
//! `model_index.json`), so the folders load in diffusers and transformers as they are.
use super::world;
use crate::evaluation::clip::{OPENAI_MEAN, OPENAI_STD};
use serde_json::{Value, json};

/// SD 1.5's `scheduler/scheduler_config.json`, as the fixtures hold it.
pub const SCHEDULER_CONFIG: &str = r#"{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.42.1",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "trained_betas": null
}
"#;

/// Text tower width, which is also the UNet's `cross_attention_dim`.
pub const TEXT_HIDDEN: usize = 32;

pub fn text_config_json() -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 49406,
        "dtype": "float16",
        "eos_token_id": 49407,
        "hidden_act": "quick_gelu",
        "hidden_size": TEXT_HIDDEN,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * TEXT_HIDDEN,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "pad_token_id": 49407,
        "projection_dim": 32,
        "transformers_version": "5.24.0",
        "vocab_size": 49408
    })
}

pub fn vision_config_json() -> Value {
    json!({
        "attention_dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 64,
        "image_size": world::SIZE,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 256,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 4,
        "num_channels": 3,
        "num_hidden_layers": 3,
        "patch_size": 4,
        "projection_dim": 32
    })
}

pub fn clip_config_json() -> Value {
    let mut text = text_config_json();
    let t = text.as_object_mut().unwrap();
    t.remove("transformers_version");
    t.insert("dtype".into(), json!("float16"));
    json!({
        "architectures": ["CLIPModel"],
        "dtype": "float16",
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": 32,
        "text_config": text,
        "transformers_version": "5.24.0",
        "vision_config": vision_config_json()
    })
}

pub fn preprocessor_config_json() -> Value {
    json!({
        "crop_size": {"height": world::SIZE, "width": world::SIZE},
        "do_center_crop": true,
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": OPENAI_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": OPENAI_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": world::SIZE}
    })
}

pub fn vae_config_json(scaling_factor: f64) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "block_out_channels": [16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "force_upcast": true,
        "in_channels": 3,
        "latent_channels": 4,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": 1,
        "mid_block_add_attention": true,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": world::SIZE,
        "scaling_factor": scaling_factor,
        "shift_factor": null,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "use_post_quant_conv": true,
        "use_quant_conv": true
    })
}

/// The UNet: SD 1.5's block types in SD 1.5's order (cross-attention on every level but the
/// last, and in the middle), three levels of 32 / 64 / 96 channels on 8 x 8 latents.
pub fn unet_config_json() -> Value {
    // Two halves: one `json!` of this size exceeds the macro's recursion limit.
    let mut a = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "addition_embed_type": null,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": null,
        "attention_head_dim": 4,
        "attention_type": "default",
        "block_out_channels": [32, 64, 96],
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": TEXT_HIDDEN,
        "cross_attention_norm": null,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "dropout": 0.0,
        "dual_cross_attention": false,
        "encoder_hid_dim": null
    });
    let b = json!({
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 1,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 8,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": null,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "reverse_transformer_layers_per_block": null,
        "sample_size": world::SIZE / 4,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": 1,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": false,
        "use_linear_projection": false
    });
    let map = a.as_object_mut().expect("an object");
    map.extend(b.as_object().expect("an object").clone());
    a
}

pub fn model_index_json() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}
