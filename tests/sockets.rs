//! A TCP socket's life past its connect, with Tetragon's own examples as
//! shipped (comments left out): `tcp-connect.yaml` and
//! `tcp-connect-with-selectors.yaml` (connect, send, close),
//! `tcp-listen.yaml` (listen, with its socket-tracking hooks) and
//! `tcp-accept.yaml` (a socket's creation, its accepted children, state
//! changes and release). Clients run in the test's cgroup, to which each
//! daemon is scoped.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::netns::{Backend, LoopbackNs, PORT};
use common::*;

const TCP_CONNECT: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "connect"
spec:
  kprobes:
  - call: "tcp_connect"
    syscall: false
    args:
    - index: 0
      type: "sock"
  - call: "tcp_close"
    syscall: false
    args:
    - index: 0
      type: "sock"
  - call: "tcp_sendmsg"
    syscall: false
    args:
    - index: 0
      type: "sock"
    - index: 2
      type: int
"#;

const TCP_CONNECT_WITH_SELECTORS: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "connect"
spec:
  kprobes:
  - call: "tcp_connect"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "DAddr"
        values:
        - "127.0.0.1/8"
        - "192.168.0.0/16"
  - call: "tcp_close"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "DAddr"
        values:
        - "127.0.0.1/8"
        - "192.168.0.0/16"
  - call: "tcp_sendmsg"
    syscall: false
    args:
    - index: 0
      type: "sock"
    - index: 2
      type: int
    selectors:
    - matchArgs:
      - index: 0
        operator: "DAddr"
        values:
        - "127.0.0.1/8"
        - "192.168.0.0/16"
"#;

const TCP_LISTEN: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "tcp-listen"
spec:
  kprobes:
  - call: "sk_alloc"
    syscall: false
    return: true
    args:
    - index: 1
      type: int
      label: "family"
    returnArg:
      index: 0
      type: "sock"
    returnArgAction: "TrackSock"
    selectors:
    - matchArgs:
      - index: 1
        operator: "Equal"
        values:
        - "2"
        - "10"
      matchActions:
      - action: "NoPost"
  - call: "__sk_free"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Family"
        values:
        - "2"
        - "10"
      matchActions:
      - action: "UntrackSock"
        argSock: 0
      - action: "NoPost"
  - call: "inet_csk_listen_start"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "SPort"
        values:
        - "1337"
        - "31337"
"#;

/// Connects to `host:port`, sends an HTTP request (by `sendmsg` of two
/// buffers, 18 bytes, or by `write` of it whole), prints the local port,
/// reads the answer and closes.
const TCP_ACCEPT: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "accept"
spec:
  kprobes:
  - call: "sk_alloc"
    syscall: false
    return: true
    args:
    - index: 1
      type: int
      label: "Family"
    returnArg:
      index: 0
      type: sock
    returnArgAction: TrackSock
    selectors:
    - matchArgs:
      - index: 1
        operator: "Equal"
        values:
        - "2"
  - call: "__sk_free"
    syscall: false
    args:
    - index: 0
      type: sock
    selectors:
    - matchArgs:
      - index: 0
        operator: "Family"
        values:
        - "AF_INET"
    - matchActions:
      - action: UntrackSock
        argSock: 0
  - call: "tcp_set_state"
    syscall: false
    args:
    - index: 0
      type: "sock"
    - index: 1
      type: "int"
      label: "state"
    selectors:
    - matchArgs:
      - index: 0
        operator: "State"
        values:
        - "TCP_SYN_RECV"
      - index: 1
        operator: "Equal"
        values:
        - "1"
  - call: "tcp_close"
    syscall: false
    args:
    - index: 0
      type: "sock"
    selectors:
    - matchArgs:
      - index: 0
        operator: "DAddr"
        values:
        - "127.0.0.1/32"
  - call: "tcp_create_openreq_child"
    syscall: false
    return: true
    args:
    - index: 0
      type: "sock"
    returnArg:
      index: 0
      type: sock
    returnArgAction: TrackSock
"#;

const CLIENT: &str = r#"
import os, socket, sys
host, port, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=5)
if how == "sendmsg":
    s.sendmsg([b"GET / HTTP/1.0\r\n", b"\r\n"])
else:
    os.write(s.fileno(), b"GET / HTTP/1.0\r\n\r\n")
print(s.getsockname()[1], flush=True)
s.recv(65536)
s.close()
"#;

/// Runs the client in the cgroup; returns its local port.
fn client(cg: &TestCgroup, host: &str, port: u16, how: &str) -> u64 {
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", CLIENT, host, &port.to_string(), how])
        .output()
        .expect("running the client");
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the client prints its port")
}

/// A one-shot server on 127.0.0.1 that answers whatever it reads.
fn loopback_server() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1");
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut buf = [0u8; 256];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        }
    });
    (port, t)
}

fn sock(k: &serde_json::Value) -> &serde_json::Value {
    &k["args"][0]["sock_arg"]
}

#[test]
fn tetragons_tcp_connect_example_reports_connect_send_and_close() {
    if !can_run("tetragons_tcp_connect_example_reports_connect_send_and_close") {
        return;
    }
    let backend = Backend::start();
    let (daemon, cg, _d) = daemon_in_own_cgroup(TCP_CONNECT);
    let sport = client(&cg, &backend.v4, PORT, "sendmsg");
    assert_eq!(backend.requests(), 1);
    let python = resolved("/usr/bin/python3");
    let ours = |k: &serde_json::Value| {
        k["process"]["binary"] == python.as_str() && sock(k)["daddr"] == backend.v4.as_str()
    };
    eventually("connect, send and close events", || {
        ["tcp_connect", "tcp_sendmsg", "tcp_close"]
            .iter()
            .all(|f| kprobe_events(&daemon, f).iter().any(ours))
    });
    let connect = kprobe_events(&daemon, "tcp_connect");
    let connect = connect.iter().find(|k| ours(k)).unwrap();
    assert_eq!(sock(connect)["dport"], PORT);

    let sends = kprobe_events(&daemon, "tcp_sendmsg");
    let send = sends.iter().find(|k| ours(k)).unwrap();
    let s = sock(send);
    assert_eq!(s["family"], "AF_INET");
    assert_eq!(s["type"], "SOCK_STREAM");
    assert_eq!(s["protocol"], "IPPROTO_TCP");
    assert_eq!(s["dport"], PORT);
    assert_eq!(s["sport"], sport, "the source port the kernel chose");
    assert_eq!(s["saddr"], format!("10.203.{}.1", backend.k));
    assert_eq!(s["state"], "TCP_ESTABLISHED");
    assert_eq!(
        send["args"][1]["int_arg"], 18,
        "two buffers of 16 and 2 bytes"
    );
    assert_eq!(send["action"], "KPROBE_ACTION_POST");
    // The client's writes to its stdout pipe are not sends on a socket.
    assert!(sends
        .iter()
        .all(|k| sock(k)["daddr"] == backend.v4.as_str()));

    let closes = kprobe_events(&daemon, "tcp_close");
    let close = closes.iter().find(|k| ours(k)).unwrap();
    assert_eq!(sock(close)["sport"], sport);
    assert_eq!(sock(close)["dport"], PORT);
    assert_eq!(sock(close)["saddr"], format!("10.203.{}.1", backend.k));
    // Open, or half-closed by the server that answered first.
    let state = sock(close)["state"].as_str().unwrap_or_default();
    assert!(
        ["TCP_ESTABLISHED", "TCP_CLOSE_WAIT"].contains(&state),
        "{close}"
    );
    assert!(
        close["parent"]["exec_id"].is_string(),
        "the closing process's lineage"
    );
}

#[test]
fn tetragons_tcp_connect_with_selectors_example_reports_loopback_only() {
    if !can_run("tetragons_tcp_connect_with_selectors_example_reports_loopback_only") {
        return;
    }
    let backend = Backend::start();
    let (daemon, cg, _d) = daemon_in_own_cgroup(TCP_CONNECT_WITH_SELECTORS);
    // Outside 127.0.0.0/8 and 192.168.0.0/16: nothing.
    client(&cg, &backend.v4, PORT, "write");
    let (port, server) = loopback_server();
    let sport = client(&cg, "127.0.0.1", port, "write");
    server.join().unwrap();
    let to_loopback = |k: &serde_json::Value| sock(k)["daddr"] == "127.0.0.1";
    eventually("the loopback connection's three events", || {
        ["tcp_connect", "tcp_sendmsg", "tcp_close"]
            .iter()
            .all(|f| kprobe_events(&daemon, f).iter().any(to_loopback))
    });
    let send = kprobe_events(&daemon, "tcp_sendmsg");
    let send = send.iter().find(|k| to_loopback(k)).unwrap();
    assert_eq!(send["args"][1]["int_arg"], 18, "one write of 18 bytes");
    assert_eq!(sock(send)["sport"], sport);
    assert_eq!(sock(send)["dport"], port);
    std::thread::sleep(Duration::from_millis(500));
    let all: Vec<_> = ["tcp_connect", "tcp_sendmsg", "tcp_close"]
        .iter()
        .flat_map(|f| kprobe_events(&daemon, f))
        .collect();
    assert!(
        all.iter().all(to_loopback),
        "only loopback connections posted: {all:?}"
    );
}

#[test]
fn tetragons_tcp_listen_example_reports_listens_on_its_ports() {
    if !can_run("tetragons_tcp_listen_example_reports_listens_on_its_ports") {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(TCP_LISTEN);
    // Three listens in a namespace of the test's own (no port is taken
    // there): IPv4 31337 and IPv6 1337 match SPort, 8081 does not.
    let script = r#"
import socket
for family, addr, port in [(socket.AF_INET, "0.0.0.0", 8081), (socket.AF_INET, "0.0.0.0", 31337), (socket.AF_INET6, "::", 1337)]:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((addr, port))
    s.listen()
    s.close()
"#;
    ns.run_python(&cg, script, &[]);
    eventually("two listen events", || {
        kprobe_events(&daemon, "inet_csk_listen_start").len() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let listens = kprobe_events(&daemon, "inet_csk_listen_start");
    let mut seen: Vec<(String, u64)> = listens
        .iter()
        .map(|k| {
            (
                sock(k)["family"].as_str().unwrap_or_default().to_string(),
                sock(k)["sport"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("AF_INET".to_string(), 31337),
            ("AF_INET6".to_string(), 1337)
        ],
        "{listens:?}"
    );
    let v4 = listens.iter().find(|k| sock(k)["sport"] == 31337).unwrap();
    assert_eq!(sock(v4)["saddr"], "0.0.0.0");
    assert_eq!(sock(v4)["protocol"], "IPPROTO_TCP");
    // As Tetragon's kprobe reads it at the call: not listening yet.
    assert_eq!(sock(v4)["state"], "TCP_CLOSE");
    assert_eq!(
        v4["process"]["binary"],
        resolved("/usr/bin/python3"),
        "the listening process"
    );
    // The tracking hooks post nothing.
    assert!(kprobe_events(&daemon, "sk_alloc").is_empty());
    assert!(kprobe_events(&daemon, "__sk_free").is_empty());
}

#[test]
fn sigkill_on_tcp_sendmsg_kills_the_sender_before_the_call_returns() {
    if !can_run("sigkill_on_tcp_sendmsg_kills_the_sender_before_the_call_returns") {
        return;
    }
    let backend = Backend::start();
    let policy = format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: kill-sender}}
spec:
  kprobes:
  - call: tcp_sendmsg
    syscall: false
    args: [{{index: 0, type: sock}}, {{index: 2, type: int}}]
    selectors:
    - matchArgs: [{{index: 0, operator: DAddr, values: [{}]}}]
      matchActions: [{{action: Sigkill}}]
",
        backend.cidr4()
    );
    let (daemon, cg, _d) = daemon_in_own_cgroup(&policy);
    // The connect is allowed; the first send kills the client: it prints
    // nothing after it.
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", CLIENT, &backend.v4, &PORT.to_string(), "write"])
        .output()
        .expect("running the client");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert!(out.stdout.is_empty(), "killed before its next line");
    let e = daemon.wait_for("the kill event", |e| {
        body(e, "process_kprobe").is_some_and(|k| k["function_name"] == "tcp_sendmsg")
    });
    assert_eq!(e["process_kprobe"]["action"], "KPROBE_ACTION_SIGKILL");
    assert_eq!(e["process_kprobe"]["args"][1]["int_arg"], 18);
    // Another destination is not the policy's: the same client lives.
    let (port, server) = loopback_server();
    client(&cg, "127.0.0.1", port, "write");
    server.join().unwrap();
}

#[test]
fn tetragons_tcp_accept_example_reports_sockets_children_and_state_changes() {
    if !can_run("tetragons_tcp_accept_example_reports_sockets_children_and_state_changes") {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(TCP_ACCEPT);
    // One listener on 127.0.0.1:8080 in a namespace of the test's own, and
    // three connections to it, each accepted, used and closed.
    let script = r#"
import socket
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.bind(("127.0.0.1", 8080))
l.listen()
ports = []
for _ in range(3):
    c = socket.create_connection(("127.0.0.1", 8080))
    a, _ = l.accept()
    c.sendall(b"x")
    a.recv(1)
    ports.append(c.getsockname()[1])
    c.close()
    a.close()
l.close()
print(" ".join(map(str, ports)))
"#;
    let out = ns.run_python(&cg, script, &[]);
    let ports: Vec<u64> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(ports.len(), 3, "{out:?}");
    eventually("every release reported", || {
        kprobe_events(&daemon, "__sk_free").len() >= 7
            && kprobe_events(&daemon, "tcp_close").len() >= 6
    });
    std::thread::sleep(Duration::from_millis(500));
    let python = resolved("/usr/bin/python3");

    // sk_alloc: the listener and the three clients (an accepted socket is
    // cloned, not allocated), with the family asked for and the new socket.
    let allocs = kprobe_events(&daemon, "sk_alloc");
    assert_eq!(allocs.len(), 4, "{allocs:?}");
    for k in &allocs {
        assert_eq!(k["args"][0]["int_arg"], 2, "{k}");
        let ret = &k["return"]["sock_arg"];
        assert_eq!(ret["family"], "AF_INET", "{k}");
        assert_eq!(ret["protocol"], "IPPROTO_TCP", "{k}");
        assert_eq!(ret["state"], "TCP_CLOSE", "{k}");
        assert_eq!(k["process"]["binary"], python);
    }
    // __sk_free: every socket once (its second selector matches all): the
    // listener, still listening, the clients and the accepted sockets.
    let frees = kprobe_events(&daemon, "__sk_free");
    assert_eq!(frees.len(), 7, "{frees:?}");
    let listening = |k: &&serde_json::Value| sock(k)["state"] == "TCP_LISTEN";
    assert_eq!(frees.iter().filter(listening).count(), 1, "{frees:?}");
    // tcp_close to 127.0.0.1: the clients and the accepted sockets, not
    // the listener (no destination).
    let closes = kprobe_events(&daemon, "tcp_close");
    assert_eq!(closes.len(), 6, "{closes:?}");
    let mut to: Vec<u64> = closes
        .iter()
        .map(|k| sock(k)["dport"].as_u64().unwrap_or(0))
        .collect();
    to.sort();
    let mut expected: Vec<u64> = ports.iter().copied().chain([8080; 3]).collect();
    expected.sort();
    assert_eq!(to, expected, "{closes:?}");

    // The handshake completes in softirq; each change names the socket's
    // owner, the listening process (see the next test).
    let children = kprobe_events(&daemon, "tcp_create_openreq_child");
    assert_eq!(children.len(), 3, "a child per connection: {children:?}");
    for k in &children {
        assert_eq!(sock(k)["state"], "TCP_LISTEN", "the listener: {k}");
        assert_eq!(sock(k)["sport"], 8080, "{k}");
        assert_eq!(sock(k)["saddr"], "127.0.0.1", "{k}");
        let ret = &k["return"]["sock_arg"];
        assert_eq!(ret["state"], "TCP_SYN_RECV", "the child: {k}");
        assert_eq!(ret["sport"], 8080, "{k}");
    }
    let established = kprobe_events(&daemon, "tcp_set_state");
    assert_eq!(
        established.len(),
        3,
        "an accept per connection: {established:?}"
    );
    for k in &established {
        assert_eq!(sock(k)["state"], "TCP_SYN_RECV", "{k}");
        assert_eq!(k["args"][1]["int_arg"], 1, "to TCP_ESTABLISHED: {k}");
        assert_eq!(sock(k)["sport"], 8080, "the server side: {k}");
        let peer = sock(k)["dport"].as_u64().unwrap_or(0);
        assert!(ports.contains(&peer), "a client's port: {k}");
    }
}

/// `tcp-accept.yaml`'s accept hooks alone.
const ACCEPTS: &str = "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: accepts}
spec:
  kprobes:
  - call: tcp_set_state
    syscall: false
    args: [{index: 0, type: sock}, {index: 1, type: int}]
    selectors:
    - matchArgs:
      - {index: 0, operator: State, values: [TCP_SYN_RECV]}
      - {index: 1, operator: Equal, values: [\"1\"]}
  - call: tcp_create_openreq_child
    syscall: false
    args: [{index: 0, type: sock}]
";

#[test]
fn an_accept_made_in_another_tasks_context_names_the_listening_process() {
    if !can_run("an_accept_made_in_another_tasks_context_names_the_listening_process") {
        return;
    }
    use std::io::BufRead;
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(ACCEPTS);
    // The server, in the test's cgroup, accepts three connections.
    let server_script = r#"
import socket
l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l.bind(("127.0.0.1", 8080))
l.listen()
print("ready", flush=True)
for _ in range(3):
    a, _ = l.accept()
    a.recv(1)
    a.close()
l.close()
"#;
    let mut server = ns
        .python(&cg, server_script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the server");
    let mut ready = String::new();
    std::io::BufReader::new(server.stdout.take().expect("its stdout"))
        .read_line(&mut ready)
        .expect("reading the server");
    assert_eq!(ready.trim(), "ready");
    // The clients run outside the test's cgroup, so out of the policy's
    // scope; on loopback the server's side of each handshake runs in
    // their context, not the server's.
    let clients = r#"
import socket
for _ in range(3):
    c = socket.create_connection(("127.0.0.1", 8080))
    c.sendall(b"x")
    c.close()
"#;
    let st = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "/usr/bin/python3", "-c", clients])
        .status()
        .expect("running the clients");
    assert!(st.success());
    assert!(server.wait().expect("the server").success());
    let accepts = || kprobe_events(&daemon, "tcp_set_state");
    eventually("three accepts", || accepts().len() >= 3);
    let children = || kprobe_events(&daemon, "tcp_create_openreq_child");
    eventually("three children", || children().len() >= 3);
    std::thread::sleep(Duration::from_millis(500));
    let pid = u64::from(server.id());
    for k in accepts().iter().chain(children().iter()) {
        assert_eq!(k["process"]["pid"], pid, "the listening process: {k}");
        assert_eq!(sock(k)["sport"], 8080, "{k}");
    }
    assert_eq!(accepts().len(), 3);
    assert_eq!(children().len(), 3);
}
