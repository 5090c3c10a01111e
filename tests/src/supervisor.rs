//! `attach-harness up`: starts the requested components, publishes
//! `world.json`, and stops everything when told to (SIGTERM, SIGINT, or EOF
//! on stdin) with bounded waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use std::net::IpAddr;

use crate::HarnessError;
use crate::control_plane::{ApiServing, ControlPlane};
use crate::engines::Engines;
use crate::images::ImageServices;
use crate::keycloak::Keycloak;
use crate::node::{self, Node, NodePrep};
use crate::redis_server::RedisServer;
use crate::tools::{NodeTools, Tools};
use crate::world::{ControlPlaneInfo, WorldInfo};

/// Prefix of every state folder, so that the janitor and the orphan check can
/// find the processes of a world: each of them names its folder in its
/// command line.
pub const STATE_PREFIX: &str = "attach-harness-";

/// A component of the test world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    ControlPlane,
    Keycloak,
    Redis,
    /// The local registry and BuildKit (one per machine).
    Images,
    /// A real node (one per machine); brings the control plane and the
    /// images along, and serves the control plane, Keycloak and Redis on
    /// the node's bridge, where pods reach them.
    Node,
    /// The real engines (Ollama, llama.cpp, vLLM) with the tiny models.
    Engines,
}

impl Component {
    /// The default world: no node (it is machine-wide; ask for it).
    pub const ALL: [Component; 4] = [
        Self::ControlPlane,
        Self::Keycloak,
        Self::Redis,
        Self::Engines,
    ];

    /// `components` with what each needs added.
    pub fn with_dependencies(components: &[Component]) -> Vec<Component> {
        let mut all = components.to_vec();
        if all.contains(&Self::Node) {
            all.extend([Self::ControlPlane, Self::Images]);
        }
        all.sort();
        all.dedup();
        all
    }
}

impl FromStr for Component {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "control-plane" => Ok(Self::ControlPlane),
            "keycloak" => Ok(Self::Keycloak),
            "redis" => Ok(Self::Redis),
            "images" => Ok(Self::Images),
            "node" => Ok(Self::Node),
            "engines" => Ok(Self::Engines),
            other => Err(format!(
                "unknown component {other:?} (expected control-plane, keycloak, redis, images, \
                 node or engines)"
            )),
        }
    }
}

/// Awaits `start`, reporting how long it took on stderr.
async fn timed<T>(
    name: &str,
    start: impl Future<Output = Result<T, HarnessError>>,
) -> (Result<T, HarnessError>, f64) {
    let started = Instant::now();
    let result = start.await;
    let secs = started.elapsed().as_secs_f64();
    let outcome = if result.is_ok() { "ready" } else { "FAILED" };
    eprintln!("[harness] {name}: {outcome} in {secs:.1}s");
    (result, secs)
}

/// Sorts one component's start outcome into the started value, its start-up
/// time, or the first error.
fn keep<T>(
    name: &str,
    outcome: Option<(Result<T, HarnessError>, f64)>,
    startup_seconds: &mut BTreeMap<String, f64>,
    first_error: &mut Option<HarnessError>,
) -> Option<T> {
    match outcome? {
        (Ok(value), secs) => {
            startup_seconds.insert(name.to_owned(), secs);
            Some(value)
        }
        (Err(e), _) => {
            first_error.get_or_insert(e);
            None
        }
    }
}

/// The processes of a running world. Dropping it stops them all.
#[derive(Debug)]
pub struct RunningWorld {
    // Field order is drop order: the node first (it deletes its pods
    // through the API server), the images last.
    pub node: Option<Node>,
    pub control_plane: Option<ControlPlane>,
    pub keycloak: Option<Keycloak>,
    pub redis: Option<RedisServer>,
    pub images: Option<ImageServices>,
    pub engines: Option<Engines>,
    pub info: WorldInfo,
}

impl RunningWorld {
    /// Starts `components` (and what they need) concurrently under `state_dir`.
    pub async fn start(
        tools: &Tools,
        state_dir: &Path,
        components: &[Component],
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(state_dir).map_err(HarnessError::io(state_dir))?;
        let components = Component::with_dependencies(components);
        let want = |c| components.contains(&c);
        let node_tools = if want(Component::Images) {
            Some(NodeTools::locate()?)
        } else {
            None
        };
        // The node's network comes first: the others serve on its bridge.
        let node_prep = match (&node_tools, want(Component::Node)) {
            (Some(nt), true) => Some(NodePrep::prepare(nt, &state_dir.join("node"))?),
            _ => None,
        };
        let (serving, host): (ApiServing, IpAddr) = if node_prep.is_some() {
            (node::api_serving(), node::BRIDGE_IP.into())
        } else {
            (ApiServing::default(), IpAddr::from([127, 0, 0, 1]))
        };
        // Keycloak is the slowest; everything boots at once.
        let (cp, kc, redis, images) = tokio::join!(
            async {
                if !want(Component::ControlPlane) {
                    return None;
                }
                Some(
                    timed(
                        "control plane",
                        ControlPlane::start_serving(
                            tools,
                            &state_dir.join("control-plane"),
                            &serving,
                        ),
                    )
                    .await,
                )
            },
            async {
                if !want(Component::Keycloak) {
                    return None;
                }
                Some(
                    timed(
                        "keycloak",
                        Keycloak::start_serving(tools, &state_dir.join("keycloak"), host),
                    )
                    .await,
                )
            },
            async {
                if !want(Component::Redis) {
                    return None;
                }
                Some(
                    timed(
                        "redis",
                        RedisServer::start_serving(
                            &tools.redis_server,
                            &state_dir.join("redis"),
                            host,
                        ),
                    )
                    .await,
                )
            },
            async {
                let nt = node_tools.as_ref()?;
                Some(
                    timed(
                        "registry and buildkitd",
                        ImageServices::start(nt, &state_dir.join("images")),
                    )
                    .await,
                )
            },
        );

        let mut startup_seconds = BTreeMap::new();
        let mut first_error = None;
        let control_plane = keep("control-plane", cp, &mut startup_seconds, &mut first_error);
        let keycloak = keep("keycloak", kc, &mut startup_seconds, &mut first_error);
        let redis = keep("redis", redis, &mut startup_seconds, &mut first_error);
        let images = keep("images", images, &mut startup_seconds, &mut first_error);
        if let Some(e) = first_error {
            // Whatever did start is stopped when the values drop here.
            return Err(e);
        }
        let node = match (node_prep, &node_tools, &control_plane, &images) {
            (Some(prep), Some(nt), Some(cp), Some(images)) => {
                let started = timed("node", Node::start(prep, nt, cp, &images.info)).await;
                keep(
                    "node",
                    Some(started),
                    &mut startup_seconds,
                    &mut first_error,
                )
            }
            _ => None,
        };
        if let Some(e) = first_error {
            return Err(e);
        }
        // The engines come last: vLLM's start is a burst of CPU that, on
        // two cores, would slow Keycloak's past its deadline.
        let engines = if want(Component::Engines) {
            let started = timed("engines", Engines::start(&state_dir.join("engines"))).await;
            keep(
                "engines",
                Some(started),
                &mut startup_seconds,
                &mut first_error,
            )
        } else {
            None
        };
        if let Some(e) = first_error {
            return Err(e);
        }

        let mut processes = BTreeMap::new();
        if let Some(cp) = &control_plane {
            processes.extend(cp.pids());
        }
        if let Some(pid) = keycloak.as_ref().and_then(Keycloak::pid) {
            processes.insert("keycloak".to_owned(), pid);
        }
        if let Some(pid) = redis.as_ref().and_then(RedisServer::pid) {
            processes.insert("redis-server".to_owned(), pid);
        }
        if let Some(images) = &images {
            processes.extend(images.pids());
        }
        if let Some(node) = &node {
            processes.extend(node.pids());
        }
        if let Some(engines) = &engines {
            processes.extend(engines.pids());
        }
        let info = WorldInfo {
            state_dir: state_dir.to_owned(),
            supervisor_pid: std::process::id(),
            control_plane: control_plane.as_ref().map(|cp| ControlPlaneInfo {
                server: cp.server.clone(),
                kubeconfig: cp.kubeconfig.clone(),
            }),
            keycloak: keycloak.as_ref().map(|k| k.info.clone()),
            redis_url: redis.as_ref().map(RedisServer::url),
            helm: tools.helm.clone(),
            images: images.as_ref().map(|i| i.info.clone()),
            node: node.as_ref().map(|n| n.info.clone()),
            kubectl: node_tools.as_ref().map(|nt| nt.kubectl.clone()),
            engines: engines.as_ref().map(|e| e.info.clone()),
            processes,
            startup_seconds,
        };
        Ok(Self {
            node,
            control_plane,
            keycloak,
            redis,
            images,
            engines,
            info,
        })
    }

    /// Writes `world.json` and `env` into the state folder; returns the
    /// path of `world.json`.
    pub fn publish(&self) -> Result<PathBuf, HarnessError> {
        let dir = &self.info.state_dir;
        let json_path = dir.join("world.json");
        let json =
            serde_json::to_string_pretty(&self.info).map_err(|source| HarnessError::Json {
                what: "world.json".into(),
                source,
            })?;
        // Written under another name and renamed, so a reader never sees half.
        let tmp = dir.join("world.json.tmp");
        std::fs::write(&tmp, json).map_err(HarnessError::io(&tmp))?;
        std::fs::rename(&tmp, &json_path).map_err(HarnessError::io(&json_path))?;
        let env_path = dir.join("env.sh");
        std::fs::write(&env_path, self.info.env_lines(&json_path))
            .map_err(HarnessError::io(&env_path))?;
        Ok(json_path)
    }

    /// Stops every component: the node, the control plane, Keycloak, Redis,
    /// then the registry and buildkitd.
    pub fn stop(&mut self) {
        if let Some(node) = self.node.as_mut() {
            node.stop();
        }
        if let Some(cp) = self.control_plane.as_mut() {
            cp.stop();
        }
        if let Some(kc) = self.keycloak.as_mut() {
            kc.stop();
        }
        if let Some(redis) = self.redis.as_mut() {
            redis.stop();
        }
        if let Some(images) = self.images.as_mut() {
            images.stop();
        }
        if let Some(engines) = self.engines.as_mut() {
            engines.stop();
        }
    }
}

/// Processes whose command line names `needle`, with their pids.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Cleans up after worlds whose supervisor died without tearing down (killed
/// with SIGKILL): kills any process that still names their state folder, and
/// removes the folder.
pub fn reap_stale_worlds(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let dir = entry.path();
        let is_world = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(STATE_PREFIX));
        if !is_world || !dir.is_dir() {
            continue;
        }
        // A folder without a readable pid file is a world still starting.
        let Some(supervisor) = std::fs::read_to_string(dir.join("supervisor.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), None).is_ok() {
            continue;
        }
        let needle = dir.display().to_string();
        for (pid, _) in processes_mentioning(&needle) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let node_dir = dir.join("node");
        if node_dir.exists() {
            // A dead node's machine-wide leftovers (cgroups, mounts, network,
            // sysctls), unless another world's node runs now: it has swept
            // them already, and they are its own now.
            match crate::machine_lock::MachineLock::acquire("node", &dir) {
                Ok(_lock) => {
                    let iptables = crate::tools::which("iptables")
                        .unwrap_or_else(|| "/usr/sbin/iptables".into());
                    for problem in node::janitor::sweep(Some(&node_dir), &iptables) {
                        eprintln!("[harness] stale node: {problem}");
                    }
                }
                Err(e) => eprintln!("[harness] stale node at {}: {e}", node_dir.display()),
            }
        }
        eprintln!("[harness] removed stale world {}", dir.display());
        let _ = node::janitor::remove_state_dir(&dir);
    }
}
