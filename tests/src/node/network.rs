//! The node's network on the host: a bridge with the pod range, the service
//! range routed onto it, forwarding allowed only between its ports, and the
//! kernel settings a node needs, each put back as it was on teardown.
//!
//! Forwarding is filtered in `mangle FORWARD`, which the kernel walks before
//! `filter FORWARD`: kube-proxy prepends its own accepting rules to the
//! latter, so a filter there could be bypassed; here nothing kube-proxy
//! writes comes first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{BRIDGE, BRIDGE_IP, FORWARD_CHAIN, POD_CIDR, POD_PREFIX, SERVICE_CIDR};
use crate::HarnessError;

/// Kernel settings the node changes: `(path under /proc/sys, value)`.
/// Forwarding and bridged traffic through iptables are what pods and
/// Services need; the others are what the kubelet sets itself when it
/// starts (its "kernel defaults"), listed so they are put back too.
pub const SYSCTLS: [(&str, Option<&str>); 8] = [
    ("net/ipv4/ip_forward", Some("1")),
    ("net/bridge/bridge-nf-call-iptables", Some("1")),
    ("vm/overcommit_memory", None),
    ("vm/panic_on_oom", None),
    ("kernel/panic", None),
    ("kernel/panic_on_oops", None),
    ("kernel/keys/root_maxkeys", None),
    ("kernel/keys/root_maxbytes", None),
];

/// Where the values found before the node started are saved, so that a
/// janitor can put them back even after the supervisor was killed.
pub fn sysctl_snapshot_path(node_dir: &Path) -> PathBuf {
    node_dir.join("sysctls-before.json")
}

/// The sysctls as they were before the node started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SysctlSnapshot(pub BTreeMap<String, String>);

impl SysctlSnapshot {
    /// Reads every setting of [`SYSCTLS`] that exists on this kernel.
    pub fn read() -> Self {
        Self(
            SYSCTLS
                .iter()
                .filter_map(|(key, _)| {
                    let value = std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?;
                    Some(((*key).to_owned(), value.trim().to_owned()))
                })
                .collect(),
        )
    }

    /// Writes every saved value back; returns the settings that could not be.
    pub fn restore(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for (key, value) in &self.0 {
            let path = Path::new("/proc/sys").join(key);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current.trim() != value && std::fs::write(&path, value).is_err() {
                failed.push(format!("{key}={value}"));
            }
        }
        failed
    }

    pub fn save(&self, path: &Path) -> Result<(), HarnessError> {
        let text = serde_json::to_string_pretty(&self.0).map_err(|source| HarnessError::Json {
            what: "sysctl snapshot".into(),
            source,
        })?;
        std::fs::write(path, text).map_err(HarnessError::io(path))
    }

    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok().map(Self)
    }
}

/// The iptables rules of [`FORWARD_CHAIN`] (in `mangle`), in order. When
/// forwarding was off before the node, everything else forwarded is dropped
/// too: turning it on must open nothing but the bridge.
pub fn forward_rules(forwarding_was_on: bool) -> Vec<Vec<String>> {
    let rule = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let mut rules = vec![
        rule(&["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"]),
        rule(&["-i", BRIDGE, "-j", "DROP"]),
        rule(&["-o", BRIDGE, "-j", "DROP"]),
    ];
    if !forwarding_was_on {
        rules.push(rule(&["-j", "DROP"]));
    }
    rules
}

/// Runs a command; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Fails if a route of this machine overlaps the node's ranges (another
/// network already uses them).
fn check_ranges_free() -> Result<(), HarnessError> {
    let routes = run("ip", &["-4", "route", "show", "table", "all"])?;
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let mut dst = words.next().unwrap_or("default");
        if matches!(
            dst,
            "local"
                | "broadcast"
                | "unicast"
                | "multicast"
                | "anycast"
                | "unreachable"
                | "blackhole"
                | "prohibit"
                | "throw"
        ) {
            dst = words.next().unwrap_or("default");
        }
        if line.contains(&format!("dev {BRIDGE}")) {
            continue;
        }
        for range in [POD_CIDR, SERVICE_CIDR] {
            if overlaps(dst, range) {
                return Err(HarnessError::Other(format!(
                    "the route {line:?} overlaps the node's range {range}"
                )));
            }
        }
    }
    Ok(())
}

/// Whether two IPv4 networks (`a.b.c.d/n`, or a bare address) overlap.
pub fn overlaps(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Option<(u32, u32)> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: std::net::Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - len.min(32))
        };
        Some((u32::from(addr) & mask, mask))
    };
    match (parse(a), parse(b)) {
        (Some((na, ma)), Some((nb, mb))) => {
            let common = ma & mb;
            na & common == nb & common
        }
        _ => false,
    }
}

/// The node's network, set up. [`NodeNetwork::remove`] (or the janitor)
/// takes it down.
#[derive(Debug)]
pub struct NodeNetwork {
    snapshot: SysctlSnapshot,
    removed: bool,
}

impl NodeNetwork {
    /// Creates the bridge, the route and the forwarding filter, and sets the
    /// sysctls, saving their old values under `node_dir` first.
    pub fn create(node_dir: &Path, iptables: &Path) -> Result<Self, HarnessError> {
        check_ranges_free()?;
        std::fs::create_dir_all(node_dir).map_err(HarnessError::io(node_dir))?;
        let snapshot = SysctlSnapshot::read();
        snapshot.save(&sysctl_snapshot_path(node_dir))?;
        let network = Self {
            snapshot,
            removed: false,
        };
        // From here on, a failure undoes what was done (Drop).
        let gateway = format!("{BRIDGE_IP}/{POD_PREFIX}");
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["addr", "add", &gateway, "dev", BRIDGE])?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        // No dummy device on this kernel: the service range goes onto the
        // bridge, so the host's own packets to Services stay here too.
        let src = BRIDGE_IP.to_string();
        run(
            "ip",
            &["route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", &src],
        )?;
        let forwarding_was_on = network
            .snapshot
            .0
            .get("net/ipv4/ip_forward")
            .is_some_and(|v| v == "1");
        let ipt = iptables.to_string_lossy().into_owned();
        run(&ipt, &["-w", "-t", "mangle", "-N", FORWARD_CHAIN])?;
        for rule in forward_rules(forwarding_was_on) {
            let mut args = vec!["-w", "-t", "mangle", "-A", FORWARD_CHAIN];
            args.extend(rule.iter().map(String::as_str));
            run(&ipt, &args)?;
        }
        run(
            &ipt,
            &[
                "-w",
                "-t",
                "mangle",
                "-I",
                "FORWARD",
                "1",
                "-j",
                FORWARD_CHAIN,
            ],
        )?;
        // Bridged pod traffic must pass iptables (Service replies are
        // un-NATed there): br_netfilter.
        let bridge_nf = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
        if !bridge_nf.exists() {
            let _ = run("modprobe", &["br_netfilter"]);
            if !bridge_nf.exists() {
                return Err(HarnessError::Other(
                    "the kernel has no br_netfilter (modprobe br_netfilter failed): \
                     Services cannot work between pods on the bridge"
                        .into(),
                ));
            }
        }
        for (key, value) in SYSCTLS {
            if let Some(value) = value {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value).map_err(HarnessError::io(&path))?;
            }
        }
        Ok(network)
    }

    /// Leaves the teardown to the caller (the janitor, which also restores
    /// the sysctls from the saved snapshot).
    pub fn disarm(mut self) {
        self.removed = true;
    }

    /// Takes the network down and restores the sysctls (the janitor's
    /// network half). Safe to call twice.
    pub fn remove(&mut self, iptables: &Path) -> Vec<String> {
        if self.removed {
            return Vec::new();
        }
        self.removed = true;
        let mut problems = super::janitor::remove_network(iptables);
        problems.extend(self.snapshot.restore());
        problems
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        if !self.removed {
            let iptables = crate::tools::which("iptables")
                .unwrap_or_else(|| PathBuf::from("/usr/sbin/iptables"));
            for problem in self.remove(&iptables) {
                eprintln!("[harness] node network teardown: {problem}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_networks() {
        assert!(overlaps("10.231.0.0/24", "10.231.0.0/24"));
        assert!(overlaps("10.0.0.0/8", "10.231.0.0/24"));
        assert!(overlaps("10.231.0.7", "10.231.0.0/24"));
        assert!(!overlaps("default", "10.231.0.0/24"));
        assert!(!overlaps("192.0.2.0/24", "10.231.0.0/24"));
        assert!(!overlaps("10.231.1.0/24", "10.231.0.0/24"));
        assert!(overlaps("0.0.0.0/0", "10.231.0.0/24"));
    }

    #[test]
    fn forwarding_stays_on_the_bridge() {
        let on = forward_rules(true);
        assert_eq!(on[0], ["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"]);
        assert_eq!(on.len(), 3);
        // Forwarding was off: the node turns it on for the bridge only.
        let off = forward_rules(false);
        assert_eq!(off.last().unwrap(), &["-j", "DROP"]);
    }
}
