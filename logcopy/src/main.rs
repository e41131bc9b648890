//! The `logcopy` binary: parse the command line, run it, map the result to an exit code.
//!
//! Every configuration error reads `logcopy <command>: configuration error: --flag / ENV: reason` and exits 2, a
//! value clap's parsers refused as much as a problem between flags that the command's own check finds; usage
//! errors (an unknown flag, a missing value) keep clap's message and usage line, and exit 2 too.

use clap::{CommandFactory, Parser};
use logcopy::cli::Cli;

fn main() -> std::process::ExitCode {
    // A file-size limit (RLIMIT_FSIZE) must fail a write with EFBIG, which is handled (logged, retried, the old file
    // kept whole), not kill the process by SIGXFSZ's default action and leave a temporary file behind.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    match Cli::try_parse() {
        Ok(cli) => logcopy::cli::run(cli),
        Err(e) => match logcopy::config::describe_clap_error(&e, &Cli::command()) {
            Some(problem) => {
                let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
                let command = args.get(1).filter(|c| !c.starts_with('-')).cloned().unwrap_or_default();
                eprintln!("logcopy {command}: configuration error: {problem}");
                if command == "run" || command == "monitor" {
                    logcopy::cli::termination_message_for_refused(&args, &format!("configuration error: {problem}"));
                }
                std::process::ExitCode::from(2)
            }
            None => e.exit(),
        },
    }
}
