//! `attach-mock-model --listen 127.0.0.1:11434`: the test model server as a
//! process, for the demo and for tests that run a pod's containers locally.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;

/// A stand-in Ollama/OpenAI-compatible model server.
#[derive(Debug, Parser)]
#[command(name = "attach-mock-model", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("attach-mock-model: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("attach-mock-model listening on {}", args.listen);
    tokio::select! {
        () = attach_tests::mock_model::serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    std::process::ExitCode::SUCCESS
}
