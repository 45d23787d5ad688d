//! The `diffeo` command line (subcommands arrive with the CLI work; this is the entry point).

use std::process::ExitCode;

const USAGE: &str = "diffeo — normalizing flows

USAGE:
    diffeo --version
    diffeo --help

The fit/eval/sample/plot subcommands are not available in this build yet.
Library usage: see the diffeo crate documentation.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("diffeo {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("--help") | Some("-h") | Some("help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
