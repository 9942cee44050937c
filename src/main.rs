//! The `catlora` command line. Each subcommand lives in `src/cli/<name>.rs`; errors are printed
//! as one `error: ...` chain on stderr with exit status 1 (clap's usage errors exit 2).
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Float32 on NVIDIA GPUs means float32: CUDA's libraries (cuDNN's convolutions in PyTorch's
    // default settings) may otherwise round products to TF32's 10-bit mantissa, which misses the
    // fixtures' float32 tolerances by 5x. A user who wants TF32 sets the variable to 1.
    if std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
        // SAFETY: the first statement of main, before any thread exists.
        unsafe { std::env::set_var("NVIDIA_TF32_OVERRIDE", "0") };
    }
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
