//! What tests see of the test world: how to reach each component, read from
//! the `world.json` that `attach-harness up` writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

use crate::HarnessError;
use crate::control_plane::client_for;
use crate::engines::EnginesInfo;
use crate::images::ImagesInfo;
use crate::keycloak::KeycloakInfo;
use crate::node::NodeInfo;

/// The variable that points tests at a running world's `world.json`.
pub const WORLD_ENV: &str = "ATTACH_WORLD";

/// How to reach every component of a running world.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorldInfo {
    /// The folder holding every component's data and logs.
    pub state_dir: PathBuf,
    /// The supervisor (`attach-harness up`) that owns the processes.
    pub supervisor_pid: u32,
    pub control_plane: Option<ControlPlaneInfo>,
    pub keycloak: Option<KeycloakInfo>,
    /// `redis://127.0.0.1:<port>/`.
    pub redis_url: Option<String>,
    /// The helm binary built for this world's Kubernetes version.
    pub helm: PathBuf,
    /// The local registry and BuildKit, when this world runs them.
    #[serde(default)]
    pub images: Option<ImagesInfo>,
    /// The real node, when this world runs one.
    #[serde(default)]
    pub node: Option<NodeInfo>,
    /// kubectl built for this world's Kubernetes version (with a node).
    #[serde(default)]
    pub kubectl: Option<PathBuf>,
    /// The real engines, when this world runs them.
    #[serde(default)]
    pub engines: Option<EnginesInfo>,
    /// `component -> pid` of every process the supervisor started.
    pub processes: BTreeMap<String, u32>,
    /// `component -> seconds` it took to become ready.
    pub startup_seconds: BTreeMap<String, f64>,
}

/// How to reach the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlPlaneInfo {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
}

impl ControlPlaneInfo {
    /// The public key (PEM) the API server checks ServiceAccount tokens
    /// with: what an IdP that federates the cluster's issuer is given.
    pub fn service_account_public_key(&self) -> PathBuf {
        // Beside the kubeconfig, as `ControlPlane::start` writes them.
        self.kubeconfig.with_file_name("pki").join("sa.pub")
    }
}

impl WorldInfo {
    /// Reads a `world.json`.
    pub fn load(path: &Path) -> Result<Self, HarnessError> {
        let text = std::fs::read_to_string(path).map_err(HarnessError::io(path))?;
        serde_json::from_str(&text).map_err(|source| HarnessError::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// Shell `export` lines for humans, the demo and `make test`.
    pub fn env_lines(&self, world_json: &Path) -> String {
        let mut out = format!("export {WORLD_ENV}={}\n", world_json.display());
        if let Some(cp) = &self.control_plane {
            out += &format!("export KUBECONFIG={}\n", cp.kubeconfig.display());
        }
        if let Some(kc) = &self.keycloak {
            out += &format!("export ATTACH_KEYCLOAK_URL={}\n", kc.base_url);
            out += &format!(
                "export ATTACH_OIDC_ISSUER={}\n",
                kc.issuer(crate::keycloak::REALM)
            );
        }
        if let Some(url) = &self.redis_url {
            out += &format!("export ATTACH_REDIS_URL={url}\n");
        }
        out += &format!("export ATTACH_HELM={}\n", self.helm.display());
        if let Some(images) = &self.images {
            out += &format!("export ATTACH_REGISTRY={}\n", images.registry);
            out += &format!("export ATTACH_IMAGE_HOST={}\n", images.pull_host);
            out += &format!("export ATTACH_BUILDKIT_ADDR={}\n", images.buildkit_addr);
            out += &format!("export ATTACH_BUILDCTL={}\n", images.buildctl.display());
        }
        if let Some(node) = &self.node {
            out += &format!("export ATTACH_NODE={}\n", node.name);
        }
        if let Some(kubectl) = &self.kubectl {
            out += &format!("export ATTACH_KUBECTL={}\n", kubectl.display());
        }
        if let Some(engines) = &self.engines {
            out += &format!("export ATTACH_OLLAMA_URL={}\n", engines.ollama.url);
            out += &format!("export ATTACH_LLAMACPP_URL={}\n", engines.llamacpp.url);
            out += &format!("export ATTACH_VLLM_URL={}\n", engines.vllm.url);
            out += &format!("export ATTACH_VLLM_EMBED_URL={}\n", engines.vllm_embed.url);
        }
        out
    }
}

/// A test's handle on the world.
#[derive(Debug)]
pub struct World {
    pub info: WorldInfo,
    /// Held open for the life of the test process: the private supervisor
    /// tears the world down when it reads EOF, however this process ends.
    _lifeline: Option<Mutex<(Child, ChildStdin)>>,
}

static SHARED: OnceLock<Result<World, String>> = OnceLock::new();

impl World {
    /// The world every test in this process shares.
    ///
    /// With `ATTACH_WORLD` set (as `make test` and `tests/cluster up` do), it
    /// attaches to that running world. Otherwise it starts a private one with
    /// the `attach-harness` binary at `harness_bin`, once per process.
    ///
    /// # Panics
    /// When the world cannot be reached or started; the message names what is
    /// missing. A test that needs the world must fail, never skip, without it.
    pub fn shared(harness_bin: &str) -> &'static World {
        Self::shared_with(harness_bin, &[])
    }

    /// [`World::shared`] for tests that need `components` (e.g. `node`):
    /// the running world must have them, and a private one is started with
    /// them (and the default ones). The first call in a process decides.
    ///
    /// # Panics
    /// As [`World::shared`], and when the running world lacks a component.
    pub fn shared_with(harness_bin: &str, components: &[&str]) -> &'static World {
        let world = SHARED.get_or_init(|| {
            Self::attach_or_start(harness_bin, components).map_err(|e| e.to_string())
        });
        match world {
            Ok(world) => world,
            Err(e) => panic!("the test world is not available: {e}"),
        }
    }

    fn attach_or_start(harness_bin: &str, components: &[&str]) -> Result<Self, HarnessError> {
        if let Some(path) = std::env::var_os(WORLD_ENV) {
            let info = WorldInfo::load(Path::new(&path))?;
            if components.contains(&"node") && info.node.is_none() {
                return Err(HarnessError::Other(format!(
                    "the world at {} runs no node, which these tests need: start it with \
                     the node component (scripts/e2e does for the node tests)",
                    path.to_string_lossy()
                )));
            }
            return Ok(Self {
                info,
                _lifeline: None,
            });
        }
        if components.is_empty() {
            return Self::start_private(harness_bin, &[]);
        }
        let mut all = vec!["control-plane", "keycloak", "redis"];
        all.extend_from_slice(components);
        Self::start_private(harness_bin, &all)
    }

    /// Starts a private world through `attach-harness up`, with only
    /// `components` (all of them when empty). It is torn down when the
    /// returned value is dropped or this process exits.
    pub fn start_private(harness_bin: &str, components: &[&str]) -> Result<Self, HarnessError> {
        let mut cmd = Command::new(harness_bin);
        cmd.arg("up").arg("--until-stdin-closes");
        if !components.is_empty() {
            cmd.arg("--components").arg(components.join(","));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: harness_bin.to_owned(),
                source,
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err(HarnessError::Other("attach-harness pipes missing".into()));
        };
        let mut world_json = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(HarnessError::io("attach-harness stdout"))?;
            if let Some(path) = line.strip_prefix("ready ") {
                world_json = Some(PathBuf::from(path));
                break;
            }
        }
        let Some(world_json) = world_json else {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(HarnessError::Other(format!(
                "attach-harness up exited ({status}) before the world was ready; see its output above"
            )));
        };
        Ok(Self {
            info: WorldInfo::load(&world_json)?,
            _lifeline: Some(Mutex::new((child, stdin))),
        })
    }

    /// Stops a private world and waits for its supervisor to exit.
    pub fn shutdown(self) -> Result<std::process::ExitStatus, HarnessError> {
        let Some(lifeline) = self._lifeline else {
            return Err(HarnessError::Other("not a private world".into()));
        };
        let (mut child, stdin) = lifeline
            .into_inner()
            .map_err(|_| HarnessError::Other("lifeline lock poisoned".into()))?;
        drop(stdin);
        child.wait().map_err(HarnessError::io("attach-harness"))
    }

    /// The control plane, or an error if this world runs without one.
    pub fn control_plane(&self) -> Result<&ControlPlaneInfo, HarnessError> {
        self.info
            .control_plane
            .as_ref()
            .ok_or_else(|| HarnessError::Other("this world has no control plane".into()))
    }

    /// Keycloak, or an error if this world runs without it.
    pub fn keycloak(&self) -> Result<&KeycloakInfo, HarnessError> {
        self.info
            .keycloak
            .as_ref()
            .ok_or_else(|| HarnessError::Other("this world has no Keycloak".into()))
    }

    /// Redis's URL, or an error if this world runs without it.
    pub fn redis_url(&self) -> Result<&str, HarnessError> {
        self.info
            .redis_url
            .as_deref()
            .ok_or_else(|| HarnessError::Other("this world has no Redis".into()))
    }

    /// An admin client for the control plane.
    pub async fn client(&self) -> Result<kube::Client, HarnessError> {
        client_for(&self.control_plane()?.kubeconfig).await
    }

    /// The local registry and BuildKit, or an error if this world runs without them.
    pub fn images(&self) -> Result<&ImagesInfo, HarnessError> {
        self.info.images.as_ref().ok_or_else(|| {
            HarnessError::Other("this world has no image registry (component images)".into())
        })
    }

    /// The node, or an error if this world runs without one.
    pub fn node(&self) -> Result<&NodeInfo, HarnessError> {
        self.info
            .node
            .as_ref()
            .ok_or_else(|| HarnessError::Other("this world has no node (component node)".into()))
    }

    /// The real engines, or an error if this world runs without them.
    pub fn engines(&self) -> Result<&EnginesInfo, HarnessError> {
        self.info.engines.as_ref().ok_or_else(|| {
            HarnessError::Other("this world runs no engines (component engines)".into())
        })
    }

    /// `kubectl --kubeconfig <admin>` (the world's own kubectl when it built one).
    pub fn kubectl(&self) -> Result<Command, HarnessError> {
        let program = self
            .info
            .kubectl
            .clone()
            .unwrap_or_else(|| PathBuf::from("kubectl"));
        let mut cmd = Command::new(program);
        cmd.arg("--kubeconfig")
            .arg(&self.control_plane()?.kubeconfig);
        Ok(cmd)
    }

    /// `helm` with `KUBECONFIG` set to the admin kubeconfig.
    pub fn helm(&self) -> Result<Command, HarnessError> {
        let mut cmd = Command::new(&self.info.helm);
        cmd.env("KUBECONFIG", &self.control_plane()?.kubeconfig);
        Ok(cmd)
    }

    /// Creates a fresh namespace `<prefix>-<random>` and waits until the
    /// controller manager has given it a `default` service account, so that
    /// pods can be created in it at once.
    pub async fn namespace(&self, prefix: &str) -> Result<String, HarnessError> {
        self.namespace_with_labels(prefix, &[]).await
    }

    /// [`World::namespace`], with `labels` besides `attach.dev/test`.
    pub async fn namespace_with_labels(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> Result<String, HarnessError> {
        let client = self.client().await?;
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let mut all = serde_json::Map::new();
        all.insert("attach.dev/test".into(), "true".into());
        for (key, value) in labels {
            all.insert((*key).into(), (*value).into());
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": all}
        }))
        .map_err(|source| HarnessError::Json {
            what: "namespace".into(),
            source,
        })?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let sa: Api<ServiceAccount> = Api::namespaced(client, &name);
        for _ in 0..300 {
            if sa.get_opt("default").await?.is_some() {
                return Ok(name);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(HarnessError::Other(format!(
            "namespace {name} got no default service account in 30s"
        )))
    }
}
