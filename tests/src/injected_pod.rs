//! An injected pod's containers, run as local processes (there is no
//! kubelet): the model, a mock bound where the patch rebinds it, and the
//! gateway with the pod's own arguments and environment and the rendered
//! config file in a ConfigMap-style folder. The pod's port numbers are
//! mapped to free ones, because this machine is shared; addresses are kept.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::HarnessError;
use crate::gateway::write_configmap_file;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::wait::until_http_ok;

/// The running pod. Its processes stop on drop.
#[derive(Debug)]
pub struct InjectedPod {
    _model: Supervised,
    gateway: Supervised,
    dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
    generation: u32,
    ports: BTreeMap<u16, u16>,
    /// Where the model listens, as the patch says (`127.0.0.1`).
    pub model_ip: String,
    /// The model's port in the pod (mapped with [`Self::port`]).
    pub model_port: u16,
    /// `http://127.0.0.1:<the gateway's mapped proxy port>`.
    pub url: String,
    /// `http://127.0.0.1:<the gateway's mapped admin port>`.
    pub admin: String,
}

fn env_of(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn other(what: &str) -> HarnessError {
    HarnessError::Other(format!("not an injected Ollama pod: {what}"))
}

impl InjectedPod {
    /// Starts the pod's model and gateway; waits until the gateway is ready.
    pub async fn start(pod: &Pod, config: &str) -> Result<Self, HarnessError> {
        let spec = pod.spec.as_ref().ok_or_else(|| other("no spec"))?;
        let gateway = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == "attach-gateway")
            .ok_or_else(|| other("no attach-gateway container"))?;
        let model = spec
            .containers
            .first()
            .ok_or_else(|| other("no container"))?;
        let host = env_of(model, "OLLAMA_HOST").ok_or_else(|| other("no OLLAMA_HOST"))?;
        let (model_ip, model_port) = host.rsplit_once(':').ok_or_else(|| other("OLLAMA_HOST"))?;
        let model_port: u16 = model_port.parse().map_err(|_| other("OLLAMA_HOST port"))?;
        let args = gateway.args.clone().unwrap_or_default();
        let flag = |name: &str| -> Result<u16, HarnessError> {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| other(name))
        };
        let mut ports = BTreeMap::new();
        for port in [model_port, flag("--port")?, flag("--admin-port")?] {
            ports.insert(port, free_port()?);
        }
        let dir = tempfile::tempdir().map_err(HarnessError::io("tempdir"))?;
        let config_dir = tempfile::tempdir().map_err(HarnessError::io("tempdir"))?;
        let mut generation = 0;
        write_configmap_file(config_dir.path(), "gateway.yaml", config, &mut generation)?;

        let mut model_cmd =
            process::command(crate::binaries::build("attach-tests", "attach-mock-model")?);
        model_cmd.args(["--listen", &format!("{model_ip}:{}", ports[&model_port])]);
        let model = Supervised::spawn("mock-model", model_cmd, dir.path().join("model.log"))?;

        let map = |port: &str| -> String {
            port.parse::<u16>()
                .ok()
                .and_then(|p| ports.get(&p))
                .map_or_else(|| port.to_owned(), ToString::to_string)
        };
        let mut mapped = Vec::with_capacity(args.len());
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            mapped.push(arg.clone());
            let Some(value) = iter.next() else { break };
            mapped.push(match arg.as_str() {
                "--config" => config_dir.path().join("gateway.yaml").display().to_string(),
                "--port" | "--admin-port" => map(value),
                "--upstream" => format!("http://{model_ip}:{}", ports[&model_port]),
                _ => value.clone(),
            });
        }
        let mut cmd = process::command(crate::gateway::binary()?);
        cmd.args(&mapped).args(["--log-format", "json"]);
        // The quota clock is frozen, as for every test gateway: quotas never
        // depend on the wall-clock minute.
        let (clock, at) = crate::gateway::test_clock_env();
        cmd.env(clock, at);
        for e in gateway.env.iter().flatten() {
            // The probes the gateway runs name the model's port.
            let value = ports
                .iter()
                .fold(e.value.clone().unwrap_or_default(), |v, (from, to)| {
                    v.replace(&format!("\"port\":{from}"), &format!("\"port\":{to}"))
                });
            cmd.env(&e.name, value);
        }
        let mut gateway = Supervised::spawn("attach-gateway", cmd, dir.path().join("gateway.log"))?;
        let admin = format!("http://127.0.0.1:{}", ports[&flag("--admin-port")?]);
        let ready = format!("{admin}/readyz");
        until_http_ok(
            &mut gateway,
            &ready,
            Duration::from_secs(30),
            Duration::from_millis(100),
        )
        .await?;
        Ok(Self {
            url: format!("http://127.0.0.1:{}", ports[&flag("--port")?]),
            admin,
            _model: model,
            gateway,
            dir,
            config_dir,
            generation,
            ports,
            model_ip: model_ip.to_owned(),
            model_port,
        })
    }

    /// The free port standing in for the pod's `port`.
    pub fn port(&self, port: u16) -> Option<u16> {
        self.ports.get(&port).copied()
    }

    /// Replaces the config file as the kubelet updates a ConfigMap volume.
    pub fn write_config(&mut self, text: &str) -> Result<(), HarnessError> {
        write_configmap_file(
            self.config_dir.path(),
            "gateway.yaml",
            text,
            &mut self.generation,
        )
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.pid()
    }

    /// Fails if the gateway exited.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        self.gateway.check_running()
    }

    /// What the gateway wrote to stdout and stderr (audit lines and logs).
    pub fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}
