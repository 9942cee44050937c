//! The performance targets, in one table with their meaning. Each is a ratio with an upper
//! bound; time ratios count only when the machine was idle while both engines ran, memory ratios
//! always (memory does not depend on load).
use super::machine::Idle;
use super::train::TrainRow;
use super::unet::BenchResult;
use anyhow::Result;
use std::io::Write;

/// Which engine a catlora column ran on: the targets differ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Engine {
    /// burn's pure-Rust CPU backend (the default build).
    Flex,
    /// burn's LibTorch backend: PyTorch's own kernels under catlora's model code.
    LibTorch,
    /// Anything else (Vulkan): no target is set yet.
    Other,
}

impl Engine {
    /// From the engine label (`catlora (burn 0.22.1, <device>, f32)`).
    pub fn of(engine: &str) -> Self {
        if engine.contains("libtorch") {
            Engine::LibTorch
        } else if engine.contains(", cpu,") || engine.contains(", flex,") {
            Engine::Flex
        } else {
            Engine::Other
        }
    }
}

/// What a ratio measures and its bound per engine (`None`: no target on that engine).
pub struct Target {
    pub what: &'static str,
    pub time: bool,
    pub flex: Option<f64>,
    pub libtorch: Option<f64>,
}

impl Target {
    fn bound(&self, e: Engine) -> Option<f64> {
        match e {
            Engine::Flex => self.flex,
            Engine::LibTorch => self.libtorch,
            Engine::Other => None,
        }
    }
}

/// catlora's UNet passes against PyTorch + diffusers on the same machine: the LibTorch device
/// runs PyTorch's kernels and must not be slower; the pure-Rust default may take 1.5x.
pub const UNET_FORWARD: Target = Target { what: "forward time, catlora / PyTorch", time: true, flex: Some(1.5), libtorch: Some(1.0) };
pub const UNET_FWD_BWD: Target = Target { what: "fwd+bwd time, catlora / PyTorch", time: true, flex: Some(1.5), libtorch: Some(1.0) };
pub const UNET_FORWARD_PEAK: Target =
    Target { what: "forward peak above runtime, catlora / PyTorch", time: false, flex: Some(1.0), libtorch: Some(1.0) };
pub const UNET_FWD_BWD_PEAK: Target =
    Target { what: "fwd+bwd peak above runtime, catlora / PyTorch", time: false, flex: Some(1.0), libtorch: Some(1.0) };

/// A training step, same algorithm on both sides.
pub const LORA_STEP: Target = Target { what: "LoRA step, catlora / PyTorch", time: true, flex: Some(1.5), libtorch: Some(1.0) };
/// CAT against PyTorch running the same algorithm (the adapter switched off for the base pass):
/// catlora runs the base pass without a graph and the two adapter passes one after the other
/// (`--batch-passes=false`).
pub const CAT_STEP_VS_OFF: Target =
    Target { what: "CAT step, catlora / PyTorch adapter-off CAT", time: true, flex: Some(1.5), libtorch: Some(0.9) };
/// The same with the two adapter passes as one batch of two (`train`'s default).
pub const CAT_BATCHED_VS_OFF: Target =
    Target { what: "CAT step, batched passes / PyTorch adapter-off", time: true, flex: Some(1.5), libtorch: Some(0.9) };
pub const CAT_BATCHED_OVER_LORA: Target =
    Target { what: "CAT step, batched passes / LoRA step (catlora)", time: true, flex: Some(2.5), libtorch: Some(2.5) };
pub const CAT_BATCHED_PEAK_VS_OFF: Target =
    Target { what: "CAT peak, batched passes / PyTorch adapter-off", time: false, flex: Some(1.0), libtorch: Some(1.0) };
/// CAT against the authors' formulation (a second UNet copy).
pub const CAT_STEP_VS_AUTHORS: Target =
    Target { what: "CAT step, catlora / PyTorch authors' CAT", time: true, flex: Some(1.5), libtorch: Some(1.0) };
/// Three forward and two backward passes against one and one: the exact method's floor is 7/3.
pub const CAT_OVER_LORA: Target = Target { what: "CAT step / LoRA step (catlora)", time: true, flex: Some(2.5), libtorch: Some(2.5) };
pub const LORA_PEAK: Target = Target { what: "LoRA peak above load, catlora / PyTorch", time: false, flex: Some(1.0), libtorch: Some(1.0) };
pub const CAT_PEAK_VS_OFF: Target =
    Target { what: "CAT peak above load, catlora / PyTorch adapter-off", time: false, flex: Some(1.0), libtorch: Some(1.0) };
/// CAT keeps no second model and no doubled batch.
pub const CAT_PEAK_OVER_LORA: Target =
    Target { what: "CAT peak / LoRA peak above load (catlora)", time: false, flex: Some(1.1), libtorch: Some(1.1) };
pub const CAT_PEAK_VS_AUTHORS: Target =
    Target { what: "CAT peak above load, catlora / PyTorch authors'", time: false, flex: Some(0.6), libtorch: Some(0.6) };

/// One ratio against its target.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub what: &'static str,
    pub value: f64,
    pub bound: Option<f64>,
    /// `None`: no target on this engine, or a time ratio measured while the machine was busy.
    pub met: Option<bool>,
    pub withheld: bool,
}

fn verdict(t: &Target, engine: Engine, value: f64, idle: &Idle) -> Verdict {
    let withheld = t.time && !idle.is_idle();
    let bound = t.bound(engine);
    let met = if withheld { None } else { bound.map(|b| value <= b) };
    Verdict { what: t.what, value, bound, met, withheld }
}

pub fn unet_verdicts(engine: &str, c: &BenchResult, t: &BenchResult, idle: &Idle) -> Vec<Verdict> {
    let e = Engine::of(engine);
    vec![
        verdict(&UNET_FORWARD, e, c.forward_ms / t.forward_ms, idle),
        verdict(&UNET_FWD_BWD, e, c.forward_backward_ms / t.forward_backward_ms, idle),
        verdict(&UNET_FORWARD_PEAK, e, (c.peak_forward_mb - c.rss_base_mb) / (t.peak_forward_mb - t.rss_base_mb), idle),
        verdict(&UNET_FWD_BWD_PEAK, e, (c.peak_backward_mb - c.rss_base_mb) / (t.peak_backward_mb - t.rss_base_mb), idle),
    ]
}

pub fn train_verdicts(r: &TrainRow) -> Vec<Verdict> {
    let e = Engine::of(&r.lora.engine);
    let idle = &r.idle;
    let mut v = vec![
        verdict(&CAT_OVER_LORA, e, r.cat.step_ms / r.lora.step_ms, idle),
        verdict(&CAT_PEAK_OVER_LORA, e, r.cat.peak_above_load_mb() / r.lora.peak_above_load_mb(), idle),
        verdict(&CAT_BATCHED_OVER_LORA, e, r.cat_batched.step_ms / r.lora.step_ms, idle),
    ];
    if let Some(t) = &r.torch_lora {
        v.push(verdict(&LORA_STEP, e, r.lora.step_ms / t.step_ms, idle));
        v.push(verdict(&LORA_PEAK, e, r.lora.peak_above_load_mb() / t.peak_above_load_mb(), idle));
    }
    if let Some(t) = &r.torch_cat_off {
        v.push(verdict(&CAT_STEP_VS_OFF, e, r.cat.step_ms / t.step_ms, idle));
        v.push(verdict(&CAT_PEAK_VS_OFF, e, r.cat.peak_above_load_mb() / t.peak_above_load_mb(), idle));
        v.push(verdict(&CAT_BATCHED_VS_OFF, e, r.cat_batched.step_ms / t.step_ms, idle));
        v.push(verdict(&CAT_BATCHED_PEAK_VS_OFF, e, r.cat_batched.peak_above_load_mb() / t.peak_above_load_mb(), idle));
    }
    if let Some(t) = &r.torch_cat_authors {
        v.push(verdict(&CAT_STEP_VS_AUTHORS, e, r.cat.step_ms / t.step_ms, idle));
        v.push(verdict(&CAT_PEAK_VS_AUTHORS, e, r.cat.peak_above_load_mb() / t.peak_above_load_mb(), idle));
    }
    v
}

pub fn print_verdicts(verdicts: &[Verdict], out: &mut dyn Write) -> Result<()> {
    writeln!(out, "{:<10} {:<52} {:>8} {:>8}", "", "target ratio", "value", "bound")?;
    for v in verdicts {
        let bound = v.bound.map_or("-".to_string(), |b| format!("<= {b}"));
        let verdict = match (v.withheld, v.met) {
            (true, _) => "withheld: not idle",
            (false, Some(true)) => "met",
            (false, Some(false)) => "MISSED",
            (false, None) => "",
        };
        let value = if v.withheld { "-".to_string() } else { format!("{:.3}", v.value) };
        writeln!(out, "{:<10} {:<52} {:>8} {:>8} {verdict}", "", v.what, value, bound)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_by_engine_and_time_ratios_need_an_idle_machine() {
        assert_eq!(Engine::of("catlora (burn 0.22.1, cpu, f32)"), Engine::Flex);
        assert_eq!(Engine::of("catlora (burn 0.22.1, libtorch-cuda:0, f32)"), Engine::LibTorch);
        assert_eq!(Engine::of("catlora (burn 0.22.1, vulkan, f32)"), Engine::Other);
        let idle = Idle { load_before: Some(0.1), load_after: Some(0.2), others: Some(0.0) };
        let busy = Idle { others: Some(1.0), ..idle };
        let v = verdict(&CAT_STEP_VS_OFF, Engine::LibTorch, 0.95, &idle);
        assert_eq!((v.bound, v.met, v.withheld), (Some(0.9), Some(false), false));
        assert_eq!(verdict(&CAT_STEP_VS_OFF, Engine::Flex, 0.95, &idle).met, Some(true));
        let v = verdict(&CAT_STEP_VS_OFF, Engine::Flex, 0.95, &busy);
        assert!(v.withheld && v.met.is_none());
        // Memory does not depend on load.
        let v = verdict(&LORA_PEAK, Engine::Flex, 0.8, &busy);
        assert!(!v.withheld && v.met == Some(true));
        let mut text = Vec::new();
        print_verdicts(&[verdict(&UNET_FORWARD, Engine::Flex, 2.0, &busy), verdict(&UNET_FORWARD, Engine::Flex, 2.0, &idle)], &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("withheld: not idle") && text.contains("MISSED"), "{text}");
    }
}
