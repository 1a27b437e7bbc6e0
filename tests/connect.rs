//! Network sensing and the connect reflex, against real network namespaces:
//! the client runs in the test's cgroup, the backend in a namespace of the
//! test's own.
mod common;

use std::process::Command;

use common::netns::{Backend, PORT};
use common::*;

fn tcp_policy(name: &str, selector: &str) -> String {
    kprobe_policy(
        "TracingPolicy",
        &format!("{{name: {name}}}"),
        "tcp_connect",
        "sock",
        selector,
    )
}

/// A daemon with one policy, scoped to a fresh cgroup.
fn daemon_with(policy_yaml: &str, extra: &[&str]) -> (Daemon, TestCgroup, TempDir) {
    let dir = TempDir::new();
    let policy = policy_file(&dir, "p.yaml", policy_yaml);
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let mut args = vec!["--policy", &policy, "--enforce-cgroup", &scope];
    args.extend_from_slice(extra);
    (Daemon::start(&args), cg, dir)
}

fn curl(cg: &TestCgroup, url: &str) -> Option<i32> {
    cg.command("/bin/sh")
        .args([
            "-c",
            &format!("curl -s -o /dev/null --max-time 5 -g '{url}'; exit $?"),
        ])
        .status()
        .unwrap()
        .code()
}

/// errno of a connect from the cgroup to the backend port (0 = connected).
fn connect_errno(cg: &TestCgroup, family: &str, addr: &str) -> String {
    common::connect_errno(cg.command("/usr/bin/python3"), family, addr, PORT)
}

fn sock(e: &serde_json::Value) -> &serde_json::Value {
    &e["process_kprobe"]["args"][0]["sock_arg"]
}

#[test]
fn post_reports_the_backend_and_lets_the_request_through() {
    if !can_run("post_reports_the_backend_and_lets_the_request_through") {
        return;
    }
    let backend = Backend::start();
    let curl_bin = resolved("/usr/bin/curl");
    let (daemon, cg, _d) = daemon_with(
        &tcp_policy(
            "watch-backend",
            &format!(
                "    - matchBinaries: [{{operator: In, values: [\"{curl_bin}\"]}}]\n      matchArgs: [{{index: 0, operator: DAddr, values: [{}]}}]\n",
                backend.v4
            ),
        ),
        &[],
    );
    // Another binary connecting to the same backend is not curl: no event.
    assert_eq!(connect_errno(&cg, "AF_INET", &backend.v4), "0");
    assert_eq!(curl(&cg, &backend.url()), Some(0));
    assert_eq!(backend.requests(), 1);
    let e = daemon.wait_for("connect event", |e| is(e, "process_kprobe", &curl_bin));
    let hits = daemon
        .events()
        .iter()
        .filter(|e| body(e, "process_kprobe").is_some())
        .count();
    assert_eq!(hits, 1, "only curl's connect matched matchBinaries");
    let s = sock(&e);
    assert_eq!(s["daddr"], backend.v4);
    assert_eq!(s["dport"], PORT);
    assert_eq!(s["family"], "AF_INET");
    assert_eq!(s["protocol"], "IPPROTO_TCP");
    assert_eq!(s["type"], "SOCK_STREAM");
    assert_eq!(e["process_kprobe"]["function_name"], "tcp_connect");
    assert_eq!(e["process_kprobe"]["action"], "KPROBE_ACTION_POST");
    assert!(
        e["process_kprobe"]["parent"]["exec_id"].is_string(),
        "lineage attached"
    );
}

#[test]
fn override_denies_the_cidr_with_its_errno_and_nothing_else() {
    if !can_run("override_denies_the_cidr_with_its_errno_and_nothing_else") {
        return;
    }
    let (denied, other) = (Backend::start(), Backend::start());
    let policy = |errno: i32| {
        tcp_policy("deny-backend", &format!(
            "    - matchArgs: [{{index: 0, operator: DAddr, values: [{}]}}]\n      matchActions: [{{action: Override, argError: {errno}}}]\n",
            denied.cidr4()
        ))
    };
    // Without bpf_set_retval a denied connect can only fail with EPERM: a
    // policy asking for another errno is refused at load, with the reason.
    let any_errno = probe_says("connect Override", "any errno");
    if !any_errno {
        let dir = TempDir::new();
        let file = policy_file(&dir, "p.yaml", &policy(-111));
        let out = Command::new(SENSOR)
            .args(["run", "--policy", &file, "--output", "none"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("matchActions") && err.contains("-111") && err.contains("EPERM"),
            "{err}"
        );
    }
    let (errno, expect) = if any_errno { (-111, "111") } else { (-1, "1") };
    let (daemon, cg, _d) = daemon_with(&policy(errno), &[]);
    assert_eq!(curl(&cg, &denied.url()), Some(7), "curl fails at connect");
    assert_eq!(
        connect_errno(&cg, "AF_INET", &denied.v4),
        expect,
        "the errno of argError"
    );
    assert_eq!(denied.requests(), 0);
    let e = daemon.wait_for("override event", |e| {
        body(e, "process_kprobe").is_some_and(|k| k["action"] == "KPROBE_ACTION_OVERRIDE")
    });
    assert_eq!(sock(&e)["daddr"], denied.v4);

    assert_eq!(curl(&cg, &other.url()), Some(0), "outside the CIDR");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", &denied.url()])
        .status()
        .unwrap();
    assert!(out.success(), "outside the test's cgroup");
    assert_eq!(denied.requests(), 1);
}

#[test]
fn sigkill_kills_before_a_packet_leaves() {
    if !can_run("sigkill_kills_before_a_packet_leaves") {
        return;
    }
    let backend = Backend::start();
    let (daemon, cg, _d) = daemon_with(
        &tcp_policy("kill-backend", &format!(
            "    - matchArgs: [{{index: 0, operator: DAddr, values: [{}]}}, {{index: 0, operator: DPort, values: [\"{PORT}\"]}}]\n      matchActions: [{{action: Sigkill}}]\n",
            backend.cidr4()
        )),
        &[],
    );
    assert_eq!(curl(&cg, &backend.url()), Some(137));
    let curl_bin = resolved("/usr/bin/curl");
    let e = daemon.wait_for("kill event", |e| is(e, "process_kprobe", &curl_bin));
    assert_eq!(e["process_kprobe"]["action"], "KPROBE_ACTION_SIGKILL");
    daemon.wait_for("exit", |e| {
        body(e, "process_exit")
            .is_some_and(|x| x["process"]["binary"] == curl_bin && x["signal"] == "SIGKILL")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(backend.requests(), 0, "the backend saw no request");
}

#[test]
fn ipv6_and_ipv4_mapped_destinations() {
    if !can_run("ipv6_and_ipv4_mapped_destinations") {
        return;
    }
    let backend = Backend::start();
    // EACCES where the kernel can set an errno; EPERM, the only one, elsewhere.
    let (errno, expect) = if probe_says("connect Override", "any errno") {
        (-13, "13")
    } else {
        (-1, "1")
    };
    let policy = format!(
        "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: deny-v6}}
spec:
  lsmhooks:
  - hook: socket_connect
    args: [{{index: 0, type: socket}}, {{index: 1, type: sockaddr}}]
    selectors:
    - matchArgs: [{{index: 1, operator: SAddr, values: [\"fd00:5e:{k}::/64\", {cidr}]}}]
      matchActions: [{{action: Override, argError: {errno}}}]
",
        k = backend.k,
        cidr = backend.cidr4()
    );
    let (daemon, cg, _d) = daemon_with(&policy, &[]);
    assert_eq!(
        curl(&cg, &format!("http://[{}]:{PORT}/", backend.v6)),
        Some(7)
    );
    let e = daemon.wait_for("v6 event", |e| body(e, "process_lsm").is_some());
    let lsm = &e["process_lsm"];
    assert_eq!(lsm["function_name"], "socket_connect");
    assert_eq!(lsm["args"][0]["sock_arg"]["family"], "AF_INET6");
    assert_eq!(lsm["args"][1]["sockaddr_arg"]["addr"], backend.v6);
    assert_eq!(lsm["args"][1]["sockaddr_arg"]["port"], PORT);
    // An IPv6 socket reaching IPv4 through ::ffff:a.b.c.d is matched as IPv4.
    let mapped = format!("::ffff:{}", backend.v4);
    assert_eq!(
        connect_errno(&cg, "AF_INET6", &mapped),
        expect,
        "the errno of argError"
    );
    assert_eq!(backend.requests(), 0);
}

#[test]
fn udp_sends_and_connects_are_seen_and_denied() {
    if !can_run("udp_sends_and_connects_are_seen_and_denied") {
        return;
    }
    let backend = Backend::start();
    let policy = tcp_policy("udp-dns", &format!(
        "    - matchArgs: [{{index: 0, operator: Protocol, values: [IPPROTO_UDP]}}, {{index: 0, operator: DAddr, values: [{}]}}, {{index: 0, operator: DPort, values: [\"53\"]}}]\n      matchActions: [{{action: Override, argError: -1}}]\n",
        backend.v4
    ));
    let (daemon, cg, _d) = daemon_with(&policy, &[]);
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n    s.sendto(b'x', ('{a}', 53)); print('sent')\nexcept OSError as e:\n    print(e.errno)\n\
         print(s.connect_ex(('{a}', 53)))\nprint(s.connect_ex(('{a}', 54)))",
        a = backend.v4
    );
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        vec!["1", "1", "0"],
        "sendto and connect to :53 denied with EPERM, :54 allowed"
    );
    let e = daemon.wait_for("udp event", |e| body(e, "process_kprobe").is_some());
    let s = sock(&e);
    assert_eq!(s["protocol"], "IPPROTO_UDP");
    assert_eq!(s["type"], "SOCK_DGRAM");
    assert_eq!(s["dport"], 53);
    let hits = daemon
        .events()
        .iter()
        .filter(|e| body(e, "process_kprobe").is_some())
        .count();
    assert_eq!(hits, 2, "the send and the connect");
}

#[test]
fn cluster_cidr_egress_policy_kills_what_leaves_the_cluster() {
    if !can_run("cluster_cidr_egress_policy_kills_what_leaves_the_cluster") {
        return;
    }
    let (inside, outside) = (Backend::start(), Backend::start());
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let pod_cidr = inside.cidr4();
    let daemon = Daemon::start(&[
        "--policy",
        &shipped("egress-cluster.yaml"),
        "--pod-cidr",
        &pod_cidr,
        "--service-cidr",
        "10.96.0.0/12",
        "--enforce-cgroup",
        &scope,
    ]);
    assert_eq!(curl(&cg, &inside.url()), Some(0), "inside the pod CIDR");
    assert_eq!(curl(&cg, &outside.url()), Some(137), "outside the cluster");
    assert_eq!((inside.requests(), outside.requests()), (1, 0));
    let e = daemon.wait_for("kill", |e| {
        body(e, "process_kprobe").is_some_and(|k| k["action"] == "KPROBE_ACTION_SIGKILL")
    });
    assert_eq!(sock(&e)["daddr"], outside.v4);
    assert_eq!(
        e["process_kprobe"]["policy_name"],
        "enforce-network-activity-outside-cluster-cidr-range"
    );
}

/// Tetragon's `examples/tracingpolicy/security-socket-connect.yaml`, as it
/// ships: the destination and its length (argument 2, an `int`) in the
/// event. Then the same hook with `returnArg` and an Override: the event's
/// `return` is the errno the connect failed with.
#[test]
fn tetragons_block_others_example_denies_curl_with_its_positive_arg_error() {
    if !can_run("tetragons_block_others_example_denies_curl_with_its_positive_arg_error") {
        return;
    }
    let backend = Backend::start();
    // security-socket-connect-block-others.yaml as Tetragon ships it.
    let example = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "security-socket-connect"
spec:
  kprobes:
  - call: "security_socket_connect"
    syscall: false
    args:
    - index: 0
      type: "socket"
    - index: 1
      type: "sockaddr"
    - index: 2
      type: "int"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Protocol"
        values:
        - "IPPROTO_TCP"
      - index: 1
        operator: "Family"
        values:
        - "AF_INET"
        - "AF_INET6"
      - index: 1
        operator: "SAddr"
        values:
        - "192.168.1.1"
      - index: 1
        operator: "SPort"
        values:
        - "80"
      matchBinaries:
      - operator: "In"
        values:
        - "/usr/bin/curl"
      matchActions:
      - action: Post
    - matchArgs:
      - index: 0
        operator: "Protocol"
        values:
        - "IPPROTO_TCP"
      - index: 1
        operator: "Family"
        values:
        - "AF_INET"
        - "AF_INET6"
      matchBinaries:
      - operator: "In"
        values:
        - "/usr/bin/curl"
      matchActions:
      - action: "Override"
        argError: 1
"#;
    let (daemon, cg, _d) = daemon_with(example, &[]);
    // curl's connect to anything but 192.168.1.1:80 fails (EPERM, errno 1):
    // curl exits 7, could not connect.
    assert_eq!(curl(&cg, &backend.url()), Some(7));
    // Another binary connects.
    assert_eq!(connect_errno(&cg, "AF_INET", &backend.v4), "0");
    let e = daemon.wait_for("override event", |e| {
        body(e, "process_kprobe").is_some_and(|k| k["action"] == "KPROBE_ACTION_OVERRIDE")
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["policy_name"], "security-socket-connect");
    assert_eq!(k["process"]["binary"], resolved("/usr/bin/curl"));
    assert_eq!(k["args"][0]["sock_arg"]["protocol"], "IPPROTO_TCP", "{e}");
    assert_eq!(k["args"][1]["sockaddr_arg"]["addr"], backend.v4, "{e}");
    assert_eq!(k["args"][2]["int_arg"], 16, "{e}");
}

#[test]
fn tetragons_security_socket_connect_example_reports_the_address_and_its_length() {
    if !can_run("tetragons_security_socket_connect_example_reports_the_address_and_its_length") {
        return;
    }
    let backend = Backend::start();
    let example = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "security-socket-connect"
spec:
  kprobes:
  - call: "security_socket_connect"
    syscall: false
    args:
    - index: 1
      type: "sockaddr"
    - index: 2
      type: "int"
    selectors:
    - matchArgs:
      - index: 1
        operator: "Family"
        values:
        - "AF_INET"
        - "AF_INET6"
        - "AF_UNIX"
"#;
    let (daemon, cg, _d) = daemon_with(example, &[]);
    assert_eq!(curl(&cg, &backend.url()), Some(0));
    let e = daemon.wait_for("connect event", |e| {
        body(e, "process_kprobe").is_some_and(|k| k["args"][0]["sockaddr_arg"]["port"] == PORT)
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["function_name"], "security_socket_connect");
    assert_eq!(k["args"][0]["sockaddr_arg"]["addr"], backend.v4);
    assert_eq!(k["args"][0]["sockaddr_arg"]["family"], "AF_INET");
    assert_eq!(k["args"][1]["int_arg"], 16, "sizeof(struct sockaddr_in)");
    assert!(k.get("return").is_none(), "no returnArg, no return");
    drop(daemon);

    let with_return = format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: deny-with-return}}\nspec:\n  kprobes:\n  - call: security_socket_connect\n    syscall: false\n    args: [{{index: 1, type: sockaddr}}]\n    returnArg: {{index: 0, type: int}}\n    selectors:\n    - matchArgs: [{{index: 1, operator: SAddr, values: [{}]}}]\n      matchActions: [{{action: Override, argError: -1}}]\n",
        backend.v4
    );
    let (daemon, cg, _d) = daemon_with(&with_return, &[]);
    assert_eq!(connect_errno(&cg, "AF_INET", &backend.v4), "1");
    let e = daemon.wait_for("override event", |e| {
        body(e, "process_kprobe").is_some_and(|k| k["action"] == "KPROBE_ACTION_OVERRIDE")
    });
    assert_eq!(e["process_kprobe"]["return"]["int_arg"], -1, "{e}");
}
