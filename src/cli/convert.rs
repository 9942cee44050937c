//! `catlora convert`: rewrites a LoRA file in kohya or diffusers (PEFT) naming.
use anyhow::{Result, bail};
use catlora::adapters::lora;
use catlora::adapters::lora_file::{self, Format};
use catlora::pipeline::model::StableDiffusion;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Convert a LoRA between kohya/AUTOMATIC1111 and diffusers/PEFT naming.
///
/// Reads any of kohya, PEFT/diffusers or diffusers' older attention-processor naming. The model
/// folder supplies the module list that turns kohya's underscored names back into module paths,
/// and every branch is checked to fit the model's layers before anything is written. The
/// tensors are copied exactly; metadata is kept, except the fields that describe the old naming.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Diffusers pipeline folder of the base model the LoRA was trained on.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The LoRA file to read.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// The file to write (replaced atomically if it exists).
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
    /// The naming to write.
    #[arg(long, value_enum)]
    pub to: LoraFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LoraFormat {
    /// `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha` (A1111, ComfyUI).
    Kohya,
    /// `unet.<module>.lora_A.weight` / `.lora_B.weight` (diffusers' `load_lora_weights`).
    #[value(alias = "peft")]
    Diffusers,
}

impl LoraFormat {
    pub fn format(self) -> Format {
        match self {
            LoraFormat::Kohya => Format::Kohya,
            LoraFormat::Diffusers => Format::Peft,
        }
    }
}

pub fn run(a: ConvertArgs) -> Result<()> {
    if !a.input.is_file() {
        bail!("{}: no such LoRA file", a.input.display());
    }
    let device = catlora::device::parse("cpu")?;
    let mut sd = StableDiffusion::load(&a.model, &device)?;
    let mut targets = sd.targets();
    let known = targets.known_modules();
    let file = lora_file::read(&a.input, &known)?;
    // Attaching checks every branch's shapes against its layer; the model is dropped after.
    lora::attach_file(&mut targets, &file, 1.0, &a.input.display().to_string())?;
    lora_file::write(&a.output, &file, a.to.format())?;
    eprintln!(
        "wrote {} ({} modules, {} -> {})",
        a.output.display(),
        file.entries.len(),
        file.format.map_or("?", Format::name),
        a.to.format().name()
    );
    Ok(())
}
