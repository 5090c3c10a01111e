//! `attach-mock-model`: the test model server as a process or as a
//! container. It binds where the injection tells a real engine to bind:
//! `OLLAMA_HOST` (Ollama), or `--host`/`--port` (vLLM's flags, whose other
//! flags such as `--model` it accepts and ignores); `--listen` wins over both.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use attach_tests::mock_model::listen_address;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// A stand-in Ollama/OpenAI-compatible model server.
#[derive(Debug, Parser)]
#[command(name = "attach-mock-model", version)]
struct Args {
    /// Address to listen on (default: from --host/--port, else OLLAMA_HOST,
    /// else 127.0.0.1:11434).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// vLLM's bind address flag.
    #[arg(long)]
    host: Option<String>,
    /// vLLM's port flag.
    #[arg(long)]
    port: Option<u16>,
    /// vLLM's model flag (any model is served).
    #[arg(long)]
    model: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let addr = match listen_address(
        args.listen,
        args.host.as_deref(),
        args.port,
        std::env::var("OLLAMA_HOST").ok().as_deref(),
    ) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("attach-mock-model: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("attach-mock-model: cannot listen on {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!(
        "attach-mock-model listening on {addr} (model {})",
        args.model.as_deref().unwrap_or("any")
    );
    // As a container's PID 1 it gets no default SIGTERM action: handle it.
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        eprintln!("attach-mock-model: cannot handle SIGTERM");
        return std::process::ExitCode::FAILURE;
    };
    tokio::select! {
        () = attach_tests::mock_model::serve(listener) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    std::process::ExitCode::SUCCESS
}
