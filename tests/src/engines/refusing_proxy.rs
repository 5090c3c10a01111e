//! A proxy that closes every connection: engines are started with it as
//! their `HTTPS_PROXY`, so a model pull never leaves the machine and fails
//! at once, instead of depending on some port being closed.

use std::net::{SocketAddr, TcpListener};

use crate::HarnessError;

/// Accepts connections on a loopback port and closes them, for as long as
/// the harness process lives.
#[derive(Debug)]
pub struct RefusingProxy {
    addr: SocketAddr,
}

impl RefusingProxy {
    /// Binds a port the kernel picks and starts closing what arrives there.
    pub fn start() -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(HarnessError::io("127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(HarnessError::io("127.0.0.1:0"))?;
        // The thread owns the listener: the port stays taken (and refusing)
        // until the harness exits.
        std::thread::Builder::new()
            .name("refusing-proxy".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    drop(stream);
                }
            })
            .map_err(HarnessError::io("refusing-proxy thread"))?;
        Ok(Self { addr })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
