#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use attach_sidecar::gateway::{ConfigSource, Gateway, StartError};
use attach_sidecar::reload::{self, Overrides};
use attach_sidecar::standalone::{self, ProcessEnv};
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Exit status for a bad config or bad flags (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// Verifies OIDC JWTs in front of a self-hosted LLM server (Ollama, vLLM,
/// any OpenAI-compatible server).
///
/// With --config, reads the typed config the operator renders (and reloads
/// it when it changes). Without it, reads OIDC_ISSUER, OIDC_AUD,
/// AUTH_BACKEND, UPSTREAM_URL and friends from the environment.
#[derive(Debug, Parser)]
#[command(name = attach_sidecar::BINARY_NAME, version, about, long_about)]
struct Args {
    /// The config file (YAML, `kind: GatewayConfig`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The proxy port (default 8080); wins over the config file.
    #[arg(long)]
    port: Option<u16>,
    /// The admin port for /healthz, /readyz and /metrics (default 9090).
    #[arg(long)]
    admin_port: Option<u16>,
    /// The model's URL (default http://127.0.0.1:11434, or $UPSTREAM_URL).
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `attach_sidecar=debug` (or $ATTACH_LOG).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Proxy worker threads (default: the CPUs this process may use, which
    /// honours a container's CPU limit).
    #[arg(long)]
    workers: Option<usize>,
    /// Check the config and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    let overrides = Overrides {
        port: args.port,
        admin_port: args.admin_port,
        upstream: args.upstream.clone(),
    };
    let loaded = match &args.config {
        Some(path) => reload::load(path, &overrides).map(|c| {
            (
                c,
                ConfigSource::File {
                    path: path.clone(),
                    overrides: overrides.clone(),
                },
            )
        }),
        None => {
            standalone::config_from_env(&ProcessEnv, &overrides).map(|c| (c, ConfigSource::Fixed))
        }
    };
    let (config, source) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("attach-gateway: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.check {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Admin, reload and key refresh run here; the proxy gets its own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("attach-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app_probes = match attach_sidecar::app_probe::AppProbes::from_env() {
        Ok(probes) => probes,
        Err(e) => {
            eprintln!(
                "attach-gateway: {} is not valid JSON probes: {e}",
                attach_sidecar::app_probe::ENV
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::bind(config, source).await {
            Ok(gateway) => gateway,
            Err(e @ StartError::Config(_)) => {
                eprintln!("attach-gateway: invalid configuration: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => {
                eprintln!("attach-gateway: {e}");
                return ExitCode::FAILURE;
            }
        };
        let gateway = gateway.with_app_probes(app_probes);
        tracing::info!(
            proxy = %gateway.proxy_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %gateway.admin_addr().map(|a| a.to_string()).unwrap_or_default(),
            version = env!("CARGO_PKG_VERSION"),
            "attach-gateway listening"
        );
        match gateway.run(workers, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("attach-gateway: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

fn init_logging(args: &Args) {
    let filter = args
        .log_level
        .clone()
        .or_else(|| std::env::var("ATTACH_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
