//! A real Redis Cluster of three masters on loopback: three
//! `redis-server --cluster-enabled yes`, joined by `redis-cli --cluster
//! create` (no replicas), ready once every node says `cluster_state:ok`.
//!
//! Each node's cluster bus port is chosen like its client port. Left to
//! Redis it would be the client port + 10000, which falls in the kernel's
//! ephemeral range, where an outgoing connection may already hold it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::HarnessError;
use crate::ports::free_port;
use crate::redis_server::RedisServer;

/// A running cluster; dropping it stops every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    cli: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts three masters under `dir` and joins them.
    pub async fn start(server: &Path, cli: &Path, dir: &Path) -> Result<Self, HarnessError> {
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = free_port()?;
            let bus_port = free_port()?.to_string();
            let node_dir = dir.join(format!("node-{i}"));
            let conf = node_dir.join("nodes.conf");
            let conf = conf.to_string_lossy().into_owned();
            nodes.push(
                RedisServer::start_with(
                    server,
                    &node_dir,
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-port",
                        &bus_port,
                    ],
                )
                .await?,
            );
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(HarnessError::io(cli))?;
        if !out.status.success() {
            return Err(HarnessError::Other(format!(
                "redis-cli --cluster create: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = Self {
            nodes,
            cli: cli.to_owned(),
        };
        for _ in 0..200 {
            if cluster.nodes.iter().all(|n| {
                cluster
                    .cli(n.port(), &["cluster", "info"])
                    .contains("cluster_state:ok")
            }) {
                return Ok(cluster);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HarnessError::Other(
            "the Redis cluster never reached cluster_state:ok".into(),
        ))
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new(&self.cli)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `redis://` URL of one node (a client finds the others from it).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The URL of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The port of the master that serves `key`'s hash slot.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let port = self.nodes.first()?.port();
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        for line in self.cli(port, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let node_port: u16 = fields[1]
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                    && (lo..=hi).contains(&slot)
                {
                    return Some(node_port);
                }
            }
        }
        None
    }

    /// Kills the node on `port` (a crash); returns whether one was there.
    pub fn kill(&mut self, port: u16) -> bool {
        match self.nodes.iter_mut().find(|n| n.port() == port) {
            Some(node) => {
                node.kill();
                true
            }
            None => false,
        }
    }
}
