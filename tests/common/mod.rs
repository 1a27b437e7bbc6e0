//! Shared pieces of the end-to-end tests: a cgroup of the test's own, the real
//! daemon started against it, and readers of its JSON export; `netns` holds
//! test backends in network namespaces, `pod` test pods with a network of
//! their own.
#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod pod;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SENSOR: &str = env!("CARGO_BIN_EXE_sensor");

/// The cgroup v2 mount, found the way the daemon finds it (mountinfo): a
/// hybrid host mounts it at `/sys/fs/cgroup/unified`, most nodes at
/// `/sys/fs/cgroup`.
pub fn cgroup2() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        info.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                (f.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(f[4]))
            })
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
    })
    .clone()
}

/// Says that a test skips, on the real stderr: the test harness captures
/// `eprintln!`, which would hide the skip.
fn skip(test: &str, why: &str) -> bool {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    false
}

/// Says that a test skips because this kernel lacks `feature`; the test
/// command counts it as a kernel limit (the kernel matrix runs the test where
/// the feature exists), not a broken setup.
pub fn skip_kernel(test: &str, feature: &str) {
    skip(test, &format!("kernel lacks {feature}"));
}

/// Whether this test can run: root and a cgroup v2 mount. Says why not.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip(test, "needs root to load eBPF programs");
    }
    if !cgroup2().join("cgroup.procs").exists() {
        return skip(test, "no cgroup v2 mount");
    }
    true
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("sensor-test"));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bpffs directory of this test's own for the daemon's pins: never the
/// default, and unloaded on drop, when the test fails too.
pub struct BpfDir(pub PathBuf);

impl BpfDir {
    pub fn new() -> Self {
        BpfDir(PathBuf::from("/sys/fs/bpf").join(unique("sensor-test")))
    }
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
    /// `sensor status` of this directory.
    pub fn status(&self) -> String {
        let out = Command::new(SENSOR)
            .args(["status", "--bpf-dir", self.arg()])
            .output()
            .expect("sensor status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = Command::new(SENSOR)
            .args(["unload", "--bpf-dir", self.arg()])
            .stdout(Stdio::null())
            .status();
    }
}

/// kubelet's parents of a best-effort pod (systemd driver).
pub const KUBEPODS_BESTEFFORT: &str = "kubepods.slice/kubepods-besteffort.slice";

/// A cgroup of this test; every policy the test loads is scoped to it.
pub struct TestCgroup(pub PathBuf, Vec<PathBuf>);

impl TestCgroup {
    pub fn new() -> Self {
        Self::at(&unique("sensor-test"))
    }

    /// A cgroup at `rel` under the cgroup2 root, creating the directories
    /// that are missing (and removing them again on drop).
    pub fn at(rel: &str) -> Self {
        let mut created = Vec::new();
        let mut p = cgroup2();
        let parts: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut i = 0;
        let mut retries = 0;
        while i < parts.len() {
            p.push(parts[i]);
            match std::fs::create_dir(&p) {
                Ok(()) => created.push(p.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                // A parallel test removed a shared parent just now: again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && retries < 10 => {
                    retries += 1;
                    p = cgroup2();
                    created.clear();
                    i = 0;
                    continue;
                }
                Err(e) => panic!("creating cgroup {}: {e}", p.display()),
            }
            i += 1;
        }
        TestCgroup(p, created)
    }

    /// A cgroup named as kubelet (systemd driver) and containerd name a
    /// container's: `kubepods.slice/.../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
    pub fn kubelet(pod_uid: &str, container_id: &str) -> Self {
        Self::kubelet_under("", pod_uid, container_id)
    }

    /// The same layout under `prefix` (relative to the cgroup root), a
    /// node of its own for a test whose daemon judges every pod there.
    pub fn kubelet_under(prefix: &str, pod_uid: &str, container_id: &str) -> Self {
        let u = pod_uid.replace('-', "_");
        Self::at(&format!(
            "{prefix}/{KUBEPODS_BESTEFFORT}/kubepods-besteffort-pod{u}.slice/cri-containerd-{container_id}.scope"
        ))
    }

    /// This cgroup's path relative to the cgroup root.
    pub fn rel(&self) -> String {
        self.0
            .strip_prefix(cgroup2())
            .expect("under the cgroup root")
            .to_string_lossy()
            .into_owned()
    }

    /// A command that joins this cgroup before it execs.
    pub fn command(&self, program: &str) -> Command {
        let procs = std::ffi::CString::new(
            self.0
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .expect("cgroup path has no NUL");
        let mut c = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close) run between
        // fork and exec; the path was allocated before the fork.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    }

    /// Runs `bin` in this cgroup: its exit status, or 128 + the signal that
    /// ended it (137 for SIGKILL), as a shell reports it.
    pub fn exit_code(&self, bin: &str) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let st = self.command(bin).status().expect("running the binary");
        st.code().or(st.signal().map(|s| 128 + s))
    }

    /// Runs `/bin/true` `n` times in a row in this cgroup, from one shell:
    /// a burst of execs.
    pub fn exec_burst(&self, n: usize) {
        let status = self
            .command("/bin/sh")
            .args(["-c", &format!("for i in $(seq {n}); do /bin/true; done")])
            .status()
            .expect("running the burst");
        assert!(status.success(), "the burst: {status:?}");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in pids.lines().filter_map(|l| l.parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of processes this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for dir in self.1.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Kubelet's parents are shared by parallel tests, and the one that
        // made them may end first: whoever ends last removes them.
        let mut up = self.0.parent();
        while let Some(dir) = up.filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kubepods"))
        }) {
            let _ = std::fs::remove_dir(dir);
            up = dir.parent();
        }
    }
}

/// errno of a TCP connect to `addr`:`port` made by `python` (python3,
/// started wherever the connect should come from); "0" when it connected.
pub fn connect_errno(mut python: Command, family: &str, addr: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns = socket.socket(socket.{family}, socket.SOCK_STREAM)\ns.settimeout(5)\nprint(s.connect_ex(('{addr}', {port})))"
    );
    let out = python
        .args(["-c", &script])
        .output()
        .expect("running python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh pod uid and container id.
pub fn pod_ids() -> (String, String) {
    let n = SEQ.fetch_add(1, Ordering::Relaxed) as u64;
    let pid = std::process::id() as u64;
    let uid = format!("{pid:08x}-0000-4000-8000-{n:012x}");
    let container = format!("{:016x}{:016x}{:016x}{:016x}", pid, n, pid ^ 0x5e5, n + 7);
    (uid, container)
}

/// Whether `sensor probe` says `value` on the line of `what`: what this
/// kernel can enforce (a test of a feature some kernels lack checks it).
pub fn probe_says(what: &str, value: &str) -> bool {
    let out = Command::new(SENSOR)
        .arg("probe")
        .output()
        .expect("running sensor probe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with(what) && l.contains(value))
}

/// The sensor daemon, running with a JSON export file.
pub struct Daemon {
    pub child: Child,
    pub events: PathBuf,
    pub program_ids: Vec<u32>,
    /// The "sensor ready" log line.
    pub ready: String,
    /// The log lines before it.
    pub startup: Vec<String>,
    /// Where its health and metrics servers listen.
    pub health: Option<std::net::SocketAddr>,
    pub metrics: Option<std::net::SocketAddr>,
    _dir: TempDir,
    /// Pins of this daemon alone (when the test gave no --bpf-dir).
    _bpf: Option<BpfDir>,
    stderr: mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts `sensor run` with `args` plus an export file, and waits until it
    /// says it is ready.
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_env(args, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_under(&[], args, env)
    }

    /// As [`Daemon::start_with_env`], run by `wrapper` (a command that
    /// execs its last argument, the sensor, with the rest: `setpriv ...`).
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = TempDir::new();
        let events = dir.path().join("events.json");
        // An explicit, empty policy directory: the daemon must never pick up
        // policies the test did not give it (and scope).
        let no_policies = dir.path().join("no-policies");
        std::fs::create_dir(&no_policies).expect("policy dir");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(SENSOR);
                c
            }
            None => Command::new(SENSOR),
        };
        cmd.arg("run")
            .args(["--output", "none", "--export-file"])
            .arg(&events);
        if !args.contains(&"--policy-dir") {
            cmd.arg("--policy-dir").arg(&no_policies);
        }
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.path().join("state"));
        }
        if !args.contains(&"--server-address") {
            let sock = dir.path().join("api.sock");
            cmd.arg("--server-address")
                .arg(format!("unix://{}", sock.display()));
        }
        // Ports of its own: never the defaults a sensor on the machine (or
        // another test's) holds.
        for flag in ["--health-server-address", "--metrics-server"] {
            if !args.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        let bpf = (!args.contains(&"--bpf-dir")).then(BpfDir::new);
        if let Some(b) = &bpf {
            cmd.args(["--bpf-dir", b.arg()]);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the sensor");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[sensor] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut startup = Vec::new();
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("sensor ready") => break line,
                Ok(line) => startup.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the sensor did not become ready: {:?}", child.wait());
                }
            }
        };
        let listening = |what: &str| {
            startup
                .iter()
                .find(|l| l.contains(what))
                .and_then(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                })
                .and_then(|a| a.parse().ok())
        };
        Daemon {
            health: listening("health server listening"),
            metrics: listening("metrics server listening"),
            child,
            events,
            program_ids: parse_ids(&ready, "programs"),
            ready,
            startup,
            _dir: dir,
            _bpf: bpf,
            stderr: rx,
        }
    }

    /// Starts the daemon against a fake API server as node `node`, plus `args`.
    pub fn with_api(kubeconfig: &Path, node: &str, args: &[&str]) -> Daemon {
        let kc = kubeconfig.to_str().expect("utf-8 path");
        let mut all = vec!["--kubeconfig", kc, "--node-name", node];
        all.extend_from_slice(args);
        Daemon::start(&all)
    }

    /// Every event exported so far (complete lines only: the daemon may be
    /// writing the last one).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("each export line is JSON"))
            .collect()
    }

    /// The export file's complete lines parsed by protobuf's own JSON
    /// parser with the project's protos, strictly (an unknown field fails):
    /// the event kinds seen. Panics naming the line that does not parse.
    pub fn strict_proto_kinds(&self) -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        strict_proto_kinds(complete)
    }

    /// Waits up to 10 s for an event that `pred` accepts.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!("no {what} event within 10 s; events: {:#?}", self.events());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("waiting for the sensor")
    }

    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Scrapes the daemon's `/metrics`.
    pub fn scrape(&self) -> Metrics {
        let addr = self.metrics.expect("the daemon serves metrics");
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        Metrics(body)
    }

    /// Log lines received so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The ids in `name=[1, 2, ...]` of a log line.
pub fn parse_ids(line: &str, name: &str) -> Vec<u32> {
    let key = format!("{name}=[");
    let Some(start) = line.find(&key) else {
        return Vec::new();
    };
    let rest = &line[start + key.len()..];
    let end = rest.find(']').unwrap_or(0);
    rest[..end]
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The event body under `key` (`process_exec`, ...), if this is such an event.
pub fn body<'a>(e: &'a Value, key: &str) -> Option<&'a Value> {
    e.get(key)
}

/// Whether `e` is a `key` event whose process binary is `binary`.
pub fn is(e: &Value, key: &str, binary: &str) -> bool {
    body(e, key).is_some_and(|b| b["process"]["binary"] == binary)
}

/// Whether `e` is a `key` event of an exec hook about running `binary`:
/// its `linux_binprm` argument (the process is the caller, the image
/// before the exec, as in Tetragon).
pub fn execs(e: &Value, key: &str, binary: &str) -> bool {
    body(e, key).is_some_and(|b| b["args"][0]["linux_binprm_arg"]["path"] == binary)
}

/// The path `p` as the kernel resolves it (symlinks followed).
pub fn resolved(p: &str) -> String {
    std::fs::canonicalize(p)
        .expect("path exists")
        .to_string_lossy()
        .into_owned()
}

/// A policy file written into `dir`.
pub fn policy_file(dir: &TempDir, name: &str, yaml: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, yaml).expect("writing a policy");
    p.to_string_lossy().into_owned()
}

/// A `TracingPolicy` (or another `kind`) with one kprobe on `call` whose
/// argument 0 has type `arg`, and the given selector list (YAML lines
/// indented for it).
pub fn kprobe_policy(kind: &str, metadata: &str, call: &str, arg: &str, selectors: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata: {metadata}\nspec:\n  kprobes:\n  - call: {call}\n    syscall: false\n    args: [{{index: 0, type: {arg}}}]\n    selectors:\n{selectors}"
    )
}

/// `sensor quarantine VERB POD` (`apply` or `release`) against the API
/// server of `kubeconfig`; it must succeed.
pub fn quarantine_by_hand(kubeconfig: &str, verb: &str, pod: &str) {
    let out = Command::new(SENSOR)
        .args(["quarantine", verb, pod, "--kubeconfig", kubeconfig])
        .output()
        .expect("running sensor quarantine");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `TracingPolicy` named `name` that kills `bin` at exec.
pub fn kill_policy(name: &str, bin: &str) -> String {
    format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    selectors:\n    - matchBinaries:\n      - operator: In\n        values: [\"{bin}\"]\n      matchActions:\n      - action: Sigkill\n"
    )
}

/// A copy of `/bin/true` named `name` in `dir`: a binary for policies to
/// act on that nothing else runs.
pub fn copy_true(dir: &TempDir, name: &str) -> String {
    let p = dir.path().join(name);
    std::fs::copy("/bin/true", &p).expect("copying /bin/true");
    p.to_string_lossy().into_owned()
}

/// Polls `f` every 20 ms until it returns true, for up to 10 s.
/// The daemon with `policy_yaml`, enforcing in a cgroup of the test's own
/// (returned with the directory holding the policy).
pub fn daemon_in_own_cgroup(policy_yaml: &str) -> (Daemon, TestCgroup, TempDir) {
    let dir = TempDir::new();
    let policy = policy_file(&dir, "p.yaml", policy_yaml);
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);
    (daemon, cg, dir)
}

/// The daemon's `process_kprobe` events of `function` so far.
pub fn kprobe_events(daemon: &Daemon, function: &str) -> Vec<Value> {
    daemon
        .events()
        .into_iter()
        .filter_map(|e| body(&e, "process_kprobe").cloned())
        .filter(|k| k["function_name"] == function)
        .collect()
}

/// The first argument of kind `kind` (`sock_arg`, `skb_arg`, `int_arg`) of
/// a `process_kprobe` body; null when it has none.
pub fn kprobe_arg<'a>(k: &'a Value, kind: &str) -> &'a Value {
    k["args"]
        .as_array()
        .and_then(|a| a.iter().find_map(|x| x.get(kind)))
        .unwrap_or(&Value::Null)
}

pub fn eventually(what: &str, f: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(10), f)
}

/// Polls `f` every 20 ms until it returns true, for up to `limit`.
pub fn eventually_within(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The repository's `policies/` directory.
pub fn shipped(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// GET `path` from `addr` over HTTP/1.0: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    (status, body.to_string())
}

/// A scrape in the Prometheus text format.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of the samples of `name` whose labels include every
    /// `key="value"` of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (n, rest) = match series.split_once('{') {
                    Some((n, rest)) => (n, rest),
                    None => (series, ""),
                };
                (n == name).then_some((rest, value))
            })
            .filter(|(rest, _)| {
                labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }
}

/// JSON event lines (each ending in a newline) parsed by protobuf's own
/// JSON parser with the project's protos, strictly (an unknown field
/// fails): the event kinds seen. Panics naming the line that does not
/// parse.
pub fn strict_proto_kinds(lines: &str) -> std::collections::BTreeSet<String> {
    let out = TempDir::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/grpc/strict.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(out.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the strict parser");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(lines.as_bytes())
        .expect("writing the events");
    drop(stdin);
    let done = child.wait_with_output().expect("the strict parser");
    assert!(
        done.status.success(),
        "an event the protos refuse: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    String::from_utf8_lossy(&done.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
