//! Model configurations, deserialised straight from the diffusers / transformers `config.json`
//! files. Options that change the architecture in ways this crate does not implement are
//! rejected with an error naming the field, never guessed.
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads and parses a JSON config file, naming the file on failure.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))
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
        match self {
            PerLevel::One(n) => Ok(vec![*n; levels]),
            PerLevel::Each(v) if v.len() == levels => Ok(v.clone()),
            PerLevel::Each(v) => bail!("`{field}` lists {} values for {levels} UNet levels", v.len()),
        }
    }
}

fn default_act() -> String {
    "silu".into()
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn positional() -> String {
    "positional".into()
}
fn default_shift() -> String {
    "default".into()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_kernel() -> usize {
    3
}
fn default_scaling() -> f64 {
    0.18215
}
fn default_transformer_layers() -> PerLevel {
    PerLevel::One(1)
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Deserialize, Clone, Debug)]
pub struct UNetConfig {
    #[serde(default = "default_in")]
    pub in_channels: usize,
    #[serde(default = "default_in")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_layers")]
    pub layers_per_block: usize,
    /// Despite its name, diffusers uses this as the number of heads when `num_attention_heads`
    /// is unset (true of every SD 1.x / 2.x config).
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: PerLevel,
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel>,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: PerLevel,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "default_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "default_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
}

fn default_in() -> usize {
    4
}
fn default_layers() -> usize {
    2
}
fn default_head_dim() -> PerLevel {
    PerLevel::One(8)
}

impl UNetConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.validate().with_context(|| format!("{}: unsupported UNet configuration", path.display()))?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            );
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                bail!("down block type `{t}` is not supported (CrossAttnDownBlock2D, DownBlock2D)");
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                bail!("up block type `{t}` is not supported (CrossAttnUpBlock2D, UpBlock2D)");
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => bail!("mid_block_type {other:?} is not supported (UNetMidBlock2DCrossAttn)"),
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
            ("act_fn", self.act_fn != "silu"),
            ("conv_in_kernel", self.conv_in_kernel != 3),
            ("conv_out_kernel", self.conv_out_kernel != 3),
        ];
        for (field, bad) in unsupported {
            if bad {
                bail!("option `{field}` has a value this implementation does not support");
            }
        }
        self.heads()?;
        self.transformer_layers_per_block.resolve(n, "transformer_layers_per_block")?;
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if c % self.norm_num_groups != 0 {
                bail!("block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {}", self.norm_num_groups);
            }
        }
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

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Deserialize, Clone, Debug)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "default_in")]
    pub latent_channels: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

fn three() -> usize {
    3
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        let check = || -> Result<()> {
            if c.block_out_channels.is_empty() {
                bail!("block_out_channels is empty");
            }
            for t in &c.down_block_types {
                if t != "DownEncoderBlock2D" {
                    bail!("down block type `{t}` is not supported (DownEncoderBlock2D)");
                }
            }
            for t in &c.up_block_types {
                if t != "UpDecoderBlock2D" {
                    bail!("up block type `{t}` is not supported (UpDecoderBlock2D)");
                }
            }
            if c.act_fn != "silu" {
                bail!("act_fn `{}` is not supported (silu)", c.act_fn);
            }
            Ok(())
        };
        check().with_context(|| format!("{}: unsupported VAE configuration", path.display()))?;
        Ok(c)
    }

    /// How many times the VAE halves the image side.
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn max_pos() -> usize {
    77
}
fn eos() -> u32 {
    49407
}

/// `text_encoder/config.json` of a `CLIPTextModel` (or the `text_config` of a `CLIPModel`).
#[derive(Deserialize, Clone, Debug)]
pub struct ClipTextConfig {
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    #[serde(default = "max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn vocab() -> usize {
    49408
}

impl ClipTextConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let c: Self = read_json(path)?;
        c.check().with_context(|| format!("{}: unsupported text encoder configuration", path.display()))?;
        Ok(c)
    }

    pub fn check(&self) -> Result<()> {
        if self.hidden_act != "quick_gelu" && self.hidden_act != "gelu" {
            bail!("hidden_act `{}` is not supported (quick_gelu, gelu)", self.hidden_act);
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads);
        }
        Ok(())
    }
}
