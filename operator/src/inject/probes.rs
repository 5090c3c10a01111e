//! Probes that targeted the model's port. The model now listens on
//! loopback, where the kubelet cannot reach it, and the port belongs to the
//! gateway, which would answer 401 to an unauthenticated probe (or, for a
//! TCP probe, answer for a model that may be down). So each such probe is
//! rewritten to `GET <admin port>/probe/<container>/<kind>`, and the gateway
//! runs the original probe against the loopback port and answers with its
//! status: the outcome is the model's, exactly as before. No path on the
//! model port is opened without a token for this.

use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use attach_sidecar::app_probe::{AppProbe, AppProbes, PATH_PREFIX};

use crate::render::Ports;

/// Rewrites `model`'s probes on `port`; returns what the gateway must run.
pub fn rewrite(model: &mut Container, port: &ContainerPort, layout: Ports) -> AppProbes {
    let mut probes = AppProbes::default();
    let name = model.name.clone();
    for (kind, probe) in [
        ("liveness", model.liveness_probe.as_mut()),
        ("readiness", model.readiness_probe.as_mut()),
        ("startup", model.startup_probe.as_mut()),
    ] {
        let Some(probe) = probe else { continue };
        if let Some(original) =
            take_over(probe, port, layout, &format!("{PATH_PREFIX}{name}/{kind}"))
        {
            probes
                .0
                .insert(format!("{PATH_PREFIX}{name}/{kind}"), original);
        }
    }
    probes
}

fn targets(target: &IntOrString, port: &ContainerPort) -> bool {
    match target {
        IntOrString::Int(n) => *n == port.container_port,
        IntOrString::String(s) => port.name.as_deref() == Some(s.as_str()),
    }
}

fn take_over(
    probe: &mut Probe,
    port: &ContainerPort,
    layout: Ports,
    path: &str,
) -> Option<AppProbe> {
    let timeout_seconds = probe.timeout_seconds.and_then(|t| u32::try_from(t).ok());
    let original = if let Some(get) = &probe.http_get {
        // A probe with its own host, or over TLS, is not the model's port
        // on this pod as the gateway sees it: left as it is.
        if !targets(&get.port, port)
            || get.host.is_some()
            || get.scheme.as_deref().is_some_and(|s| s != "HTTP")
        {
            return None;
        }
        AppProbe {
            port: layout.upstream,
            path: Some(get.path.clone().unwrap_or_else(|| "/".into())),
            headers: get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
            timeout_seconds,
        }
    } else if let Some(tcp) = &probe.tcp_socket {
        if !targets(&tcp.port, port) || tcp.host.is_some() {
            return None;
        }
        AppProbe {
            port: layout.upstream,
            path: None,
            headers: Default::default(),
            timeout_seconds,
        }
    } else {
        return None;
    };
    probe.tcp_socket = None;
    probe.http_get = Some(HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::Int(i32::from(layout.admin)),
        scheme: Some("HTTP".into()),
        ..HTTPGetAction::default()
    });
    Some(original)
}
