//! `postern-operator`: reconciles `Relay` and `Domain` resources (group `postern.io`).
//!
//! The reconcilers land with their own issue; until then the binary only states so, instead
//! of pretending to run.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "postern-operator",
    version,
    about = "Kubernetes operator for Postern (not yet implemented)"
)]
struct Cli {}

fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("postern-operator: the Relay and Domain reconcilers are not implemented yet");
    ExitCode::FAILURE
}
