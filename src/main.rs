//! The `catlora` command line. Each subcommand lives in `src/cli/<name>.rs`; errors are printed
//! as one `error: ...` chain on stderr with exit status 1 (clap's usage errors exit 2).
mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
