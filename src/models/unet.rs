//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x / 2.x use it: a sinusoidal time
//! embedding, down blocks of ResNets and cross-attention transformers, a middle block, and up
//! blocks fed by the skip connections.
use super::config::{DownBlock, UNetConfig, UpBlock};
use super::layers::{Attention, Conv2d, GroupNorm, Layer, LayerNorm, Linear, Walk, gelu, silu, upsample_nearest_2x};
use super::path::Vs;
use super::weights::Weights;
use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor, TensorData};

/// A ResNet block with an optional time-embedding projection (the VAE's have none).
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn load(vs: &Vs, cin: usize, cout: usize, temb: Option<usize>, groups: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&vs.pp("norm1"), groups, cin, eps)?,
            conv1: Conv2d::load(&vs.pp("conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: match temb {
                Some(t) => Some(Linear::load(&vs.pp("time_emb_proj"), t, cout, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&vs.pp("norm2"), groups, cout, eps)?,
            conv2: Conv2d::load(&vs.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout { Some(Conv2d::load(&vs.pp("conv_shortcut"), cin, cout, 1, 1, 0)?) } else { None },
        })
    }

    /// `temb` is the already-activated time embedding `silu(emb)`.
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(t.clone());
            let [b, c] = t.dims();
            h = h + t.reshape([b, c, 1, 1]);
        }
        let h = self.conv2.forward(self.norm2.forward_silu(h));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        skip + h
    }

    pub fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::GroupNorm(&mut self.norm1));
        f(Layer::Conv(&mut self.conv1, false));
        if let Some(t) = &mut self.time_emb_proj {
            f(Layer::Linear(t, false));
        }
        f(Layer::GroupNorm(&mut self.norm2));
        f(Layer::Conv(&mut self.conv2, false));
        if let Some(c) = &mut self.conv_shortcut {
            f(Layer::Conv(c, false));
        }
    }
}

/// GEGLU feed-forward: `net.0.proj` gives value and gate, `net.2` projects back.
struct FeedForward {
    proj: Linear,
    out: Linear,
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

/// Projection in and out of the transformer: a 1x1 convolution (SD 1.x) or a linear layer
/// (SD 2.x, `use_linear_projection`).
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel` with `BasicTransformerBlock`s.
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    fn load(vs: &Vs, channels: usize, heads: usize, depth: usize, context_dim: usize, cfg: &UNetConfig) -> Result<Self> {
        let proj = |name: &str| -> Result<Proj> {
            Ok(if cfg.use_linear_projection {
                Proj::Linear(Linear::load(&vs.pp(name), channels, channels, true)?)
            } else {
                Proj::Conv(Conv2d::load(&vs.pp(name), channels, channels, 1, 1, 0)?)
            })
        };
        let mut blocks = Vec::with_capacity(depth);
        for d in 0..depth {
            let b = vs.pp("transformer_blocks").pp(d);
            let inner = channels * 4;
            blocks.push(TransformerBlock {
                norm1: LayerNorm::load(&b.pp("norm1"), channels, 1e-5)?,
                attn1: Attention::load_diffusers(&b.pp("attn1"), channels, channels, heads, false)?,
                norm2: LayerNorm::load(&b.pp("norm2"), channels, 1e-5)?,
                attn2: Attention::load_diffusers(&b.pp("attn2"), channels, context_dim, heads, false)?,
                norm3: LayerNorm::load(&b.pp("norm3"), channels, 1e-5)?,
                ff: FeedForward {
                    proj: Linear::load(&b.pp("ff.net.0.proj"), channels, inner * 2, true)?,
                    out: Linear::load(&b.pp("ff.net.2"), inner, channels, true)?,
                },
            });
        }
        Ok(Self {
            norm: GroupNorm::load(&vs.pp("norm"), cfg.norm_num_groups, channels, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_tokens = |t: Tensor<4>| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let mut t = match &self.proj_in {
            Proj::Conv(conv) => to_tokens(conv.forward(x)),
            Proj::Linear(lin) => lin.forward(to_tokens(x)),
        };
        for blk in &self.blocks {
            t = t.clone() + blk.attn1.forward(blk.norm1.forward(t), None, false);
            t = t.clone() + blk.attn2.forward(blk.norm2.forward(t), Some(context.clone()), false);
            let hs = blk.ff.proj.forward(blk.norm3.forward(t.clone()));
            let inner = hs.dims()[2] / 2;
            let value = hs.clone().narrow(2, 0, inner);
            let gate = hs.narrow(2, inner, inner);
            t = t + blk.ff.out.forward(value * gelu(gate));
        }
        let to_image = |t: Tensor<3>| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        let out = match &self.proj_out {
            Proj::Conv(conv) => conv.forward(to_image(t)),
            Proj::Linear(lin) => to_image(lin.forward(t)),
        };
        out + residual
    }

    /// The transformer's layers; every linear layer and 1x1 projection can take LoRA.
    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::GroupNorm(&mut self.norm));
        for proj in [&mut self.proj_in, &mut self.proj_out] {
            match proj {
                Proj::Conv(c) => f(Layer::Conv(c, true)),
                Proj::Linear(l) => f(Layer::Linear(l, true)),
            }
        }
        for blk in &mut self.blocks {
            f(Layer::LayerNorm(&mut blk.norm1));
            blk.attn1.walk(true, f);
            f(Layer::LayerNorm(&mut blk.norm2));
            blk.attn2.walk(true, f);
            f(Layer::LayerNorm(&mut blk.norm3));
            f(Layer::Linear(&mut blk.ff.proj, true));
            f(Layer::Linear(&mut blk.ff.out, true));
        }
    }
}

/// One level of the UNet: ResNets, optional transformers, optional resampler.
struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    /// Downsampler (stride-2 conv) for down levels, upsampler conv for up levels.
    sampler: Option<Conv2d>,
}

pub struct UNet {
    pub config: UNetConfig,
    time_channels: usize,
    time_linear_1: Linear,
    time_linear_2: Linear,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid_resnets: Vec<ResnetBlock>,
    mid_attention: Transformer2D,
    up: Vec<Level>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    pub fn load(w: &Weights, cfg: &UNetConfig) -> Result<Self> {
        let vs = Vs::root(w);
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let heads = cfg.heads()?;
        let depth = cfg.transformer_layers_per_block.resolve(n, "transformer_layers_per_block")?;
        let g = cfg.norm_num_groups;
        let eps = cfg.norm_eps;
        let temb = ch[0] * 4;
        let ctx = cfg.cross_attention_dim;
        for (i, &c) in ch.iter().enumerate() {
            if c % heads[i] != 0 {
                bail!("block_out_channels[{i}] = {c} is not divisible by its {} attention heads", heads[i]);
            }
        }

        let mut down = Vec::with_capacity(n);
        let mut cout = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let cin = cout;
            cout = ch[i];
            let p = vs.pp("down_blocks").pp(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let rin = if j == 0 { cin } else { cout };
                resnets.push(ResnetBlock::load(&p.pp("resnets").pp(j), rin, cout, Some(temb), g, eps)?);
                if *kind == DownBlock::CrossAttnDownBlock2D {
                    attentions.push(Transformer2D::load(&p.pp("attentions").pp(j), cout, heads[i], depth[i], ctx, cfg)?);
                }
            }
            let sampler =
                if i + 1 < n { Some(Conv2d::load(&p.pp("downsamplers.0.conv"), cout, cout, 3, 2, cfg.downsample_padding)?) } else { None };
            down.push(Level { resnets, attentions, sampler });
        }

        let cm = ch[n - 1];
        let mid = vs.pp("mid_block");
        let mid_resnets = vec![
            ResnetBlock::load(&mid.pp("resnets.0"), cm, cm, Some(temb), g, eps)?,
            ResnetBlock::load(&mid.pp("resnets.1"), cm, cm, Some(temb), g, eps)?,
        ];
        let mid_attention = Transformer2D::load(&mid.pp("attentions.0"), cm, heads[n - 1], depth[n - 1], ctx, cfg)?;

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let rev_heads: Vec<usize> = heads.iter().rev().copied().collect();
        let rev_depth: Vec<usize> = depth.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut prev = rev[0];
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let out = rev[i];
            let input = rev[(i + 1).min(n - 1)];
            let p = vs.pp("up_blocks").pp(i);
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..=cfg.layers_per_block {
                let skip = if j == cfg.layers_per_block { input } else { out };
                let rin = if j == 0 { prev } else { out };
                resnets.push(ResnetBlock::load(&p.pp("resnets").pp(j), rin + skip, out, Some(temb), g, eps)?);
                if *kind == UpBlock::CrossAttnUpBlock2D {
                    attentions.push(Transformer2D::load(&p.pp("attentions").pp(j), out, rev_heads[i], rev_depth[i], ctx, cfg)?);
                }
            }
            let sampler = if i + 1 < n { Some(Conv2d::load(&p.pp("upsamplers.0.conv"), out, out, 3, 1, 1)?) } else { None };
            up.push(Level { resnets, attentions, sampler });
            prev = out;
        }

        Ok(Self {
            config: cfg.clone(),
            time_channels: ch[0],
            time_linear_1: Linear::load(&vs.pp("time_embedding.linear_1"), ch[0], temb, true)?,
            time_linear_2: Linear::load(&vs.pp("time_embedding.linear_2"), temb, temb, true)?,
            conv_in: Conv2d::load(&vs.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down,
            mid_resnets,
            mid_attention,
            up,
            conv_norm_out: GroupNorm::load(&vs.pp("conv_norm_out"), g, ch[0], eps)?,
            conv_out: Conv2d::load(&vs.pp("conv_out"), ch[0], cfg.out_channels, 3, 1, 1)?,
        })
    }

    pub fn device(&self) -> Device {
        self.conv_in.weight.device()
    }

    /// Sinusoidal timestep features `[B, block_out_channels[0]]`, as diffusers' `Timesteps`.
    fn time_features(&self, timesteps: &[f64]) -> Tensor<2> {
        let dim = self.time_channels;
        let half = dim / 2;
        let shift = self.config.freq_shift;
        let mut v = Vec::with_capacity(timesteps.len() * dim);
        for &t in timesteps {
            // diffusers computes the frequencies and their product with t in float32.
            let args: Vec<f32> = (0..half)
                .map(|i| {
                    let exponent = -(10000f64.ln() as f32) * i as f32 / (half as f32 - shift as f32);
                    t as f32 * exponent.exp()
                })
                .collect();
            let (first, second): (Vec<f32>, Vec<f32>) = if self.config.flip_sin_to_cos {
                (args.iter().map(|a| a.cos()).collect(), args.iter().map(|a| a.sin()).collect())
            } else {
                (args.iter().map(|a| a.sin()).collect(), args.iter().map(|a| a.cos()).collect())
            };
            v.extend(first);
            v.extend(second);
            if dim % 2 == 1 {
                v.push(0.0);
            }
        }
        // Follow the weights' precision (f64 in the gradient checks).
        Tensor::<2>::from_data(TensorData::new(v, [timesteps.len(), dim]), &self.device()).cast(self.conv_in.weight.dtype())
    }

    /// Predicts noise (or velocity) for latents `[B, C, H, W]` at one timestep per sample,
    /// conditioned on text hidden states `[B, N, cross_attention_dim]`.
    /// The model computes in its weights' type (half precision under `--precision`) and answers
    /// in the type of `x`.
    pub fn forward(&self, x: Tensor<4>, timesteps: &[f64], context: &Tensor<3>) -> Tensor<4> {
        let (dtype, answer) = (self.conv_in.weight.dtype(), x.dtype());
        let (x, context) = (x.cast(dtype), &context.clone().cast(dtype));
        let emb = self.time_linear_2.forward(silu(self.time_linear_1.forward(self.time_features(timesteps))));
        let temb = silu(emb);
        let temb = Some(&temb);

        let mut h = self.conv_in.forward(x);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for (j, res) in level.resnets.iter().enumerate() {
                h = res.forward(h, temb);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, context);
                }
                skips.push(h.clone());
            }
            if let Some(conv) = &level.sampler {
                h = conv.forward(h);
                skips.push(h.clone());
            }
        }

        h = self.mid_resnets[0].forward(h, temb);
        h = self.mid_attention.forward(h, context);
        h = self.mid_resnets[1].forward(h, temb);

        for level in &self.up {
            for (j, res) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip connection per up-block ResNet");
                h = res.forward(Tensor::cat(vec![h, skip], 1), temb);
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, context);
                }
            }
            if let Some(conv) = &level.sampler {
                h = conv.forward(upsample_nearest_2x(h));
            }
        }
        self.conv_out.forward(self.conv_norm_out.forward_silu(h)).cast(answer)
    }
}

impl Walk for UNet {
    /// Down levels, the middle block, up levels: the order of the forward pass, in which LoRA
    /// targets are listed (and new adapters drawn).
    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::Linear(&mut self.time_linear_1, false));
        f(Layer::Linear(&mut self.time_linear_2, false));
        f(Layer::Conv(&mut self.conv_in, false));
        let level = |level: &'a mut Level, f: &mut dyn FnMut(Layer<'a>)| {
            for r in &mut level.resnets {
                r.walk(f);
            }
            for a in &mut level.attentions {
                a.walk(f);
            }
            if let Some(c) = &mut level.sampler {
                f(Layer::Conv(c, false));
            }
        };
        for l in &mut self.down {
            level(l, f);
        }
        for r in &mut self.mid_resnets {
            r.walk(f);
        }
        self.mid_attention.walk(f);
        for l in &mut self.up {
            level(l, f);
        }
        f(Layer::GroupNorm(&mut self.conv_norm_out));
        f(Layer::Conv(&mut self.conv_out, false));
    }
}
