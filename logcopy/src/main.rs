//! The `logcopy` binary: parse the command line, run it, map the result to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    logcopy::cli::run(logcopy::cli::Cli::parse())
}
