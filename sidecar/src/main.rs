#![forbid(unsafe_code)]

use clap::Parser;

/// Verifies OIDC JWTs in front of a self-hosted LLM server.
#[derive(Debug, Parser)]
#[command(name = attach_sidecar::BINARY_NAME, version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
