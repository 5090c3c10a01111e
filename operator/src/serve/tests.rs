//! The accept loop against real sockets (and, for accept errors, a
//! listener that fails as an exhausted process does).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[derive(Clone)]
struct Slow(Duration);

impl Handler for Slow {
    fn handle(
        &self,
        _: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send + 'static {
        let pause = self.0;
        async move {
            tokio::time::sleep(pause).await;
            Response::new(Full::new(Bytes::from_static(b"done")))
        }
    }
}

fn limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(300),
        drain_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// Fails every accept, as a process out of file descriptors does.
struct Exhausted(Arc<AtomicUsize>);

impl Listener for Exhausted {
    type Io = TcpStream;
    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        // A loop that spins would call this without end; stop answering
        // after many calls so the test fails instead of hanging.
        if self.0.fetch_add(1, Ordering::SeqCst) > 10_000 {
            std::future::pending::<()>().await;
        }
        tokio::task::yield_now().await;
        Err(std::io::Error::from_raw_os_error(24))
    }
}

#[test]
fn the_pause_doubles_and_is_capped() {
    let limits = Limits::default();
    assert_eq!(accept_backoff(&limits, 1), Duration::from_millis(5));
    assert_eq!(accept_backoff(&limits, 2), Duration::from_millis(10));
    assert_eq!(accept_backoff(&limits, 9), Duration::from_secs(1));
    assert_eq!(accept_backoff(&limits, u32::MAX), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn accept_errors_back_off_instead_of_spinning() {
    let calls = Arc::new(AtomicUsize::new(0));
    let run = serve(
        "test",
        Exhausted(calls.clone()),
        None,
        Slow(Duration::ZERO),
        limits(),
        tokio::time::sleep(Duration::from_secs(3)),
    );
    run.await;
    let calls = calls.load(Ordering::SeqCst);
    // 5 + 10 + ... + 640 ms, then one a second: about 10 in 3 s.
    assert!((5..=15).contains(&calls), "{calls} accepts in 3 s");
}

async fn plain_server(
    handler: Slow,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve("test", listener, None, handler, limits(), async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// Reads until the server closes; what it sent.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection in time")
        .unwrap_or_default();
    out
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (addr, _stop, _task) = plain_server(Slow(Duration::ZERO)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = until_closed(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!String::from_utf8_lossy(&answer).contains("done"));
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let now = k8s_openapi::jiff::Timestamp::now();
    let (ca, ca_key) = crate::webhook::certs::generate_ca(now).unwrap();
    let certs = crate::webhook::certs::issue(&ca, &ca_key, &["127.0.0.1".into()], 30, now).unwrap();
    let current = Arc::new(crate::webhook::certs::CurrentCert::new(
        certs.certified_key().unwrap(),
    ));
    let tls = TlsAcceptor::from(Arc::new(
        crate::webhook::certs::server_config(current).unwrap(),
    ));
    tokio::spawn(serve(
        "test",
        listener,
        Some(tls),
        Slow(Duration::ZERO),
        limits(),
        std::future::pending(),
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    until_closed(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_refuses_new_connections() {
    let (addr, stop, task) = plain_server(Slow(Duration::from_millis(500))).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !task.is_finished(),
        "serve returned (and the process would exit) with a request in flight"
    );
    let answer = String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("drained")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection after shutdown"
    );
}

/// One request on a fresh connection; the raw answer, once the server
/// closes (or the connection is kept alive past a short wait).
async fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn after_shutdown_it_lingers_answering_with_keep_alive_off_then_refuses() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let linger = Duration::from_secs(2);
    let task = tokio::spawn(serve(
        "test",
        listener,
        None,
        Slow(Duration::ZERO),
        Limits { linger, ..limits() },
        async {
            let _ = stopped.await;
        },
    ));
    // A pooled connection, opened before the shutdown.
    let mut pooled = TcpStream::connect(addr).await.unwrap();
    let before = ask(addr).await.unwrap();
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert!(
        !before.to_ascii_lowercase().contains("connection: close"),
        "{before}"
    );

    stop.send(()).unwrap();
    let stopped_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections, as a Service that has not yet heard still routes
    // them: answered, and told to close.
    let during = ask(addr).await.expect("refused while lingering");
    assert!(during.starts_with("HTTP/1.1 200"), "{during}");
    assert!(
        during.to_ascii_lowercase().contains("connection: close"),
        "{during}"
    );
    // The pooled connection is answered too, and retired by the server.
    pooled
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&until_closed(&mut pooled).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    assert!(!task.is_finished());

    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("drained after the linger")
        .unwrap();
    assert!(stopped_at.elapsed() >= linger, "{:?}", stopped_at.elapsed());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection after the linger"
    );
}
