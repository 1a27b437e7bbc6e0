//! The antibodies: a pod labelled `quarantine=true` (here by the operator's
//! `sensor quarantine apply`, against a fake API server speaking real HTTP)
//! is cut off the network on this node, open connections included; other
//! pods are untouched; removing the label gives the network back. The pods
//! have network namespaces of their own (`common::pod`).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use apiserver_double::FakeApi;
use common::pod::{Node, PORT};
use common::*;

#[test]
fn a_labelled_pod_loses_the_network_until_the_label_goes() {
    if !can_run("a_labelled_pod_loses_the_network_until_the_label_goes") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-q-{}", std::process::id());
    let net = Node::new();
    let backend = net.pod(&api, &node, "backend");
    let server = backend.serve_http();
    let frontend = net.pod(&api, &node, "frontend");
    let other = net.pod(&api, &node, "other");
    let fuid = frontend.uid.clone();
    let dir = TempDir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let kc = kubeconfig.to_str().unwrap();
    let state = dir.path().join("state");
    let daemon = Daemon::with_api(
        &kubeconfig,
        &node,
        &["--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(
        frontend.curl(&backend.url()),
        Some(0),
        "before: the frontend reaches the backend"
    );

    // A connection opened before the quarantine, held by a client that sends
    // a request when told to.
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{}',{PORT}))\ns.settimeout(2)\nprint('open',flush=True)\nsys.stdin.readline()\n\
         try:\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('reply' if s.recv(100) else 'eof')\nexcept OSError as e:\n    print('cut', type(e).__name__)\n",
        backend.ip
    );
    let mut held = frontend
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "open");

    quarantine_by_hand(kc, "apply", "shop/frontend");
    assert_eq!(
        api.pod("shop", "frontend").unwrap()["metadata"]["labels"]["quarantine"],
        "true"
    );
    daemon.wait_for("isolation", |e| {
        e["sensor_quarantine"]["pod_uid"] == fuid.as_str()
            && e["sensor_quarantine"]["outcome"] == "isolated"
    });
    assert_eq!(
        frontend.curl(&backend.url()),
        Some(7),
        "new connects are denied"
    );
    writeln!(held.stdin.take().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("cut"),
        "the open connection is cut too: {line}"
    );
    let _ = held.wait();
    assert_eq!(
        other.curl(&backend.url()),
        Some(0),
        "another pod is untouched"
    );
    let served = server.requests();
    assert_eq!(
        served, 2,
        "only the two successful curls reached the backend"
    );

    quarantine_by_hand(kc, "release", "shop/frontend");
    assert!(api.pod("shop", "frontend").unwrap()["metadata"]["labels"]
        .get("quarantine")
        .is_none());
    let released = daemon.wait_for("release", |e| {
        e["sensor_quarantine"]["pod_uid"] == fuid.as_str()
            && e["sensor_quarantine"]["outcome"] == "released"
    });
    // The release names the pod, not only its uid.
    assert_eq!(released["sensor_quarantine"]["namespace"], "shop");
    assert_eq!(released["sensor_quarantine"]["pod"], frontend.name.as_str());
    eventually("the frontend reaches the backend again", || {
        frontend.curl(&backend.url()) == Some(0)
    });
}
