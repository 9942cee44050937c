//! AUTOMATIC1111's infotext: the generation settings in the `parameters` text chunk of a PNG,
//! which A1111's "PNG Info" tab, ComfyUI and civitai read back. One writer for every image
//! catlora makes (generate, eval, the demo, training samples and class images).
use super::txt2img::GenerateParams;
use crate::io::image::save_png;
use crate::precision::Precision;
use anyhow::Result;
use std::path::Path;

/// `{prompt}[ <lora:name:w>...]\nNegative prompt: {negative}\nSteps: 30, Sampler: DDIM, CFG
/// scale: 7.5, Seed: 1, Size: 512x512, Model: name[, Clip skip: 2][, Key: value]...`. The
/// negative line is left out when empty, `Clip skip` when 1, and values holding `,`, `:` or a
/// newline are JSON-quoted, all as A1111 does.
pub fn infotext(p: &GenerateParams, model: &str, loras: &[(String, f32)], extra: &[(String, String)]) -> String {
    let tags: String = loras.iter().map(|(name, w)| format!(" <lora:{name}:{w}>")).collect();
    let mut fields: Vec<(String, String)> = vec![
        ("Steps".into(), p.steps.to_string()),
        ("Sampler".into(), p.sampler.a1111_name().to_string()),
        // `{:?}` prints as Python's str(float) does for what a user types: 7.0 → "7.0", 7.5 → "7.5".
        ("CFG scale".into(), format!("{:?}", p.cfg as f32)),
        ("Seed".into(), p.seed.to_string()),
        ("Size".into(), format!("{}x{}", p.width, p.height)),
        ("Model".into(), model.to_string()),
    ];
    if p.clip_skip != 1 {
        fields.push(("Clip skip".into(), p.clip_skip.to_string()));
    }
    fields.extend(extra.iter().cloned());
    let params: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {}", quote(v))).collect();
    let negative = if p.negative_prompt.is_empty() { String::new() } else { format!("\nNegative prompt: {}", p.negative_prompt) };
    format!("{}{tags}{negative}\n{}", p.prompt, params.join(", "))
}

/// A1111's `infotext_utils.quote`: JSON-quote a value that would otherwise break the `k: v, ...` list.
fn quote(v: &str) -> String {
    if v.contains([',', '\n', ':']) { serde_json::to_string(v).expect("a string serialises") } else { v.to_string() }
}

/// Saves a generated `p.width × p.height` RGB image with its [`infotext`]. A half `precision`
/// is written as catlora's own field after A1111's (`Precision: fp16`): another precision gives
/// other pixels, so the image says which it was made with.
pub fn save_with_infotext(
    path: &Path,
    rgb: &[u8],
    p: &GenerateParams,
    model: &str,
    loras: &[(String, f32)],
    precision: Precision,
) -> Result<()> {
    let extra: Vec<(String, String)> = if precision.is_half() { vec![("Precision".into(), precision.name().into())] } else { Vec::new() };
    save_png(path, rgb, p.width as u32, p.height as u32, &[("parameters", &infotext(p, model, loras, &extra))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::SamplerKind;

    #[test]
    fn a1111_format() {
        let p = GenerateParams {
            prompt: "a cat".into(),
            negative_prompt: "blurry".into(),
            sampler: SamplerKind::DpmPp2mKarras,
            steps: 30,
            cfg: 7.5,
            width: 512,
            height: 512,
            seed: 1,
            clip_skip: 1,
        };
        let extra = vec![("Lora hashes".to_string(), "cat: 0123abcd".to_string())];
        assert_eq!(
            infotext(&p, "sd15", &[("cat".into(), 0.8)], &extra),
            "a cat <lora:cat:0.8>\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, \
             Size: 512x512, Model: sd15, Lora hashes: \"cat: 0123abcd\""
        );
        let p = GenerateParams {
            prompt: "a dog".into(),
            negative_prompt: String::new(),
            sampler: SamplerKind::EulerAncestral,
            steps: 20,
            cfg: 7.0,
            width: 768,
            seed: 42,
            clip_skip: 2,
            ..p
        };
        assert_eq!(
            infotext(&p, "m", &[], &[]),
            "a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 768x512, Model: m, Clip skip: 2"
        );
    }
}
