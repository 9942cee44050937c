//! Argument parsing (clap derive) and dispatch to one module per subcommand. The modules only
//! translate options into library calls; the work itself is in the `catlora` library.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod convert;
mod demo;
mod eval;
mod generate;
mod inspect;
mod progress;
mod score;
mod toy;
mod train;
mod train_settings;

/// Contrastive Adapter Training (CAT) LoRAs for Stable Diffusion 1.x/2.x, and the metrics that
/// say how much of the base model's knowledge an adapter keeps.
///
/// Models are diffusers pipeline folders (model_index.json, unet/, vae/, text_encoder/,
/// tokenizer/, scheduler/). LoRA files are safetensors in kohya/AUTOMATIC1111 or
/// diffusers/PEFT naming.
#[derive(Parser, Debug)]
#[command(name = "catlora", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process, so the size of the largest variant (train's options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    Generate(generate::GenerateArgs),
    Train(train::TrainArgs),
    Convert(convert::ConvertArgs),
    Inspect(inspect::InspectArgs),
    Score(score::ScoreArgs),
    Eval(eval::EvalArgs),
    Demo(demo::DemoArgs),
    Bench(bench::BenchArgs),
    Toy(toy::ToyArgs),
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Score(a) => score::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Toy(a) => toy::run(a),
    }
}

pub use progress::Progress;

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
