//! diffusers' `AutoencoderKL`: the encoder maps images in [-1, 1] to a diagonal Gaussian over
//! latents, the decoder maps latents back. Scaling by `scaling_factor` is the caller's job, as in
//! diffusers.
use super::config::VaeConfig;
use super::layers::{Conv2d, GroupNorm, Layer, Linear, Walk, conv_accurately, multi_head_attention, upsample_nearest_2x};
use super::path::Vs;
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
    fn load(vs: &Vs, c: usize, groups: usize) -> Result<Self> {
        // Old checkpoints name the projections query / key / value / proj_attn.
        let old = !vs.has("to_q.weight") && vs.has("query.weight");
        let n = |new: &str, legacy: &str| vs.pp(if old { legacy } else { new });
        Ok(Self {
            group_norm: GroupNorm::load(&vs.pp("group_norm"), groups, c, EPS)?,
            to_q: Linear::load(&n("to_q", "query"), c, c, true)?,
            to_k: Linear::load(&n("to_k", "key"), c, c, true)?,
            to_v: Linear::load(&n("to_v", "value"), c, c, true)?,
            to_out: Linear::load(&n("to_out.0", "proj_attn"), c, c, true)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, wd] = x.dims();
        let t = self.group_norm.forward(x.clone()).reshape([b, c, h * wd]).swap_dims(1, 2);
        let a = multi_head_attention(self.to_q.forward(t.clone()), self.to_k.forward(t.clone()), self.to_v.forward(t), 1, false);
        let out = self.to_out.forward(a).swap_dims(1, 2).reshape([b, c, h, wd]);
        out + x
    }

    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::GroupNorm(&mut self.group_norm));
        for lin in [&mut self.to_q, &mut self.to_k, &mut self.to_v, &mut self.to_out] {
            f(Layer::Linear(lin, false));
        }
    }
}

struct MidBlock {
    resnets: [ResnetBlock; 2],
    attention: Option<SpatialAttention>,
}

impl MidBlock {
    fn load(vs: &Vs, c: usize, cfg: &VaeConfig) -> Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(Self {
            resnets: [
                ResnetBlock::load(&vs.pp("resnets.0"), c, c, None, g, EPS)?,
                ResnetBlock::load(&vs.pp("resnets.1"), c, c, None, g, EPS)?,
            ],
            attention: if cfg.mid_block_add_attention { Some(SpatialAttention::load(&vs.pp("attentions.0"), c, g)?) } else { None },
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x, None);
        if let Some(a) = &self.attention {
            h = a.forward(h);
        }
        self.resnets[1].forward(h, None)
    }

    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        let [r0, r1] = &mut self.resnets;
        r0.walk(f);
        r1.walk(f);
        if let Some(a) = &mut self.attention {
            a.walk(f);
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
        let vs = Vs::root(w);
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let l = cfg.latent_channels;

        let mut enc_blocks = Vec::with_capacity(n);
        let mut cout = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let cin = cout;
            cout = c;
            let p = vs.pp("encoder.down_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ResnetBlock::load(&p.pp("resnets").pp(j), if j == 0 { cin } else { cout }, cout, None, g, EPS))
                .collect::<Result<_>>()?;
            // diffusers pads (0, 1, 0, 1) and convolves with stride 2, no padding.
            let sampler = if i + 1 < n { Some(Conv2d::load(&p.pp("downsamplers.0.conv"), cout, cout, 3, 2, 0)?) } else { None };
            enc_blocks.push(Block { resnets, sampler });
        }

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut dec_blocks = Vec::with_capacity(n);
        let mut prev = rev[0];
        for (i, &out) in rev.iter().enumerate() {
            let p = vs.pp("decoder.up_blocks").pp(i);
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| ResnetBlock::load(&p.pp("resnets").pp(j), if j == 0 { prev } else { out }, out, None, g, EPS))
                .collect::<Result<_>>()?;
            let sampler = if i + 1 < n { Some(Conv2d::load(&p.pp("upsamplers.0.conv"), out, out, 3, 1, 1)?) } else { None };
            dec_blocks.push(Block { resnets, sampler });
            prev = out;
        }

        Ok(Self {
            enc_conv_in: Conv2d::load(&vs.pp("encoder.conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            enc_blocks,
            enc_mid: MidBlock::load(&vs.pp("encoder.mid_block"), ch[n - 1], cfg)?,
            enc_norm_out: GroupNorm::load(&vs.pp("encoder.conv_norm_out"), g, ch[n - 1], EPS)?,
            enc_conv_out: Conv2d::load(&vs.pp("encoder.conv_out"), ch[n - 1], 2 * l, 3, 1, 1)?,
            quant_conv: if cfg.use_quant_conv { Some(Conv2d::load(&vs.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?) } else { None },
            post_quant_conv: if cfg.use_post_quant_conv { Some(Conv2d::load(&vs.pp("post_quant_conv"), l, l, 1, 1, 0)?) } else { None },
            dec_conv_in: Conv2d::load(&vs.pp("decoder.conv_in"), l, ch[n - 1], 3, 1, 1)?,
            dec_mid: MidBlock::load(&vs.pp("decoder.mid_block"), ch[n - 1], cfg)?,
            dec_blocks,
            dec_norm_out: GroupNorm::load(&vs.pp("decoder.conv_norm_out"), g, ch[0], EPS)?,
            dec_conv_out: Conv2d::load(&vs.pp("decoder.conv_out"), ch[0], cfg.out_channels, 3, 1, 1)?,
            config: cfg.clone(),
        })
    }

    /// Mean and log-variance `[B, latent, H/f, W/f]` of the latent distribution of images in [-1, 1].
    /// Computes in the weights' type and answers in the type of `x`.
    pub fn encode(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let answer = x.dtype();
        let mut h = self.enc_conv_in.forward(x.cast(self.enc_conv_in.weight.dtype()));
        for blk in &self.enc_blocks {
            for r in &blk.resnets {
                h = r.forward(h, None);
            }
            if let Some(conv) = &blk.sampler {
                let opts = ConvOptions::new_with_padding([2, 2], [(0, 1), (0, 1)], [1, 1], 1);
                h = conv_accurately(h, conv.weight.clone(), conv.bias.clone(), |x, w, b| conv2d(x, w, b, opts));
            }
        }
        h = self.enc_mid.forward(h);
        h = self.enc_conv_out.forward(self.enc_norm_out.forward_silu(h));
        if let Some(q) = &self.quant_conv {
            h = q.forward(h);
        }
        let l = self.config.latent_channels;
        let h = h.cast(answer);
        let mean = h.clone().narrow(1, 0, l);
        let logvar = h.narrow(1, l, l).clamp(-30.0, 20.0);
        (mean, logvar)
    }

    /// Images in roughly [-1, 1] from unscaled latents.
    /// Computes in the weights' type and answers in the type of `z`.
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let answer = z.dtype();
        let z = z.cast(self.dec_conv_in.weight.dtype());
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
        self.dec_conv_out.forward(self.dec_norm_out.forward_silu(h)).cast(answer)
    }
}

impl Walk for Vae {
    fn walk<'a>(&'a mut self, f: &mut dyn FnMut(Layer<'a>)) {
        f(Layer::Conv(&mut self.enc_conv_in, false));
        for b in self.enc_blocks.iter_mut().chain(&mut self.dec_blocks) {
            for r in &mut b.resnets {
                r.walk(f);
            }
            if let Some(c) = &mut b.sampler {
                f(Layer::Conv(c, false));
            }
        }
        self.enc_mid.walk(f);
        f(Layer::GroupNorm(&mut self.enc_norm_out));
        f(Layer::Conv(&mut self.enc_conv_out, false));
        for c in [&mut self.quant_conv, &mut self.post_quant_conv].into_iter().flatten() {
            f(Layer::Conv(c, false));
        }
        f(Layer::Conv(&mut self.dec_conv_in, false));
        self.dec_mid.walk(f);
        f(Layer::GroupNorm(&mut self.dec_norm_out));
        f(Layer::Conv(&mut self.dec_conv_out, false));
    }
}
