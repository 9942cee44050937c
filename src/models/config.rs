//! Model configurations, deserialised straight from the diffusers / transformers `config.json`
//! files, with their libraries' defaults. Choices are enums (an unknown value is an error that
//! names it), options that change the architecture in ways this crate does not implement are
//! rejected by name, and every number that divides, indexes or sizes something is checked when
//! the file is read, so a hand-edited config gives an error instead of a crash later.
use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads and parses a JSON config file, naming the file on failure.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::io::read_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
}

/// The largest channel count, width or layer count a config may ask for: far above any Stable
/// Diffusion or CLIP model, far below sizes whose arithmetic could overflow.
pub const MAX_DIM: usize = 1 << 16;

/// Checks that `value` of `field` lies in `1..=MAX_DIM`.
fn dim(field: &str, value: usize) -> Result<()> {
    ensure!((1..=MAX_DIM).contains(&value), "`{field}` is {value}; it must be between 1 and {MAX_DIM}");
    Ok(())
}

/// Checks that `value` of `field` is finite and positive.
fn positive(field: &str, value: f64) -> Result<()> {
    ensure!(value.is_finite() && value > 0.0, "`{field}` is {value}; it must be a positive finite number");
    Ok(())
}

/// A number or one number per UNet level (diffusers accepts both for several fields).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum PerLevel {
    One(usize),
    Each(Vec<usize>),
}

impl PerLevel {
    pub fn resolve(&self, levels: usize, field: &str) -> Result<Vec<usize>> {
        let v = match self {
            PerLevel::One(n) => vec![*n; levels],
            PerLevel::Each(v) if v.len() == levels => v.clone(),
            PerLevel::Each(v) => bail!("`{field}` lists {} values for {levels} UNet levels", v.len()),
        };
        for (i, &n) in v.iter().enumerate() {
            dim(&format!("{field}[{i}]"), n)?;
        }
        Ok(v)
    }
}

/// Activation functions by their config names.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU.
    Gelu,
    /// CLIP's `x · sigmoid(1.702 x)`.
    QuickGelu,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownBlock {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpBlock {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MidBlock {
    UNetMidBlock2DCrossAttn,
}

/// `unet/config.json` of a `UNet2DConditionModel`, with diffusers' defaults.
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<DownBlock>,
    pub up_block_types: Vec<UpBlock>,
    pub mid_block_type: Option<MidBlock>,
    pub layers_per_block: usize,
    /// Despite its name, diffusers uses this as the number of heads when `num_attention_heads`
    /// is unset (true of every SD 1.x / 2.x config).
    pub attention_head_dim: PerLevel,
    pub num_attention_heads: Option<PerLevel>,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub upcast_attention: bool,
    pub sample_size: Option<usize>,
    pub act_fn: Activation,
    pub transformer_layers_per_block: PerLevel,
    // Options that change the architecture; only their diffusers defaults are implemented.
    pub only_cross_attention: serde_json::Value,
    pub dual_cross_attention: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub encoder_hid_dim: Option<usize>,
    pub time_embedding_type: String,
    pub time_cond_proj_dim: Option<usize>,
    pub resnet_time_scale_shift: String,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub center_input_sample: bool,
    pub num_class_embeds: Option<usize>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        use DownBlock::*;
        use UpBlock::*;
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: vec![CrossAttnDownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D, DownBlock2D],
            up_block_types: vec![UpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D, CrossAttnUpBlock2D],
            mid_block_type: Some(MidBlock::UNetMidBlock2DCrossAttn),
            layers_per_block: 2,
            attention_head_dim: PerLevel::One(8),
            num_attention_heads: None,
            cross_attention_dim: 1280,
            use_linear_projection: false,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            upcast_attention: false,
            sample_size: None,
            act_fn: Activation::Silu,
            transformer_layers_per_block: PerLevel::One(1),
            only_cross_attention: serde_json::Value::Null,
            dual_cross_attention: false,
            class_embed_type: None,
            addition_embed_type: None,
            encoder_hid_dim: None,
            time_embedding_type: "positional".into(),
            time_cond_proj_dim: None,
            resnet_time_scale_shift: "default".into(),
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            center_input_sample: false,
            num_class_embeds: None,
        }
    }
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate().with_context(|| format!("{}: unsupported UNet configuration", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || n > 8 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same length, 1 to 8",
                self.down_block_types.len(),
                self.up_block_types.len()
            );
        }
        if self.mid_block_type.is_none() {
            bail!("`mid_block_type` null (no middle block) is not supported");
        }
        let unsupported = [
            ("class_embed_type", self.class_embed_type.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("addition_embed_type", self.addition_embed_type.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("dual_cross_attention", self.dual_cross_attention),
            ("center_input_sample", self.center_input_sample),
            ("only_cross_attention", !matches!(self.only_cross_attention, serde_json::Value::Null | serde_json::Value::Bool(false))),
            ("time_embedding_type", self.time_embedding_type != "positional"),
            ("resnet_time_scale_shift", self.resnet_time_scale_shift != "default"),
            ("act_fn", self.act_fn != Activation::Silu),
            ("conv_in_kernel", self.conv_in_kernel != 3),
            ("conv_out_kernel", self.conv_out_kernel != 3),
        ];
        for (field, bad) in unsupported {
            if bad {
                bail!("option `{field}` has a value this implementation does not support");
            }
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("cross_attention_dim", self.cross_attention_dim),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            dim(field, v)?;
        }
        ensure!(self.downsample_padding <= 1, "`downsample_padding` is {}; 0 or 1 are supported", self.downsample_padding);
        positive("norm_eps", self.norm_eps)?;
        ensure!(self.freq_shift.is_finite() && self.freq_shift.abs() < 1e6, "`freq_shift` {} is not a usable number", self.freq_shift);
        if let Some(s) = self.sample_size {
            dim("sample_size", s)?;
        }
        let heads = self.heads()?;
        let depth = self.transformer_layers_per_block.resolve(n, "transformer_layers_per_block")?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            dim(&format!("block_out_channels[{i}]"), c)?;
            ensure!(
                c.is_multiple_of(self.norm_num_groups),
                "block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {}",
                self.norm_num_groups
            );
            ensure!(c.is_multiple_of(heads[i]), "block_out_channels[{i}] = {c} is not divisible by its {} attention heads", heads[i]);
            ensure!(depth[i] <= 64, "transformer_layers_per_block[{i}] = {} is more than 64", depth[i]);
        }
        ensure!(
            self.block_out_channels[0] * 4 <= MAX_DIM,
            "block_out_channels[0] = {} makes a time embedding wider than {MAX_DIM}",
            self.block_out_channels[0]
        );
        Ok(())
    }

    /// Heads per level, with diffusers' reading of `attention_head_dim`.
    pub fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.resolve(n, "num_attention_heads"),
            None => self.attention_head_dim.resolve(n, "attention_head_dim"),
        }
    }

    /// How many times the UNet halves the latent side.
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeDownBlock {
    DownEncoderBlock2D,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaeUpBlock {
    UpDecoderBlock2D,
}

/// `vae/config.json` of an `AutoencoderKL`, with diffusers' defaults.
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<VaeDownBlock>,
    pub up_block_types: Vec<VaeUpBlock>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    pub act_fn: Activation,
    pub sample_size: Option<usize>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![64],
            down_block_types: vec![VaeDownBlock::DownEncoderBlock2D],
            up_block_types: vec![VaeUpBlock::UpDecoderBlock2D],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            act_fn: Activation::Silu,
            sample_size: None,
        }
    }
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate().with_context(|| format!("{}: unsupported VAE configuration", path.display()))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        ensure!((1..=8).contains(&n), "block_out_channels has {n} levels; 1 to 8 are supported");
        for (field, len) in [("down_block_types", self.down_block_types.len()), ("up_block_types", self.up_block_types.len())] {
            ensure!(len == n, "`{field}` lists {len} blocks for {n} levels");
        }
        ensure!(self.act_fn == Activation::Silu, "act_fn {:?} is not supported (silu)", self.act_fn);
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("latent_channels", self.latent_channels),
            ("norm_num_groups", self.norm_num_groups),
        ] {
            dim(field, v)?;
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            dim(&format!("block_out_channels[{i}]"), c)?;
            ensure!(
                c.is_multiple_of(self.norm_num_groups),
                "block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {}",
                self.norm_num_groups
            );
        }
        positive("scaling_factor", self.scaling_factor)?;
        if let Some(s) = self.shift_factor {
            ensure!(s.is_finite(), "`shift_factor` {s} is not finite");
        }
        Ok(())
    }

    /// How many times the VAE halves the image side.
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `text_encoder/config.json` of a `CLIPTextModel` (or the `text_config` of a `CLIPModel`), with
/// transformers' defaults.
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: Activation,
    pub eos_token_id: u32,
    pub projection_dim: Option<usize>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_attention_heads: 8,
            num_hidden_layers: 12,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            eos_token_id: 49407,
            projection_dim: None,
        }
    }
}

impl ClipTextConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.check().with_context(|| format!("{}: unsupported text encoder configuration", path.display()))?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        ensure!(self.hidden_act != Activation::Silu, "hidden_act silu is not supported (quick_gelu, gelu)");
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            dim(field, v)?;
        }
        ensure!((1..=1 << 20).contains(&self.vocab_size), "`vocab_size` is {}; it must be between 1 and {}", self.vocab_size, 1 << 20);
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not divisible by num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        positive("layer_norm_eps", self.layer_norm_eps)?;
        if let Some(p) = self.projection_dim {
            dim("projection_dim", p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unet(json: &str) -> Result<UNetConfig> {
        let c: UNetConfig = serde_json::from_str(json)?;
        c.validate()?;
        Ok(c)
    }

    /// Numbers that would divide by zero, index out of range or overflow are errors naming
    /// the field; unknown choices name the value.
    #[test]
    fn bad_numbers_and_choices_are_named() {
        let base = serde_json::json!({"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 16, "norm_num_groups": 8, "attention_head_dim": 4});
        assert!(unet(&base.to_string()).is_ok());
        for (key, value, named) in [
            ("norm_num_groups", serde_json::json!(0), "norm_num_groups"),
            ("attention_head_dim", serde_json::json!(0), "attention_head_dim[0]"),
            ("attention_head_dim", serde_json::json!(5), "attention heads"),
            ("layers_per_block", serde_json::json!(0), "layers_per_block"),
            ("cross_attention_dim", serde_json::json!(0), "cross_attention_dim"),
            ("norm_eps", serde_json::json!(-1.0), "norm_eps"),
            ("block_out_channels", serde_json::json!([32, 4000000]), "block_out_channels[1]"),
            ("transformer_layers_per_block", serde_json::json!([1]), "transformer_layers_per_block"),
        ] {
            let mut json = base.clone();
            json[key] = value;
            let err = format!("{:#}", unet(&json.to_string()).unwrap_err());
            assert!(err.contains(named), "{key}: {err}");
        }
        let err = format!("{:#}", unet(r#"{"down_block_types": ["AttnDownBlock2D"]}"#).unwrap_err());
        assert!(err.contains("AttnDownBlock2D"), "{err}");
        let err = format!("{:#}", serde_json::from_str::<ClipTextConfig>(r#"{"hidden_act": "relu"}"#).unwrap_err());
        assert!(err.contains("relu"), "{err}");
        let text = |json: &str| serde_json::from_str::<ClipTextConfig>(json).unwrap().check().map_err(|e| e.to_string());
        assert!(text(r#"{"num_attention_heads": 0}"#).unwrap_err().contains("num_attention_heads"));
        assert!(text(r#"{"vocab_size": 0}"#).unwrap_err().contains("vocab_size"));
        assert!(text(r#"{"hidden_size": 30}"#).unwrap_err().contains("not divisible"));
        let vae = |json: &str| serde_json::from_str::<VaeConfig>(json).unwrap().validate().map_err(|e| e.to_string());
        assert!(vae(r#"{"norm_num_groups": 0}"#).unwrap_err().contains("norm_num_groups"));
        assert!(vae(r#"{"scaling_factor": 0.0}"#).unwrap_err().contains("scaling_factor"));
        assert!(vae(r#"{"block_out_channels": []}"#).unwrap_err().contains("levels"));
    }
}
