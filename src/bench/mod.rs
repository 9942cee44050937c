//! `catlora bench`: speed and memory, measured next to PyTorch + diffusers on the same machine.
//!
//! * [`unet`]: the UNet's forward pass and forward + backward to the input, with peak memory;
//! * [`train`]: one whole training step, plain LoRA against CAT, next to PyTorch's LoRA, the CAT
//!   authors' formulation and PyTorch's adapter-off CAT;
//! * [`clip`]: CLIP image embedding throughput (scoring).
//!
//! Every case runs in a fresh child process ([`child`]) so that one case's peak memory is not
//! another's; the PyTorch side ([`torch`]) does the same. Both sides compute the same inputs
//! from formulas ([`case`]), and the ratios are checked against [`targets`] only when the
//! machine was idle while both engines ran ([`machine`]).
pub mod case;
pub mod child;
pub mod clip;
pub mod machine;
pub mod profile;
pub mod targets;
pub mod torch;
pub mod train;
pub mod unet;

pub use case::{BenchCase, BenchModel, DEFAULT_ITERS};
pub use train::{TrainMethod, TrainSettings, run_train_bench};
pub use unet::run_unet_bench;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Options of a whole benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub cases: Vec<BenchCase>,
    /// The Python of a venv with torch, diffusers and peft (`scripts/setup-bench.sh` makes
    /// `.venv-bench/bin/python`); `None` runs catlora only.
    pub torch_python: Option<PathBuf>,
    /// Compute threads for both engines; `None` leaves catlora at its default (every CPU the
    /// process may use) and sets torch to the same number.
    pub threads: Option<usize>,
}

/// What a benchmark child runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    Unet(BenchCase),
    Train(train::TrainCase),
    /// One phase repeated, for a sampling profiler (`bench/op_profile.py`); prints nothing.
    Profile {
        #[serde(flatten)]
        case: BenchCase,
        phase: profile::Phase,
    },
}

/// The child's whole job: parse the case, run it, print one JSON line on stdout.
pub fn child_main(job_json: &str) -> Result<()> {
    let job: Job = serde_json::from_str(job_json).context("`--case` is not a benchmark case in JSON")?;
    let device = match &job {
        Job::Unet(c) | Job::Profile { case: c, .. } => &c.device,
        Job::Train(t) => &t.case.device,
    };
    crate::device::set_threads(device, machine::default_threads());
    match &job {
        Job::Unet(case) => child::print_result_line(&unet::run_case(case)?),
        Job::Train(tc) => child::print_result_line(&train::run_train_case(tc)?),
        Job::Profile { case, phase } => profile::run_phase(case, *phase),
    }
}
