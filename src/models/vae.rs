//! diffusers' `AutoencoderKL`: the encoder maps images in [-1, 1] to a diagonal Gaussian over
//! latents, the decoder maps latents back. Scaling by `scaling_factor` is the caller's job, as in
//! diffusers.
use super::config::VaeConfig;
use super::layers::{Conv2d, GroupNorm, Linear, ParamVisitor, join, multi_head_attention, upsample_nearest_2x};
use super::unet::ResnetBlock;
use super::weights::Weights;
use anyhow::Result;
use burn::tensor::Tensor;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

const EPS: f64 = 1e-6;

/// Single-head spatial self-attention of the VAE's middle block.
struct SpatialAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl SpatialAttention {
    fn load(w: &Weights, p: &str, c: usize, groups: usize) -> Result<Self> {
        // Old checkpoints name the projections query / key / value / proj_attn.
        let old = !w.has(&join(p, "to_q.weight")) && w.has(&join(p, "query.weight"));
        let n = |new: &str, legacy: &str| join(p, if old { legacy } else { new });
        Ok(Self {
            group_norm: GroupNorm::load(w, &join(p, "group_norm"), groups, c, EPS)?,
            to_q: Linear::load(w, &n("to_q", "query"), c, c, true)?,
            to_k: Linear::load(w, &n("to_k", "key"), c, c, true)?,
            to_v: Linear::load(w, &n("to_v", "value"), c, c, true)?,
            to_out: Linear::load(w, &n("to_out.0", "proj_attn"), c, c, true)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, wd] = x.dims();
        let t = self.group_norm.forward(x.clone()).reshape([b, c, h * wd]).swap_dims(1, 2);
        let a = multi_head_attention(self.to_q.forward(t.clone()), self.to_k.forward(t.clone()), self.to_v.forward(t), 1, false);
        let out = self.to_out.forward(a).swap_dims(1, 2).reshape([b, c, h, wd]);
        out + x
    }

    fn visit(&mut self, p: &str, v: &mut dyn ParamVisitor) {
        self.group_norm.visit(&join(p, "group_norm"), v);
        self.to_q.visit(&join(p, "to_q"), v);
        self.to_k.visit(&join(p, "to_k"), v);
        self.to_v.visit(&join(p, "to_v"), v);
        self.to_out.visit(&join(p, "to_out.0"), v);
    }
}

struct MidBlock {
    resnets: [ResnetBlock; 2],
    attention: Option<SpatialAttention>,
}

impl MidBlock {
    fn load(w: &Weights, p: &str, c: usize, cfg: &VaeConfig) -> Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(Self {
            resnets: [
                ResnetBlock::load(w, &join(p, "resnets.0"), c, c, None, g, EPS)?,
                ResnetBlock::load(w, &join(p, "resnets.1"), c, c, None, g, EPS)?,
            ],
            attention: if cfg.mid_block_add_attention { Some(SpatialAttention::load(w, &join(p, "attentions.0"), c, g)?) } else { None },
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x, None);
        if let Some(a) = &self.attention {
            h = a.forward(h);
        }
        self.resnets[1].forward(h, None)
    }

    fn visit(&mut self, p: &str, v: &mut dyn ParamVisitor) {
        self.resnets[0].visit(&join(p, "resnets.0"), v);
        self.resnets[1].visit(&join(p, "resnets.1"), v);
        if let Some(a) = &mut self.attention {
            a.visit(&join(p, "attentions.0"), v);
        }
    }
}

struct Block {
    resnets: Vec<ResnetBlock>,
    sampler: Option<Conv2d>,
}

pub struct Vae {
    pub config: VaeConfig,
    enc_conv_in: Conv2d,
    enc_blocks: Vec<Block>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_blocks: Vec<Block>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

impl Vae {
    pub fn load(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let l = cfg.latent_channels;

        let mut enc_blocks = Vec::with_capacity(n);
        let mut cout = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let cin = cout;
            cout = c;
            let p = format!("encoder.down_blocks.{i}");
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ResnetBlock::load(w, &format!("{p}.resnets.{j}"), if j == 0 { cin } else { cout }, cout, None, g, EPS))
                .collect::<Result<_>>()?;
            // diffusers pads (0, 1, 0, 1) and convolves with stride 2, no padding.
            let sampler = if i + 1 < n { Some(Conv2d::load(w, &format!("{p}.downsamplers.0.conv"), cout, cout, 3, 2, 0)?) } else { None };
            enc_blocks.push(Block { resnets, sampler });
        }

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut dec_blocks = Vec::with_capacity(n);
        let mut prev = rev[0];
        for (i, &out) in rev.iter().enumerate() {
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| ResnetBlock::load(w, &format!("{p}.resnets.{j}"), if j == 0 { prev } else { out }, out, None, g, EPS))
                .collect::<Result<_>>()?;
            let sampler = if i + 1 < n { Some(Conv2d::load(w, &format!("{p}.upsamplers.0.conv"), out, out, 3, 1, 1)?) } else { None };
            dec_blocks.push(Block { resnets, sampler });
            prev = out;
        }

        Ok(Self {
            enc_conv_in: Conv2d::load(w, "encoder.conv_in", cfg.in_channels, ch[0], 3, 1, 1)?,
            enc_blocks,
            enc_mid: MidBlock::load(w, "encoder.mid_block", ch[n - 1], cfg)?,
            enc_norm_out: GroupNorm::load(w, "encoder.conv_norm_out", g, ch[n - 1], EPS)?,
            enc_conv_out: Conv2d::load(w, "encoder.conv_out", ch[n - 1], 2 * l, 3, 1, 1)?,
            quant_conv: if cfg.use_quant_conv { Some(Conv2d::load(w, "quant_conv", 2 * l, 2 * l, 1, 1, 0)?) } else { None },
            post_quant_conv: if cfg.use_post_quant_conv { Some(Conv2d::load(w, "post_quant_conv", l, l, 1, 1, 0)?) } else { None },
            dec_conv_in: Conv2d::load(w, "decoder.conv_in", l, ch[n - 1], 3, 1, 1)?,
            dec_mid: MidBlock::load(w, "decoder.mid_block", ch[n - 1], cfg)?,
            dec_blocks,
            dec_norm_out: GroupNorm::load(w, "decoder.conv_norm_out", g, ch[0], EPS)?,
            dec_conv_out: Conv2d::load(w, "decoder.conv_out", ch[0], cfg.out_channels, 3, 1, 1)?,
            config: cfg.clone(),
        })
    }

    /// Mean and log-variance `[B, latent, H/f, W/f]` of the latent distribution of images in [-1, 1].
    pub fn encode(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let mut h = self.enc_conv_in.forward(x);
        for blk in &self.enc_blocks {
            for r in &blk.resnets {
                h = r.forward(h, None);
            }
            if let Some(conv) = &blk.sampler {
                let opts = ConvOptions::new_with_padding([2, 2], [(0, 1), (0, 1)], [1, 1], 1);
                h = conv2d(h, conv.weight.clone(), conv.bias.clone(), opts);
            }
        }
        h = self.enc_mid.forward(h);
        h = self.enc_conv_out.forward(self.enc_norm_out.forward_silu(h));
        if let Some(q) = &self.quant_conv {
            h = q.forward(h);
        }
        let l = self.config.latent_channels;
        let mean = h.clone().narrow(1, 0, l);
        let logvar = h.narrow(1, l, l).clamp(-30.0, 20.0);
        (mean, logvar)
    }

    /// Images in roughly [-1, 1] from unscaled latents.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = match &self.post_quant_conv {
            Some(c) => c.forward(z),
            None => z,
        };
        h = self.dec_conv_in.forward(h);
        h = self.dec_mid.forward(h);
        for blk in &self.dec_blocks {
            for r in &blk.resnets {
                h = r.forward(h, None);
            }
            if let Some(conv) = &blk.sampler {
                h = conv.forward(upsample_nearest_2x(h));
            }
        }
        self.dec_conv_out.forward(self.dec_norm_out.forward_silu(h))
    }

    pub fn visit(&mut self, v: &mut dyn ParamVisitor) {
        self.enc_conv_in.visit("encoder.conv_in", v);
        for (prefix, blocks, sampler) in [
            ("encoder.down_blocks", &mut self.enc_blocks, "downsamplers.0.conv"),
            ("decoder.up_blocks", &mut self.dec_blocks, "upsamplers.0.conv"),
        ] {
            for (i, b) in blocks.iter_mut().enumerate() {
                for (j, r) in b.resnets.iter_mut().enumerate() {
                    r.visit(&format!("{prefix}.{i}.resnets.{j}"), v);
                }
                if let Some(c) = &mut b.sampler {
                    c.visit(&format!("{prefix}.{i}.{sampler}"), v);
                }
            }
        }
        self.enc_mid.visit("encoder.mid_block", v);
        self.enc_norm_out.visit("encoder.conv_norm_out", v);
        self.enc_conv_out.visit("encoder.conv_out", v);
        if let Some(c) = &mut self.quant_conv {
            c.visit("quant_conv", v);
        }
        if let Some(c) = &mut self.post_quant_conv {
            c.visit("post_quant_conv", v);
        }
        self.dec_conv_in.visit("decoder.conv_in", v);
        self.dec_mid.visit("decoder.mid_block", v);
        self.dec_norm_out.visit("decoder.conv_norm_out", v);
        self.dec_conv_out.visit("decoder.conv_out", v);
    }
}
