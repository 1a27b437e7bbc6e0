//! The antibodies: a pod labelled `quarantine=true` (here by the operator's
//! `sensor quarantine apply`, against a fake API server speaking real HTTP)
//! is cut off the network on this node, open connections torn down; other
//! pods are untouched; removing the label gives the network back. The pods
//! have network namespaces of their own (`common::pod`).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use apiserver_double::FakeApi;
use common::pod::Node;
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

    // A connection opened before the quarantine, to a peer that waits on
    // it, held by a client that writes when told to.
    let mut peer = backend
        .command("/usr/bin/python3")
        .args([
            "-u",
            "-c",
            "import socket\nl=socket.create_server(('0.0.0.0',9001))\nprint('listening')\nc,_=l.accept()\nc.settimeout(30)\n\
             try:\n    print('eof' if not c.recv(100) else 'data')\nexcept OSError as e:\n    print(type(e).__name__)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peer_out = BufReader::new(peer.stdout.take().unwrap());
    let mut peer_line = String::new();
    peer_out.read_line(&mut peer_line).unwrap();
    assert_eq!(peer_line.trim(), "listening");
    let script = format!(
        "import socket,sys\ns=socket.create_connection(('{}',9001))\nprint('open',flush=True)\nsys.stdin.readline()\n\
         try:\n    s.sendall(b'x'); s.settimeout(2); print('reply' if s.recv(100) else 'eof')\nexcept OSError as e:\n    print('cut', type(e).__name__)\n",
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

    // A connected UDP socket a process waits on.
    let mut udp = frontend
        .command("/usr/bin/python3")
        .args([
            "-u",
            "-c",
            &format!(
                "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.connect(('{}',9002))\nprint('open')\ns.settimeout(30)\n\
                 try:\n    s.recv(100); print('data')\nexcept OSError as e:\n    print('cut', type(e).__name__)\n",
                backend.ip
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut udp_out = BufReader::new(udp.stdout.take().unwrap());
    let mut udp_line = String::new();
    udp_out.read_line(&mut udp_line).unwrap();
    assert_eq!(udp_line.trim(), "open");

    // A packet socket opened before the quarantine, by a process that
    // keeps it.
    let mut sniffer = frontend
        .command("/usr/bin/python3")
        .args([
            "-c",
            "import socket,time\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nprint('open', flush=True)\ntime.sleep(60)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut opened = String::new();
    BufReader::new(sniffer.stdout.take().unwrap())
        .read_line(&mut opened)
        .unwrap();
    assert_eq!(opened.trim(), "open");

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
    // The open connection is torn down: the peer is reset at once, not left
    // to time out, and the holder's next write fails.
    peer_line.clear();
    peer_out.read_line(&mut peer_line).unwrap();
    assert_eq!(
        peer_line.trim(),
        "ConnectionResetError",
        "the peer is reset"
    );
    let _ = peer.wait();
    writeln!(held.stdin.take().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "cut ConnectionAbortedError",
        "the holder's connection is destroyed"
    );
    let _ = held.wait();
    udp_line.clear();
    udp_out.read_line(&mut udp_line).unwrap();
    assert_eq!(
        udp_line.trim(),
        "cut ConnectionAbortedError",
        "the UDP socket's waiter learns at once"
    );
    let _ = udp.wait();
    {
        use std::os::unix::process::ExitStatusExt;
        let st = sniffer.wait().unwrap();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "the packet socket's holder is killed"
        );
    }
    // Packet sockets live below the IP stack, where the packet filters do
    // not run: asking for one in the quarantined pod is fatal; elsewhere it
    // is not.
    assert_eq!(
        frontend.open_socket("AF_PACKET, socket.SOCK_RAW"),
        Some(137)
    );
    assert_eq!(
        frontend.open_socket("AF_INET, 10"),
        Some(137),
        "SOCK_PACKET"
    );
    assert_eq!(other.open_socket("AF_PACKET, socket.SOCK_RAW"), Some(0));
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
    assert_eq!(frontend.open_socket("AF_PACKET, socket.SOCK_RAW"), Some(0));
}

/// A pod that can make cgroups plants decoys named like pod cgroups inside
/// its own; the quarantine still lands on its real pod cgroup.
#[test]
fn a_decoy_pod_cgroup_does_not_take_the_quarantine() {
    if !can_run("a_decoy_pod_cgroup_does_not_take_the_quarantine") {
        return;
    }
    use common::cluster::*;
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let pod = c.pod("decoyer");
    let container = pod
        .cg
        .0
        .strip_prefix(cgroup2())
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let u = pod.uid.replace('-', "_");
    let _decoys = [
        TestCgroup::at(&format!("{container}/pod{}", pod.uid)),
        TestCgroup::at(&format!("{container}/kubepods-besteffort-pod{u}.slice")),
        TestCgroup::at(&format!(
            "{container}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
        )),
    ];
    let daemon = c.daemon(&[&pod], &c.state());
    assert_eq!(
        pod.sh(&format!("curl -s -d x {}; exit $?", backend.url())),
        Some(137)
    );
    daemon.wait_for("isolated", |e| {
        quarantine_of(e, &pod.uid, "node", "isolated")
    });
    assert_eq!(
        connect_errno_to(&pod, &backend),
        "1",
        "the pod itself is cut off, not a decoy"
    );
}
