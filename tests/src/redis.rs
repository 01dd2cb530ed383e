//! A real `redis-server` per test, on a free loopback port with persistence off.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a loopback port, persistence off; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    pub tls_port: Option<u16>,
}

impl RedisServer {
    /// Starts on a free port.
    pub fn start() -> RedisServer {
        RedisServer::launch_on_free_ports(|| {
            let [port] = free_ports();
            (port, None, Vec::new())
        })
    }

    /// Starts on `port` (e.g. the port of a server killed earlier) and waits for `PING`.
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::launch(port, None, &[]).unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// Starts with TLS on a second port ([`Self::tls_url`]) with the PEM `cert`/`key`, asking
    /// clients for a certificate signed by `ca` but not requiring one (the plain port stays
    /// for the readiness `PING`).
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        RedisServer::launch_on_free_ports(|| {
            let [port, tls_port] = free_ports();
            let mut args =
                vec!["--tls-port".to_owned(), tls_port.to_string(), "--tls-auth-clients".into(), "optional".into()];
            for (flag, path) in [("--tls-cert-file", cert), ("--tls-key-file", key), ("--tls-ca-cert-file", ca)] {
                args.extend([flag.to_owned(), path.display().to_string()]);
            }
            (port, Some(tls_port), args)
        })
    }

    /// Launches on the ports `pick` chooses, picking again when the server exits before
    /// answering: a free port can be taken by another process between the pick and the bind.
    fn launch_on_free_ports(pick: impl Fn() -> (u16, Option<u16>, Vec<String>)) -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let (port, tls_port, args) = pick();
            match RedisServer::launch(port, tls_port, &args) {
                Ok(server) => return server,
                Err(reason) => failures.push(reason),
            }
        }
        panic!("redis-server did not start: {}", failures.join("; "))
    }

    fn launch(port: u16, tls_port: Option<u16>, extra: &[String]) -> Result<RedisServer, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        let mut server = RedisServer { child, port, tls_port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.pings() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server on port {port} exited ({status}) before answering PING"));
            }
            if Instant::now() >= deadline {
                return Err(format!("redis-server on port {port} did not answer PING within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://localhost:<tls port>/` of a server started with [`Self::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|port| format!("rediss://localhost:{port}/"))
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL, like a crash) and waits until it is gone.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

/// `N` distinct free loopback ports. Redis refuses `--port 0`, so ports are found by binding
/// `127.0.0.1:0` — all at once, so that two picks never return the same port — and releasing
/// them just before the start.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").expect("free port")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound listener").port())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
