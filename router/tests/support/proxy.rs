//! A TCP proxy on `127.0.0.1:0` that can cut every connection at once, as a crashed host or a
//! broken network would, and later let connections through again (possibly to a new upstream).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct State {
    up: AtomicBool,
    upstream: Mutex<SocketAddr>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Proxy {
    pub url: String,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Proxy {
    /// Forwards to `upstream` (an `http://host:port` URL).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            upstream: Mutex::new(parse(upstream)),
            connections: Mutex::default(),
        });
        let accepting = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accepting.up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let upstream = *lock(&accepting.upstream);
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                lock(&accepting.connections).push(connection);
            }
        });
        Proxy { url, state, accept }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        for connection in lock(&self.state.connections).drain(..) {
            connection.abort();
        }
    }

    /// Accepts connections again, forwarding to `upstream` from now on.
    pub fn restore(&self, upstream: &str) {
        *lock(&self.state.upstream) = parse(upstream);
        self.state.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

fn parse(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().expect("upstream address")
}
