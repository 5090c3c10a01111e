//! Free loopback ports for the components the harness starts.

use std::net::TcpListener;

use crate::HarnessError;

/// Asks the kernel for a free port on 127.0.0.1.
///
/// The port is released before the caller binds it, so another process could
/// take it in between; on a test machine that race is rare enough, and a
/// component that fails to bind is reported with its log.
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(HarnessError::io("127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::io("127.0.0.1:0"))?
        .port();
    Ok(port)
}
