//! `attach-pod-client`: the in-cluster test client (see
//! `attach_tests::pod_client`). `serve` answers a test's requests; the other
//! commands make one request and print the outcome, for `kubectl exec`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use attach_tests::pod_client::{self, HttpCall};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(name = "attach-pod-client", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the test API (POST /http, /connect, /resolve).
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// Make one HTTP request; print the status line, headers and body.
    Http {
        url: String,
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// `Name: value`, repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// A JSON body.
        #[arg(short = 'd', long)]
        data: Option<String>,
    },
    /// Try a TCP connection to host:port.
    Connect { address: String },
    /// Look a name up.
    Resolve { name: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match Args::parse().command {
        Cmd::Serve { listen } => serve(listen).await,
        Cmd::Http {
            url,
            method,
            headers,
            data,
        } => {
            let mut call = HttpCall::new(&method, &url);
            for header in headers {
                let Some((name, value)) = header.split_once(':') else {
                    eprintln!("bad header {header:?}: expected `Name: value`");
                    return ExitCode::from(64);
                };
                call = call.header(name.trim(), value.trim());
            }
            if let Some(data) = data {
                call.body = Some(data);
                call = call.header("content-type", "application/json");
            }
            match pod_client::perform(&call).await {
                Ok(result) => {
                    println!("HTTP {}", result.status);
                    for (name, value) in &result.headers {
                        println!("{name}: {value}");
                    }
                    println!();
                    print!("{}", result.body);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Connect { address } => {
            let result = pod_client::connect(&address, Duration::from_secs(3)).await;
            println!("{}", serde_json::json!(result));
            if result.connected {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Resolve { name } => {
            let result = pod_client::resolve(&name).await;
            println!("{}", serde_json::json!(result));
            if result.error.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(listen: SocketAddr) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("attach-pod-client: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("attach-pod-client serving on {listen}");
    // As a container's PID 1 it gets no default SIGTERM action: handle it.
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return ExitCode::FAILURE;
    };
    tokio::select! {
        () = pod_client::serve(listener) => {}
        _ = term.recv() => {}
    }
    ExitCode::SUCCESS
}
