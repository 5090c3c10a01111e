//! `attach-harness`: starts and stops the test world (a Kubernetes control
//! plane, Keycloak and Redis on loopback; on request a registry with
//! BuildKit and a real node) for tests, the demo and humans; builds the
//! project's images into a running world's registry. `tests/cluster` wraps it.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use attach_tests::WorldInfo;
use attach_tests::images::build::{GATEWAY, MOCK_MODEL, OPERATOR, build_project_images};
use attach_tests::supervisor::{self, Component, RunningWorld, STATE_PREFIX};
use attach_tests::tools::Tools;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// Starts and stops the test world.
#[derive(Debug, Parser)]
#[command(name = "attach-harness", version)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the world and keep it running until SIGTERM/SIGINT (or, with
    /// --until-stdin-closes, until stdin reaches EOF). Prints `ready <world.json>`.
    Up {
        /// The state folder; by default a new `attach-harness-*` folder in $TMPDIR.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Comma-separated subset of control-plane,keycloak,redis,images,node
        /// (default: control-plane,keycloak,redis; node brings
        /// control-plane and images along).
        #[arg(long, value_delimiter = ',')]
        components: Vec<Component>,
        /// Tear down when stdin closes (the test process that owns it exited).
        #[arg(long)]
        until_stdin_closes: bool,
        /// Keep the state folder (logs, data) after teardown.
        #[arg(long, env = "ATTACH_KEEP_STATE")]
        keep_state: bool,
    },
    /// Stop the world whose state folder is given, waiting up to --timeout seconds.
    Down {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print the shell exports of the world whose state folder is given.
    Env {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Build the project's images (attach-gateway, attach-operator, the
    /// mock model) with the running world's BuildKit, push them to its
    /// registry, print their digests and sizes, and print shell exports of
    /// their references.
    Images {
        /// The world's world.json (default: $ATTACH_WORLD).
        #[arg(long, env = "ATTACH_WORLD")]
        world: PathBuf,
        /// Also the real Ollama with the tiny models (builds the engines
        /// first if they are not cached; exports ATTACH_OLLAMA_IMAGE).
        #[arg(long)]
        ollama: bool,
        /// Also llama.cpp's server with the tiny models (exports
        /// ATTACH_LLAMACPP_IMAGE).
        #[arg(long)]
        llamacpp: bool,
    },
    /// List what a node left on this machine (processes, mounts, cgroups,
    /// network devices, iptables chains, state folders); fails if anything.
    NodeLeftovers,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Cmd::Up {
            state_dir,
            components,
            until_stdin_closes,
            keep_state,
        } => up(state_dir, components, until_stdin_closes, keep_state),
        Cmd::Down { state_dir, timeout } => down(&state_dir, Duration::from_secs(timeout)),
        Cmd::Env { state_dir } => std::fs::read_to_string(state_dir.join("env.sh"))
            .map(|env| print!("{env}"))
            .map_err(|e| format!("no running world at {}: {e}", state_dir.display())),
        Cmd::Images {
            world,
            ollama,
            llamacpp,
        } => images(&world, ollama, llamacpp),
        Cmd::NodeLeftovers => node_leftovers(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[harness] error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn up(
    state_dir: Option<PathBuf>,
    components: Vec<Component>,
    until_stdin_closes: bool,
    keep_state: bool,
) -> Result<(), String> {
    let tools = Tools::locate().map_err(|e| e.to_string())?;
    let root = std::env::temp_dir();
    supervisor::reap_stale_worlds(&root);
    let state_dir =
        state_dir.unwrap_or_else(|| root.join(format!("{STATE_PREFIX}{}", std::process::id())));
    std::fs::create_dir_all(&state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    std::fs::write(
        state_dir.join("supervisor.pid"),
        std::process::id().to_string(),
    )
    .map_err(|e| e.to_string())?;
    let components = if components.is_empty() {
        Component::ALL.to_vec()
    } else {
        components
    };

    // One thread runs everything: the children's parent-death signal is tied
    // to the thread that spawned them, and this one lives until exit.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        let started = Instant::now();
        let mut world = RunningWorld::start(&tools, &state_dir, &components)
            .await
            .map_err(|e| e.to_string())?;
        let world_json = world.publish().map_err(|e| e.to_string())?;
        eprintln!(
            "[harness] world ready in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            world_json.display()
        );
        println!("ready {}", world_json.display());
        wait_for_shutdown(until_stdin_closes).await?;
        eprintln!("[harness] stopping");
        let stopping = Instant::now();
        world.stop();
        eprintln!(
            "[harness] stopped in {:.1}s",
            stopping.elapsed().as_secs_f64()
        );
        Ok::<(), String>(())
    });
    if !keep_state {
        let _ = attach_tests::node::janitor::remove_state_dir(&state_dir);
    }
    result
}

async fn wait_for_shutdown(until_stdin_closes: bool) -> Result<(), String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let stdin_closed = async {
        if !until_stdin_closes {
            return std::future::pending().await;
        }
        // A blocking read on a plain thread: EOF means the owner is gone.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
        let _ = rx.await;
    };
    tokio::select! {
        _ = term.recv() => eprintln!("[harness] SIGTERM"),
        _ = int.recv() => eprintln!("[harness] SIGINT"),
        () = stdin_closed => eprintln!("[harness] stdin closed"),
    }
    Ok(())
}

fn down(state_dir: &Path, timeout: Duration) -> Result<(), String> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let pid_file = state_dir.join("supervisor.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        eprintln!("[harness] no world running at {}", state_dir.display());
        return Ok(());
    };
    let pid = text
        .trim()
        .parse::<i32>()
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        eprintln!("[harness] supervisor {pid} already gone");
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if kill(pid, None).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(pid, Signal::SIGKILL);
    Err(format!(
        "supervisor {pid} did not stop within {}s; killed it",
        timeout.as_secs()
    ))
}

fn images(world: &Path, with_ollama: bool, with_llamacpp: bool) -> Result<(), String> {
    let info = WorldInfo::load(world).map_err(|e| e.to_string())?;
    let images = info
        .images
        .ok_or("that world runs no registry: start it with the images (or node) component")?;
    let started = Instant::now();
    let mut built = build_project_images(&images).map_err(|e| e.to_string())?;
    if with_ollama || with_llamacpp {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut builds = Vec::new();
        if with_ollama {
            let at = dir.path().join("ollama");
            builds.push(runtime.block_on(attach_tests::images::ollama::image_build(&at)));
        }
        if with_llamacpp {
            let at = dir.path().join("llamacpp");
            builds.push(runtime.block_on(attach_tests::images::llamacpp::image_build(&at)));
        }
        for build in builds {
            let build = build.map_err(|e| e.to_string())?;
            built.push(build.build_and_push(&images).map_err(|e| e.to_string())?);
        }
    }
    eprintln!(
        "[images] built and pushed in {:.1}s:",
        started.elapsed().as_secs_f64()
    );
    for image in &built {
        eprintln!(
            "[images]   {:<18} {}  {:>6.2} MB",
            image.name,
            image.reference,
            image.compressed_bytes as f64 / 1_000_000.0
        );
    }
    for image in &built {
        let var = match image.name.as_str() {
            GATEWAY => "ATTACH_GATEWAY_IMAGE",
            OPERATOR => "ATTACH_OPERATOR_IMAGE",
            MOCK_MODEL => "ATTACH_MODEL_IMAGE",
            attach_tests::images::ollama::OLLAMA => "ATTACH_OLLAMA_IMAGE",
            attach_tests::images::llamacpp::LLAMACPP => "ATTACH_LLAMACPP_IMAGE",
            _ => continue,
        };
        println!("export {var}={}", image.reference);
    }
    Ok(())
}

fn node_leftovers() -> Result<(), String> {
    let root = std::env::temp_dir();
    let node_dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(STATE_PREFIX))
                })
                .map(|e| e.path().join("node"))
                .collect()
        })
        .unwrap_or_default();
    let left = attach_tests::node::janitor::leftovers(&node_dirs);
    if left.is_empty() {
        println!("no node leftovers");
        return Ok(());
    }
    for (kind, what) in &left {
        println!("{kind}: {what}");
    }
    Err(format!("{} node leftovers", left.len()))
}
