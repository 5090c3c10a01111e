//! Child processes the harness owns.
//!
//! Each one runs in its own process group, so that stopping it also stops
//! anything it forked (Keycloak's `kc.sh` forks the JVM). On Linux it is also
//! started through `setpriv --pdeathsig KILL`, so that it dies with the thread
//! that started it even if the harness itself is killed with SIGKILL. Output
//! goes to a log file whose tail is shown when the component fails.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::HarnessError;

/// How long a component gets to exit after SIGTERM before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Builds a command for `program` that dies with its parent thread where
/// `setpriv` is available.
pub fn command(program: impl AsRef<Path>) -> Command {
    let program = program.as_ref();
    if Path::new("/usr/bin/setpriv").exists() {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A running child process that is stopped, with a bounded wait, on drop.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Supervised {
    /// Starts `cmd` in a new process group with stdout and stderr appended to
    /// `log_path`.
    pub fn spawn(
        name: impl Into<String>,
        mut cmd: Command,
        log_path: impl Into<PathBuf>,
    ) -> Result<Self, HarnessError> {
        let name = name.into();
        let log_path = log_path.into();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(HarnessError::io(&log_path))?;
        let log_err = log.try_clone().map_err(HarnessError::io(&log_path))?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            child: Some(child),
            log_path,
        })
    }

    /// The component's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process-group id).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the component's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Fails with [`HarnessError::Exited`] if the process has already exited.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.exited("stopped".to_owned()));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status.to_string())),
            Err(e) => Err(self.exited(e.to_string())),
        }
    }

    fn exited(&self, status: String) -> HarnessError {
        HarnessError::Exited {
            component: self.name.clone(),
            status,
            log_path: self.log_path.clone(),
            log: log_tail(&self.log_path, 30),
        }
    }

    /// The error to report when the component did not become ready in time.
    pub fn not_ready(&self, waited: Duration) -> HarnessError {
        HarnessError::NotReady {
            component: self.name.clone(),
            seconds: waited.as_secs(),
            log_path: self.log_path.clone(),
            log: log_tail(&self.log_path, 30),
        }
    }

    /// Sends SIGTERM to the process group, waits up to `grace`, then sends
    /// SIGKILL and reaps the child. Safe to call more than once.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let Ok(raw) = i32::try_from(child.id()) else {
            return;
        };
        let group = Pid::from_raw(raw);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left in the group (a forked JVM, a straggler) goes too.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Supervised {
    /// Sends SIGKILL at once (a crash: nothing is drained or flushed) and
    /// reaps the child.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(raw) = i32::try_from(child.id()) {
            let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(DEFAULT_GRACE);
    }
}

/// The last `lines` lines of a log file, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}
