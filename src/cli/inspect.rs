//! `catlora inspect`: what a LoRA file holds (naming, modules, rank, alpha, targets, metadata).
use anyhow::{Result, bail};
use catlora::adapters::lora_file::{self, KnownModules};
use catlora::io::safetensors::SafeTensorsFile;
use catlora::pipeline::model::StableDiffusion;
use clap::Args;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Describe a LoRA file: its naming, modules, ranks, alphas, targeted layers and metadata.
///
/// With --model, module names are resolved against the model and any key that does not fit it is
/// reported. Without it, kohya's underscored names are turned back into Stable Diffusion module
/// paths by their known parts (`down_blocks`, `to_out`, ...), which is right for SD 1.x/2.x UNets
/// and CLIP text encoders; pass --model to be exact.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The LoRA file (.safetensors).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Diffusers pipeline folder to resolve and check module names against.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if !a.file.is_file() {
        bail!("{}: no such LoRA file", a.file.display());
    }
    let known = match &a.model {
        Some(dir) => {
            let mut sd = StableDiffusion::load(dir, &catlora::device::parse("cpu")?)?;
            sd.targets().known_modules()
        }
        None => modules_from_keys(&SafeTensorsFile::open(&a.file)?),
    };
    let lora = lora_file::read(&a.file, &known)?;
    println!("file: {}", a.file.display());
    print!("{}", lora_file::summary(&lora));
    Ok(())
}

/// Multi-word parts of SD UNet and CLIP module paths. kohya writes every `.` of a path as `_`, so
/// these words are kept whole when the other `_` become `.` again.
const WORDS: [&str; 26] = [
    "transformer_blocks",
    "conv_shortcut",
    "time_emb_proj",
    "time_embedding",
    "final_layer_norm",
    "down_blocks",
    "up_blocks",
    "mid_block",
    "text_model",
    "self_attn",
    "layer_norm1",
    "layer_norm2",
    "proj_in",
    "proj_out",
    "out_proj",
    "to_out",
    "q_proj",
    "k_proj",
    "v_proj",
    "to_q",
    "to_k",
    "to_v",
    "conv_in",
    "conv_out",
    "linear_1",
    "linear_2",
];

/// `down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0` →
/// `down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0`.
fn undo_kohya(name: &str) -> String {
    let mut out = String::new();
    let mut rest = name;
    while !rest.is_empty() {
        let word = WORDS.iter().find(|w| rest.starts_with(**w) && matches!(rest.as_bytes().get(w.len()), None | Some(b'_')));
        let (part, tail) = match word {
            Some(w) => rest.split_at(w.len()),
            None => rest.split_at(rest.find('_').unwrap_or(rest.len())),
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(part);
        rest = tail.strip_prefix('_').unwrap_or(tail);
    }
    out
}

/// A module list built from the file's own keys, so that `lora_file::read` can run without a
/// model. Over-inclusive on purpose: a name that matches no key is never used.
fn modules_from_keys(file: &SafeTensorsFile) -> KnownModules {
    let mut names = BTreeSet::new();
    for key in file.names() {
        let base = key.split_once('.').map_or(key.as_str(), |(b, _)| b);
        if let Some(raw) = base.strip_prefix("lora_unet_").or_else(|| base.strip_prefix("lora_te_")) {
            names.insert(undo_kohya(raw));
            continue;
        }
        let rest = key.strip_prefix("unet.").or_else(|| key.strip_prefix("text_encoder.")).unwrap_or(key);
        for suffix in [".lora_A.weight", ".lora_B.weight", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"] {
            if let Some(m) = rest.strip_suffix(suffix) {
                names.insert(m.to_string());
            }
        }
        // The older processor naming: `<block>.processor.to_q_lora.down.weight`.
        if let Some((block, tail)) = rest.split_once(".processor.")
            && let Some((proj, _)) = tail.split_once("_lora.")
        {
            let layer = if proj == "to_out" { "to_out.0" } else { proj };
            names.insert(format!("{block}.{layer}"));
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    KnownModules { unet: names.clone(), text_encoder: names }
}

#[cfg(test)]
mod tests {
    use super::undo_kohya;

    #[test]
    fn kohya_names_are_dotted_back() {
        for dotted in [
            "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0",
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
            "up_blocks.3.attentions.2.proj_in",
            "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
            "text_model.encoder.layers.11.self_attn.out_proj",
            "text_model.encoder.layers.0.mlp.fc1",
            "down_blocks.0.resnets.0.time_emb_proj",
        ] {
            assert_eq!(undo_kohya(&dotted.replace('.', "_")), dotted);
        }
    }
}
