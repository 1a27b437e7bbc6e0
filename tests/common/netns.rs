//! Test "backends": a network namespace of the test's own, joined to the host
//! by a veth pair, with a real HTTP server (IPv4 and IPv6) whose access log
//! the test can read. Only these namespaces and loopback are ever targets.
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const PORT: u16 = 8080;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace of the test's own with only loopback, up; removed
/// on drop.
pub struct LoopbackNs(pub String);

impl LoopbackNs {
    pub fn new() -> LoopbackNs {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let ns = format!("snsr-lo-{}-{n}", std::process::id());
        ip(&["netns", "add", &ns]);
        let ns = LoopbackNs(ns);
        ip(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]);
        ns
    }
}

impl LoopbackNs {
    /// Python running `script` inside this namespace and in `cg`; further
    /// arguments are the script's.
    pub fn python(&self, cg: &super::TestCgroup, script: &str) -> Command {
        let mut c = cg.command("ip");
        c.args(["netns", "exec", &self.0, "/usr/bin/python3", "-c", script]);
        c
    }

    /// Runs `script` with `args` as [`Self::python`] does, to its end; its
    /// standard output. A script that fails fails the test with both of
    /// its outputs.
    pub fn run_python(&self, cg: &super::TestCgroup, script: &str, args: &[&str]) -> String {
        let out = self
            .python(cg, script)
            .args(args)
            .output()
            .expect("running python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python3 failed ({}): {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

impl Drop for LoopbackNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `ip` with `args`, failing the test with its error.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Backend {
    ns: String,
    /// 10.203.K.2 in 10.203.K.0/24
    pub v4: String,
    /// fd00:5e:K::2 in fd00:5e:K::/64
    pub v6: String,
    pub k: u32,
    server: HttpServer,
}

impl Backend {
    pub fn start() -> Backend {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // A /24 per backend, spread by pid so that parallel test binaries differ.
        let k = (pid % 50) * 5 + n % 5 + 1;
        let ns = format!("snsr-{pid}-{n}");
        let (host, peer) = (
            format!("sn{}h{n}", pid % 100_000),
            format!("sn{}b{n}", pid % 100_000),
        );
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("10.203.{k}.1/24"), "dev", &host]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd00:5e:{k}::1/64"),
            "dev",
            &host,
            "nodad",
        ]);
        ip(&["link", "set", &host, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("10.203.{k}.2/24"), "dev", &peer]);
        inside(&[
            "-6",
            "addr",
            "add",
            &format!("fd00:5e:{k}::2/64"),
            "dev",
            &peer,
            "nodad",
        ]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        let mut python = Command::new("ip");
        python.args(["netns", "exec", &ns, "/usr/bin/python3"]);
        let log = std::env::temp_dir().join(format!("{ns}.log"));
        let server = HttpServer::start(python, log, &["--bind", "::"]);
        let b = Backend {
            ns,
            v4: format!("10.203.{k}.2"),
            v6: format!("fd00:5e:{k}::2"),
            k,
            server,
        };
        b.wait_ready();
        b
    }

    fn wait_ready(&self) {
        let addr: SocketAddr = format!("{}:{PORT}", self.v4).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "backend {} did not start",
                self.v4
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `10.203.K.0/24`
    pub fn cidr4(&self) -> String {
        format!("10.203.{}.0/24", self.k)
    }

    pub fn url(&self) -> String {
        format!("http://{}:{PORT}/", self.v4)
    }

    /// Requests the server logged.
    pub fn requests(&self) -> usize {
        self.server.requests()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth pair and its routes; the
        // server's own drop stops it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A python `http.server` on `PORT`, whose access log the test reads.
pub struct HttpServer {
    child: Child,
    log: PathBuf,
}

impl HttpServer {
    /// Runs `python` (python3, started wherever the server belongs) as the
    /// server, with `extra` arguments, and returns once it listens.
    pub fn start(mut python: Command, log: PathBuf, extra: &[&str]) -> HttpServer {
        let mut child = python
            .args(["-u", "-m", "http.server", &PORT.to_string()])
            .args(extra)
            .current_dir("/tmp")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting the HTTP server");
        // It says so once the socket listens.
        let mut first = String::new();
        let out = child.stdout.take().expect("server stdout");
        BufReader::new(out)
            .read_line(&mut first)
            .expect("server output");
        assert!(
            first.starts_with("Serving HTTP"),
            "the HTTP server did not start: {first:?}"
        );
        HttpServer { child, log }
    }

    /// Requests served (the server logs one line per request).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") || l.contains("\"POST "))
            .count()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
