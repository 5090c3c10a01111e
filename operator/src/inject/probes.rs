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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ExecAction, TCPSocketAction};

    use super::*;

    const LAYOUT: Ports = Ports {
        listen: 11434,
        admin: 9090,
        upstream: 11435,
    };

    fn model_port() -> ContainerPort {
        ContainerPort {
            container_port: 11434,
            name: Some("http".into()),
            ..ContainerPort::default()
        }
    }

    fn http(port: IntOrString, host: Option<&str>, scheme: Option<&str>) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/api/version".into()),
                port,
                host: host.map(str::to_owned),
                scheme: scheme.map(str::to_owned),
                ..HTTPGetAction::default()
            }),
            timeout_seconds: Some(3),
            ..Probe::default()
        }
    }

    fn tcp(port: IntOrString, host: Option<&str>) -> Probe {
        Probe {
            tcp_socket: Some(TCPSocketAction {
                port,
                host: host.map(str::to_owned),
            }),
            ..Probe::default()
        }
    }

    /// Only a probe the kubelet would send to the model's port on this
    /// pod, in plain HTTP or TCP, is taken over; one with its own host,
    /// over HTTPS, on another port or running a command is left exactly
    /// as it was.
    #[test]
    fn only_plain_probes_of_the_model_port_are_taken_over() {
        let number = IntOrString::Int(11434);
        let name = IntOrString::String("http".into());
        let other = IntOrString::Int(8080);
        let cases = [
            ("http by number", http(number.clone(), None, None), true),
            (
                "http by name, scheme HTTP",
                http(name, None, Some("HTTP")),
                true,
            ),
            (
                "http with a host",
                http(number.clone(), Some("10.0.0.7"), None),
                false,
            ),
            ("https", http(number.clone(), None, Some("HTTPS")), false),
            ("http, another port", http(other.clone(), None, None), false),
            ("tcp", tcp(number.clone(), None), true),
            ("tcp with a host", tcp(number, Some("10.0.0.7")), false),
            ("tcp, another port", tcp(other, None), false),
            (
                "exec",
                Probe {
                    exec: Some(ExecAction {
                        command: Some(vec!["true".into()]),
                    }),
                    ..Probe::default()
                },
                false,
            ),
        ];
        for (what, probe, taken) in cases {
            let mut model = Container {
                name: "ollama".into(),
                liveness_probe: Some(probe.clone()),
                ..Container::default()
            };
            let probes = rewrite(&mut model, &model_port(), LAYOUT);
            let path = format!("{PATH_PREFIX}ollama/liveness");
            let Some(rewritten) = model.liveness_probe else {
                panic!("{what}: the probe is gone")
            };
            if taken {
                let original = probes.0.get(&path).unwrap_or_else(|| panic!("{what}"));
                assert_eq!(original.port, LAYOUT.upstream, "{what}");
                assert!(rewritten.tcp_socket.is_none(), "{what}");
                let get = rewritten.http_get.unwrap();
                assert_eq!(get.port, IntOrString::Int(9090), "{what}");
                assert_eq!(get.path.as_deref(), Some(path.as_str()), "{what}");
                assert!(get.host.is_none(), "{what}");
            } else {
                assert!(probes.0.is_empty(), "{what}: {probes:?}");
                assert_eq!(rewritten, probe, "{what}: left as it was");
            }
        }
    }
}
