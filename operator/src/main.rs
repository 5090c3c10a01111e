#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use attach_operator::admin::{self, Health};
use attach_operator::controller::Settings;
use attach_operator::inject::Defaults;
use attach_operator::leader::{Candidate, Election};
use attach_operator::metrics::Metrics;
use attach_operator::reflectors::Caches;
use attach_operator::webhook::{self, CertMode, WebhookSettings, certs::CertSettings};
use clap::{ArgAction, Parser, ValueEnum};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tracing_subscriber::EnvFilter;

/// Declarative OIDC auth and quotas for self-hosted LLMs on Kubernetes.
///
/// Connects with the in-cluster service account, or $KUBECONFIG.
#[derive(Debug, Parser)]
#[command(name = attach_operator::BINARY_NAME, version, about, long_about)]
struct Args {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, env = "ATTACH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `attach_operator=debug`.
    #[arg(long, env = "ATTACH_LOG")]
    log_level: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ATTACH_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Run the controllers only while holding the leader Lease.
    #[arg(long, default_value_t = true, action = ArgAction::Set, env = "ATTACH_LEADER_ELECT")]
    leader_elect: bool,
    /// The leader Lease's name.
    #[arg(long, default_value = "attach-operator", env = "ATTACH_LEASE_NAME")]
    lease_name: String,
    /// The operator's own namespace: its Lease and webhook Secret live there.
    #[arg(long, default_value = "default", env = "POD_NAMESPACE")]
    namespace: String,
    /// How long the Lease holds without renewal, in seconds.
    #[arg(long, default_value_t = 15, env = "ATTACH_LEASE_DURATION_SECONDS")]
    lease_duration_seconds: u64,
    /// Reconciles of one kind running at once.
    #[arg(long, default_value_t = 16, env = "ATTACH_CONCURRENCY")]
    concurrency: u16,
    /// Serve the mutating webhook that injects attach-gateway.
    #[arg(long, default_value_t = true, action = ArgAction::Set, env = "ATTACH_WEBHOOK")]
    webhook: bool,
    /// Where the webhook listens (HTTPS).
    #[arg(long, default_value = "0.0.0.0:9443", env = "ATTACH_WEBHOOK_ADDR")]
    webhook_addr: SocketAddr,
    /// Who provides the webhook's certificate.
    #[arg(long, value_enum, default_value_t = CertMode::SelfManaged, env = "ATTACH_WEBHOOK_CERT_MODE")]
    webhook_cert_mode: CertMode,
    /// The Secret holding the self-managed CA and certificate.
    #[arg(
        long,
        default_value = "attach-operator-webhook-tls",
        env = "ATTACH_WEBHOOK_SECRET"
    )]
    webhook_secret: String,
    /// Names (DNS or IP) the certificate covers (default: the webhook
    /// Service `attach-operator-webhook` in the operator's namespace).
    #[arg(long, value_delimiter = ',', env = "ATTACH_WEBHOOK_DNS_NAMES")]
    webhook_dns_names: Vec<String>,
    /// Days a self-managed serving certificate is valid (at least 7; renewed with a third left).
    #[arg(long, default_value_t = 365, env = "ATTACH_WEBHOOK_CERT_DAYS")]
    webhook_cert_days: u32,
    /// The MutatingWebhookConfiguration whose caBundle the operator sets.
    #[arg(
        long,
        default_value = "attach-operator",
        env = "ATTACH_WEBHOOK_CONFIGURATION"
    )]
    webhook_configuration: String,
    /// Where cert-manager's tls.crt and tls.key are mounted.
    #[arg(
        long,
        default_value = "/etc/attach/webhook-tls",
        env = "ATTACH_WEBHOOK_CERT_DIR"
    )]
    webhook_cert_dir: std::path::PathBuf,
    /// The attach-gateway image injected when a backend names none.
    #[arg(long, env = "ATTACH_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    /// This replica's identity in the election (default: host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds the webhook and health endpoints keep answering after
    /// SIGTERM (readiness already failing) while the Service's endpoints
    /// forget this pod; the pod's terminationGracePeriodSeconds must
    /// cover it plus the 20 s drain.
    #[arg(long, default_value_t = 5, env = "ATTACH_SHUTDOWN_DELAY_SECONDS")]
    shutdown_delay_seconds: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = args.log_level.clone().unwrap_or_else(|| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("attach-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Resolves on SIGTERM, or when `run` returns for any other reason.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            tokio::select! {
                () = shutdown_signal() => {}
                _ = stopped => {}
            }
        }
        .boxed()
        .shared();
        let mut servers = Vec::new();
        let code = run(args, shutdown, &mut servers).await;
        drop(stop);
        // Returning drops the runtime, and with it every connection still
        // open: the servers linger and drain first.
        for server in servers {
            let _ = server.await;
        }
        code
    })
}

async fn run(
    args: Args,
    shutdown: Shared<BoxFuture<'static, ()>>,
    servers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> ExitCode {
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let limits = attach_operator::serve::Limits {
        linger: Duration::from_secs(args.shutdown_delay_seconds),
        ..Default::default()
    };
    tokio::spawn({
        let (ready, shutdown) = (ready.clone(), shutdown.clone());
        async move {
            shutdown.await;
            ready.store(false, Ordering::Release);
        }
    });
    let listener = match admin::bind(args.metrics_addr).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(addr = %args.metrics_addr, error = %e, "cannot serve metrics and health");
            return ExitCode::from(69);
        }
    };
    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    servers.push(tokio::spawn(admin::serve(
        listener,
        health,
        limits,
        shutdown.clone(),
    )));

    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot configure the Kubernetes client");
            return ExitCode::from(69);
        }
    };
    if let Err(e) = client.apiserver_version().await {
        tracing::error!(error = %e, "cannot reach the Kubernetes API server");
        return ExitCode::from(69);
    }
    // One watch per kind, shared by the webhook and the controllers.
    let caches = Caches::spawn(&client);
    if args.webhook {
        let names = if args.webhook_dns_names.is_empty() {
            let svc = format!("attach-operator-webhook.{}.svc", args.namespace);
            vec![svc.clone(), format!("{svc}.cluster.local")]
        } else {
            args.webhook_dns_names.clone()
        };
        let mut defaults = Defaults::default();
        if let Some(image) = &args.gateway_image {
            defaults.image.clone_from(image);
        }
        let settings = WebhookSettings {
            addr: args.webhook_addr,
            cert_mode: args.webhook_cert_mode,
            certs: CertSettings {
                secret: args.webhook_secret.clone(),
                namespace: args.namespace.clone(),
                names,
                validity_days: args.webhook_cert_days,
            },
            configuration: args.webhook_configuration.clone(),
            cert_dir: args.webhook_cert_dir.clone(),
            defaults,
            limits,
        };
        let recorder = kube::runtime::events::Recorder::new(
            client.clone(),
            attach_operator::controller::identity_provider::reporter(),
        );
        match webhook::start(
            client.clone(),
            &caches,
            settings,
            metrics.clone(),
            recorder,
            shutdown.clone(),
        )
        .await
        {
            Ok(server) => servers.push(server),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the webhook");
                return ExitCode::FAILURE;
            }
        }
        tracing::info!(addr = %args.webhook_addr, "webhook serving");
    }
    ready.store(true, Ordering::Release);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        metrics = %args.metrics_addr,
        "attach-operator starting"
    );

    let settings = Settings {
        concurrency: args.concurrency.max(1),
        ..Settings::default()
    };
    if !args.leader_elect {
        metrics.leader.set(1);
        attach_operator::controller::run(client, caches, metrics, settings, shutdown).await;
        return ExitCode::SUCCESS;
    }
    let election = Election {
        lease_name: args.lease_name,
        namespace: args.namespace,
        identity: args.identity.unwrap_or_else(default_identity),
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
    };
    let mut candidate = match Candidate::join(client.clone(), &election).await {
        Ok(candidate) => candidate,
        Err(e) => {
            tracing::error!(error = %e, lease = %election.lease_name, "cannot join the leader election");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(identity = %election.identity, lease = %election.lease_name, "waiting to lead");
    tokio::select! {
        leading = candidate.leading() => if !leading {
            tracing::error!("the leader election stopped");
            return ExitCode::FAILURE;
        },
        () = shutdown.clone() => {
            candidate.resign().await;
            return ExitCode::SUCCESS;
        }
    }
    tracing::info!(identity = %election.identity, "leading: controllers start");
    metrics.leader.set(1);
    let lost = tokio::select! {
        () = attach_operator::controller::run(client, caches, metrics.clone(), settings, shutdown) => false,
        () = candidate.lost() => true,
    };
    metrics.leader.set(0);
    candidate.resign().await;
    if lost {
        tracing::error!("lost the leader lease; exiting so that a fresh process rejoins");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "attach-operator".into());
    format!("{host}-{}", std::process::id())
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
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
