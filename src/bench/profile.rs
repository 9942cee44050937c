//! One phase of a case, repeated, for a sampling profiler (`bench/op_profile.py` runs `perf` over
//! it and sorts the samples by operation kind): the forward pass without a graph, forward +
//! backward to the input, or a LoRA training step.
use super::case::{BenchCase, TIMESTEP, TRAIN_TIMESTEP, train_inputs, train_noise_schedule, unet_inputs};
use crate::adapters::lora::{LoraConfig, PAPER_UNET_TARGETS, Targets, attach_new};
use crate::rng::Rng;
use crate::training::adamw::{AdamW, AdamWConfig};
use crate::training::objective::{StepInputs, cat_gradients};
use crate::training::params::{AdapterParams, Params, host};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    ForwardBackward,
    LoraStep,
}

/// Runs `phase` of `case` once to warm up, then `case.iters` times; prints nothing.
pub fn run_phase(case: &BenchCase, phase: Phase) -> Result<()> {
    let device = case.device()?;
    let (mut unet, cfg) = case.load_unet()?;
    let runs = case.iters + 1;
    match phase {
        Phase::Forward | Phase::ForwardBackward => {
            let (x, context) = unet_inputs(case, cfg.in_channels, cfg.cross_attention_dim, &device);
            let t = vec![TIMESTEP; case.batch];
            for _ in 0..runs {
                if phase == Phase::Forward {
                    let _ = unet.forward(x.clone(), &t, &context).into_data();
                } else {
                    let xg = x.clone().autodiff().require_grad();
                    let y = unet.forward(xg.clone(), &t, &context);
                    let grads = (y.clone() * y).mean().backward();
                    let _ = xg.grad(&grads).context("no gradient")?.into_data();
                }
            }
        }
        Phase::LoraStep => {
            let lora = LoraConfig {
                rank: 1,
                alpha: 1.0,
                unet_targets: PAPER_UNET_TARGETS.iter().map(|s| s.to_string()).collect(),
                text_encoder_targets: Vec::new(),
            };
            let adapter = attach_new(&mut Targets { unet: &mut unet, text_encoder: None }, &lora, &mut Rng::new(0))?;
            let mut params =
                Params::collect(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter });
            let mut opt = AdamW::new(AdamWConfig::default(), params.zeros());
            let (x0, noise, trigger, _) = train_inputs(case, cfg.in_channels, cfg.cross_attention_dim, &device);
            let schedule = train_noise_schedule();
            let t = vec![TRAIN_TIMESTEP; case.batch];
            let cond = || trigger.clone();
            for _ in 0..runs {
                let leaves = params
                    .install(&mut AdapterParams { targets: &mut Targets { unet: &mut unet, text_encoder: None }, adapter: &adapter }, true);
                let inputs = StepInputs {
                    zt: schedule.add_noise(x0.clone(), noise.clone(), &t),
                    timesteps: t.iter().map(|&t| t as f64).collect(),
                    target: noise.clone(),
                    cond_trigger: &cond,
                    preserve: Vec::new(),
                    dco_beta: None,
                    sample_weights: None,
                    prior: None,
                    batch_passes: false,
                    loss_scale: 1.0,
                };
                let (_, grads) = cat_gradients(&unet, &adapter.gate, &params, &leaves, &inputs)?;
                opt.update(&mut params.values, &grads, 1e-4);
                let _ = host(&params.values[0]);
            }
        }
    }
    Ok(())
}
