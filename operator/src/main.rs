#![forbid(unsafe_code)]

use clap::Parser;

/// Declarative OIDC auth and quotas for self-hosted LLMs on Kubernetes.
#[derive(Debug, Parser)]
#[command(name = attach_operator::BINARY_NAME, version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
