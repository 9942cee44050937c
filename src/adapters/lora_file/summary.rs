//! A human-readable account of a LoRA file.
use super::*;
use std::collections::BTreeMap;

/// A human-readable account of a LoRA for `catlora inspect`.
pub fn summary(lora: &LoraFile) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let format = lora.format.map_or("in memory", Format::name);
    let _ = writeln!(s, "format: {format}");
    let count = |c| lora.entries.iter().filter(|e| e.component == c).count();
    let _ =
        writeln!(s, "modules: {} (unet {}, text encoder {})", lora.entries.len(), count(Component::Unet), count(Component::TextEncoder));
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new();
    let mut alphas: BTreeMap<String, usize> = BTreeMap::new();
    let mut targets: BTreeMap<(Component, &str), usize> = BTreeMap::new();
    let mut params = 0usize;
    for e in &lora.entries {
        *ranks.entry(e.rank).or_default() += 1;
        *alphas.entry(format!("{} (scale {})", alpha_text(e.alpha), e.scale())).or_default() += 1;
        *targets.entry((e.component, e.leaf())).or_default() += 1;
        params += e.down.len() + e.up.len();
    }
    let list = |m: Vec<String>| m.join(", ");
    let _ = writeln!(s, "rank: {}", list(ranks.iter().map(|(r, n)| format!("{r} ×{n}")).collect()));
    let _ = writeln!(s, "alpha: {}", list(alphas.iter().map(|(a, n)| format!("{a} ×{n}")).collect()));
    let _ = writeln!(s, "parameters: {params}");
    let _ = writeln!(s, "targets:");
    for ((c, leaf), n) in &targets {
        let _ = writeln!(s, "  {} {leaf}: {n}", c.diffusers_prefix());
    }
    if !lora.metadata.is_empty() {
        let _ = writeln!(s, "metadata:");
        for (k, v) in &lora.metadata {
            // Long values (PEFT's JSON config, kohya's tag frequencies) would swamp the rest.
            let v = v.replace('\n', " ");
            let shown =
                if v.chars().count() > 120 { format!("{}… ({} chars)", v.chars().take(120).collect::<String>(), v.len()) } else { v };
            let _ = writeln!(s, "  {k} = {shown}");
        }
    }
    s
}
