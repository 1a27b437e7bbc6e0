//! Every event kind the daemon emits parses with the project's protos
//! (`sensor-api/proto`, Tetragon's with this sensor's own events added) in
//! strict mode, by protobuf's own JSON parser as a pipeline generated from
//! them would: a field the protos do not have, a wrong type or a bad enum
//! name fails the test, naming the line.
mod common;

use std::os::unix::process::ExitStatusExt;

use apiserver_double::FakeApi;
use common::pod::Node;
use common::*;

const UPLOAD_RULE: &str = "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata:\n  name: protos-upload\nspec:\n  on: exec\n  inPod: true\n  binary: {operator: Postfix, values: [/curl]}\n  arguments: {anyOf: [\"-d\"]}\n  actions: [alert, quarantine]\n";

/// Syscall hooks whose arguments take each integer type, and those
/// copied from user memory (a string; a buffer, whole and cut).
const SYSCALLS: &str = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: protos-syscalls}\nspec:\n  kprobes:\n  - call: sys_setuid\n    syscall: true\n    args: [{index: 0, type: int}]\n  - call: sys_mkdir\n    syscall: true\n    args: [{index: 0, type: string}]\n  - call: sys_write\n    syscall: true\n    args: [{index: 0, type: int}, {index: 1, type: char_buf, sizeArgIndex: 3}]\n    selectors:\n    - matchArgs: [{index: 0, operator: Equal, values: [\"9\"]}]\n  tracepoints:\n  - subsystem: syscalls\n    event: sys_enter_dup2\n    args: [{index: 4, type: syscall64}, {index: 5, type: uint32}, {index: 6, type: long}]\n  - subsystem: syscalls\n    event: sys_enter_dup\n    args: [{index: 4, type: uint64}, {index: 5, type: size_t}]\n";

/// A socket hook that returns a socket and a packet hook, so that `return`
/// as a `sock_arg` and `skb_arg` are parsed too.
const SOCKETS: &str = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: protos-sockets}\nspec:\n  kprobes:\n  - call: sk_alloc\n    syscall: false\n    return: true\n    args: [{index: 1, type: int}]\n    returnArg: {index: 0, type: sock}\n    returnArgAction: TrackSock\n  - call: __cgroup_bpf_run_filter_skb\n    syscall: false\n    args: [{index: 0, type: sock}, {index: 1, type: skb}, {index: 2, type: int}]\n    selectors:\n    - matchArgs: [{index: 1, operator: Protocol, values: [IPPROTO_UDP]}]\n";

#[test]
fn every_event_kind_parses_with_the_protos_strictly() {
    if !can_run("every_event_kind_parses_with_the_protos_strictly") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-p-{}", std::process::id());
    let net = Node::new();
    let web = net.pod(&api, &node, "web");
    let dir = TempDir::new();
    let blocked = copy_true(&dir, "protos-blocked");
    let kill = policy_file(&dir, "kill.yaml", &kill_policy("protos-kill", &blocked));
    let connect = policy_file(
        &dir,
        "connect.yaml",
        &kprobe_policy(
            "TracingPolicy",
            "{name: protos-connect}",
            "tcp_connect",
            "sock",
            "    - matchActions: [{action: Post}]\n",
        ),
    );
    let rule = policy_file(&dir, "rule.yaml", UPLOAD_RULE);
    let syscalls = policy_file(&dir, "syscalls.yaml", SYSCALLS);
    let sockets = policy_file(&dir, "sockets.yaml", SOCKETS);
    let scope = web.cg.0.to_string_lossy().into_owned();
    let kubeconfig = api.kubeconfig(dir.path());
    // Ancestors on every kind that can carry them, so that they are
    // parsed too.
    let daemon = Daemon::with_api(
        &kubeconfig,
        &node,
        &[
            "--policy",
            &kill,
            "--policy",
            &connect,
            "--policy",
            &rule,
            "--policy",
            &syscalls,
            "--policy",
            &sockets,
            "--enforce-cgroup",
            &scope,
            "--enable-ancestors",
            "base,kprobe,tracepoint,lsm",
            "--enable-process-cred",
            "--enable-process-ns",
        ],
    );

    // An exec and its exit; a reflex kill (process_tracepoint); a connect
    // (process_kprobe); syscalls; an upload: the brain's alert and the
    // quarantine (at its exec, so that its own connect is refused
    // unrecorded).
    let status = web.command(&blocked).status().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    web.sh("curl -s -o /dev/null --max-time 2 http://127.0.0.1:1/; true");
    daemon.wait_for("the connect", |e| e.get("process_kprobe").is_some());
    // Syscalls, with every integer argument type.
    let st = web
        .command("/usr/bin/python3")
        .args([
            "-c",
            "import ctypes, os; libc = ctypes.CDLL(None); libc.dup(1); libc.dup2(1, 7); libc.setuid(0); libc.mkdir(b'/nonexistent/protos', 0); os.dup2(os.open('/dev/null', os.O_WRONLY), 9); os.write(9, b'x' * 2000); os.write(9, b'short')",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    for arg in ["syscall_id", "uint_arg", "long_arg", "size_arg"] {
        daemon.wait_for(arg, |e| {
            e["process_tracepoint"]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.get(arg).is_some()))
        });
    }
    daemon.wait_for("setuid", |e| {
        e["process_kprobe"]["function_name"] == "__x64_sys_setuid"
    });
    for arg in ["string_arg", "bytes_arg", "truncated_bytes_arg"] {
        daemon.wait_for(arg, |e| {
            e["process_kprobe"]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.get(arg).is_some()))
        });
    }
    // A socket made and a datagram sent: `return` holds a socket, and a
    // packet's arguments an skb.
    let st = web
        .command("/usr/bin/python3")
        .args([
            "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('127.0.0.1', 9))",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    daemon.wait_for("a socket returned", |e| {
        e["process_kprobe"]["return"]["sock_arg"].is_object()
    });
    daemon.wait_for("a packet", |e| {
        e["process_kprobe"]["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.get("skb_arg").is_some()))
    });
    web.sh("curl -s -o /dev/null --max-time 2 -d x http://127.0.0.1:1/; true");
    let want = [
        "process_exec",
        "process_exit",
        "process_tracepoint",
        "process_kprobe",
        "sensor_alert",
        "sensor_quarantine",
    ];
    for kind in want {
        daemon.wait_for(kind, |e| e.get(kind).is_some());
    }
    // The label landed: the quarantine's last step is in the file too.
    daemon.wait_for("the label", |e| {
        e["sensor_quarantine"]["outcome"] == "labelled"
    });
    let kinds = daemon.strict_proto_kinds();
    for kind in want {
        assert!(kinds.contains(kind), "{kind} not seen: {kinds:?}");
    }
    // What a process event carries beyond the basics was in those lines:
    // pods, ancestors, arguments.
    let events = daemon.events();
    assert!(events
        .iter()
        .any(|e| !e["process_kprobe"]["ancestors"].is_null()
            && !e["process_kprobe"]["process"]["pod"].is_null()
            && !e["process_kprobe"]["args"].is_null()));

    // Two kinds this host cannot emit in a test's time: process_lsm (it
    // has no usable BPF-LSM; the kernel matrix runs those policies, but its
    // guests have no protobuf) and rate_limit_info (written a minute after
    // the drops). Both are built by the daemon's own code, from a process
    // of the run above, and parsed the same way.
    let exec = events
        .iter()
        .find(|e| e["process_exec"]["process"]["binary"] == blocked.as_str())
        .expect("the blocked binary's exec");
    let lsm = lsm_event(&exec["process_exec"], &blocked);
    let mut lines = serde_json::to_string(&lsm).unwrap();
    lines.push('\n');
    lines += &serde_json::to_string(&sensor::export::shape::rate_limit_info(3, &node)).unwrap();
    lines.push('\n');
    let kinds = strict_proto_kinds(&lines);
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["process_lsm", "rate_limit_info"]
    );
}

/// The `process_lsm` event a `bprm_check_security` Override would post for
/// `exec`'s process and parent (and ancestors) trying to run `binary`.
fn lsm_event(exec: &serde_json::Value, binary: &str) -> sensor::export::event::Envelope {
    use sensor::export::event::{Envelope, Event, Process};
    use sensor::policy::{Actions, EventArg, HookPoint, ReturnArg, SelectorMeta};
    let process: Process = serde_json::from_value(exec["process"].clone()).unwrap();
    let parent: Process = serde_json::from_value(exec["parent"].clone()).unwrap();
    let ancestors: Vec<Process> = serde_json::from_value(exec["ancestors"].clone()).unwrap();
    let meta = SelectorMeta {
        policy_name: "protos-lsm".into(),
        point: HookPoint::Lsm {
            hook: "bprm_check_security".into(),
        },
        args: vec![EventArg::LinuxBinprm],
        return_arg: ReturnArg::None,
        return_type: None,
        actions: Actions {
            post: true,
            signal: None,
            errno: Some(1),
            notify: false,
            rate_limit: None,
            ima_hash: true,
        },
        monitor: false,
        message: Some("denied".into()),
        tags: vec!["protos".into()],
    };
    let args = meta
        .args
        .iter()
        .filter_map(|a| sensor::export::build::binary_arg(binary)(*a))
        .collect();
    let mut event = sensor::export::build::policy_event(&meta, &process, Some(parent), args);
    if let Event::ProcessLsm(l) = &mut event {
        l.ancestors = ancestors;
        l.ima_hash = Some(format!("sha256:{}", "ab".repeat(32)));
    }
    assert!(matches!(event, Event::ProcessLsm(_)));
    Envelope {
        event,
        node_name: "node".into(),
        time: "2026-11-27T12:00:00Z".into(),
    }
}
