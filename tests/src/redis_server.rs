//! A real Redis (Debian's redis-server) on a loopback port (and, in a world
//! with a node, on the node's bridge address too, where pods reach it).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::HarnessError;
use crate::ports::free_port;
use crate::process::{self, Supervised};
use crate::wait::until_ready;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running redis-server. Dropping it stops the server.
#[derive(Debug)]
pub struct RedisServer {
    process: Supervised,
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    host: IpAddr,
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl RedisServer {
    /// Starts redis-server on a free port, keeping nothing on disk.
    pub async fn start(binary: &Path, dir: &Path) -> Result<Self, HarnessError> {
        Self::start_on(binary, dir, free_port()?).await
    }

    /// [`RedisServer::start`], serving on `host` as well as on loopback.
    pub async fn start_serving(
        binary: &Path,
        dir: &Path,
        host: IpAddr,
    ) -> Result<Self, HarnessError> {
        Self::start_at(binary, dir, host, free_port()?, &[]).await
    }

    /// Starts redis-server on `port`; used to bring a server back on the same
    /// address after a test stopped it.
    pub async fn start_on(binary: &Path, dir: &Path, port: u16) -> Result<Self, HarnessError> {
        Self::start_at(binary, dir, LOOPBACK, port, &[]).await
    }

    /// Starts redis-server on `port` with extra arguments (cluster mode,
    /// `--maxmemory`).
    pub async fn start_with(
        binary: &Path,
        dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<Self, HarnessError> {
        Self::start_at(binary, dir, LOOPBACK, port, extra).await
    }

    async fn start_at(
        binary: &Path,
        dir: &Path,
        host: IpAddr,
        port: u16,
        extra: &[&str],
    ) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(HarnessError::io(dir))?;
        let mut cmd = process::command(binary);
        let bind = if host == LOOPBACK {
            "127.0.0.1".to_owned()
        } else {
            format!("127.0.0.1 {host}")
        };
        cmd.arg("--bind")
            .arg(bind)
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir)
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            // Protected mode refuses every client off loopback; on a node's
            // bridge, pods are the clients (and nothing else reaches it).
            .arg("--protected-mode")
            .arg(if host == LOOPBACK { "yes" } else { "no" })
            .args(extra);
        let mut process = Supervised::spawn("redis-server", cmd, dir.join("redis.log"))?;
        until_ready(
            &mut process,
            READY_TIMEOUT,
            Duration::from_millis(50),
            async || ping(port).is_ok(),
        )
        .await?;
        Ok(Self {
            process,
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            port,
            host,
        })
    }

    /// `redis://<host>:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.host, self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops the server (it can be started again with [`Self::restart`]).
    pub fn stop(&mut self) {
        self.process.stop(process::DEFAULT_GRACE);
    }

    /// Kills the server at once (a crash).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the server if it runs, then starts a new one on the same port.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        let fresh = Self::start_at(&self.binary, &self.dir, self.host, self.port, &[]).await?;
        *self = fresh;
        Ok(())
    }
}

/// Sends an inline `PING` and expects `+PONG`.
pub fn ping(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected reply to PING"))
    }
}
