//! The official client SDKs (`openai`, `ollama`), driven one call at a time
//! through `tests/tools/clients/drive.py`, so that a test can read the
//! gateway's metrics between two calls.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use serde_json::Value;

use super::built;
use crate::HarnessError;
use crate::process;

/// Which SDK drives the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// The `openai` Python package, on `<base>/v1`.
    OpenAi,
    /// The `ollama` Python package.
    Ollama,
}

/// A running driver. Killed on drop.
#[derive(Debug)]
pub struct SdkDriver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl SdkDriver {
    /// Starts the driver for `sdk` against `base` (the gateway), calling as
    /// the holder of `token`.
    pub fn start(
        sdk: Sdk,
        base: &str,
        token: &str,
        chat_model: &str,
        embed_model: &str,
    ) -> Result<Self, HarnessError> {
        let built = built()?;
        let mut cmd = process::command(&built.clients_python);
        cmd.arg(&built.clients_driver)
            .arg("--sdk")
            .arg(match sdk {
                Sdk::OpenAi => "openai",
                Sdk::Ollama => "ollama",
            })
            .arg("--base")
            .arg(base)
            .arg("--chat-model")
            .arg(chat_model)
            .arg("--embed-model")
            .arg(embed_model)
            // In the environment: a command line is visible to every user.
            .env("DRIVE_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            program: "drive.py".into(),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(HarnessError::Other("drive.py pipes missing".into()));
        };
        let mut driver = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let ready = driver.read()?;
        if ready["ready"] != true {
            return Err(HarnessError::Other(format!("drive.py said {ready}")));
        }
        Ok(driver)
    }

    /// Makes the call `name` (see `drive.py`) and returns its answer:
    /// `{"ok": {...}}` or `{"error": {"status": ..., "body": ...}}`.
    pub fn call(&mut self, name: &str) -> Result<Value, HarnessError> {
        writeln!(self.stdin, "{name}")
            .and_then(|()| self.stdin.flush())
            .map_err(HarnessError::io("drive.py stdin"))?;
        let answer = self.read()?;
        if answer["call"] != name {
            return Err(HarnessError::Other(format!(
                "drive.py answered {answer} to {name}"
            )));
        }
        Ok(answer)
    }

    fn read(&mut self) -> Result<Value, HarnessError> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .map_err(HarnessError::io("drive.py stdout"))?;
        if n == 0 {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(HarnessError::Other(format!(
                "drive.py exited ({status}); its error is above"
            )));
        }
        serde_json::from_str(&line).map_err(|source| HarnessError::Json {
            what: "drive.py answer".into(),
            source,
        })
    }
}

impl Drop for SdkDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
