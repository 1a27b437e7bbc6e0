//! Who a packet names. A socket made by `socket()` names its creator (the
//! `packets` tests); an accepted TCP socket is cloned by the kernel from its
//! listener, in softirq, so it names the process that listened on its port.
//! The script runs in the test's cgroup, to which the daemon is scoped,
//! inside a network namespace of the test's own.
mod common;

use std::time::Duration;

use common::netns::LoopbackNs;
use common::*;

/// Every packet a server's socket on port 8053 sends.
const SERVER_PACKETS: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "server-packets"
spec:
  kprobes:
  - call: "ip_output"
    syscall: false
    args:
    - index: 2
      type: "skb"
    selectors:
    - matchArgs:
      - index: 2
        operator: "SPort"
        values:
        - "8053"
"#;

/// A server on 127.0.0.1:8053 accepts one connection from a forked client
/// and sends it `hello`; prints the server's pid and the client's exit
/// status (0 when it read the greeting).
const ACCEPT_AND_GREET: &str = r#"
import os, socket
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.bind(("127.0.0.1", 8053))
server.listen()
pid = os.fork()
if pid == 0:
    c = socket.create_connection(("127.0.0.1", 8053))
    data = c.recv(16)
    c.close()
    os._exit(0 if data == b"hello" else 1)
conn, _ = server.accept()
conn.sendall(b"hello")
conn.close()
_, status = os.waitpid(pid, 0)
print(os.getpid(), status)
"#;

#[test]
fn packets_of_an_accepted_socket_name_the_listening_process() {
    if !can_run("packets_of_an_accepted_socket_name_the_listening_process") {
        return;
    }
    let ns = LoopbackNs::new();
    let (daemon, cg, _d) = daemon_in_own_cgroup(SERVER_PACKETS);
    let text = ns.run_python(&cg, ACCEPT_AND_GREET, &[]);
    let said: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        said.get(1),
        Some(&"0"),
        "the client read the greeting: {text}"
    );
    let server: u64 = said[0].parse().expect("the server's pid");

    // The greeting (IP 20, TCP 32 with timestamps, `hello`) and the
    // server's FIN and ACKs come from the accepted socket; the SYN-ACK, on
    // kernels that hand the program the listener as its socket, from the
    // listener. Every one names the server.
    let greeting = |k: &serde_json::Value| kprobe_arg(k, "skb_arg")["len"] == 20 + 32 + 5;
    eventually("the greeting", || {
        kprobe_events(&daemon, "ip_output").iter().any(greeting)
    });
    std::thread::sleep(Duration::from_millis(300));
    let sent = kprobe_events(&daemon, "ip_output");
    assert!(sent.len() >= 2, "the greeting and the FIN: {sent:?}");
    let python = resolved("/usr/bin/python3");
    for k in &sent {
        assert_eq!(k["process"]["pid"], server, "the listening process: {k}");
        assert_eq!(k["process"]["binary"], python, "{k}");
        let skb = kprobe_arg(k, "skb_arg");
        assert_eq!(skb["protocol"], "IPPROTO_TCP", "{k}");
        assert_eq!(skb["sport"], 8053, "{k}");
    }
}
