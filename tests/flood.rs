//! A pod that floods: UDP sends as fast as it can, each one a send the
//! connect hooks see. Its records are held to its own budget in the kernel,
//! so that another pod's exfiltration is still seen and quarantined at once,
//! nothing is lost to a full ring buffer, and what the flooder did not get
//! to send is reported: a `sensor_alert` (rule `record-budget`) naming its
//! pod with the count, a metric, and the shipped brain rule `flood-records`
//! (`on: flood`).
mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

#[test]
fn a_flooding_pod_neither_blinds_the_sensor_nor_loses_other_pods_records() {
    if !can_run("a_flooding_pod_neither_blinds_the_sensor_nor_loses_other_pods_records") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let flooder = c.pod("flooder");
    let victim = c.pod("victim");
    let daemon = c.daemon(&[&victim], &c.state());

    // Ten seconds of unconnected UDP sends (each passes sendmsg4).
    let script = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 10\nn = 0\nwhile time.time() < end:\n    for _ in range(1000):\n        s.sendto(b'x', ('{}', 9))\n    n += 1000\nprint(n)\n",
        backend.ip
    );
    let flood = flooder
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // Mid-flood, another pod uploads: killed by the reflex, quarantined by
    // the brain, as without the flood.
    let started = Instant::now();
    assert_eq!(
        victim.sh(&format!("curl -s -d x {}; exit $?", backend.url())),
        Some(137)
    );
    daemon.wait_for("the victim isolated during the flood", |e| {
        quarantine_of(e, &victim.uid, "node", "isolated")
    });
    let took = started.elapsed();
    let out = flood.wait_with_output().unwrap();
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    eprintln!("flood: {sent} sends in 10 s; the victim was isolated {took:?} after its curl");
    assert!(sent > 20_000, "a flood worth the name: {sent} sends");
    assert!(took < Duration::from_secs(5), "isolated in {took:?}");

    let alert = daemon.wait_for("the flooder's loss reported", |e| {
        e["sensor_alert"]["rule"] == "record-budget"
            && e["sensor_alert"]["process"]["pod"]["name"] == "flooder"
    });
    assert!(
        alert["sensor_alert"]["count"].as_u64().unwrap_or(0) > 0,
        "{alert}"
    );
    // The flood itself is something a brain rule reads: the shipped
    // `flood-records` rule alerts on a pod over its budget for seconds.
    let flood = daemon.wait_for("the flood rule", |e| {
        e["sensor_alert"]["rule"] == "flood-records"
            && e["sensor_alert"]["process"]["pod"]["name"] == "flooder"
    });
    assert!(
        flood["sensor_alert"]["count"].as_u64().unwrap_or(0) > 0,
        "{flood}"
    );
    let m = daemon.scrape();
    assert!(m.sum("sensor_records_suppressed_total", &[]) > 0.0);
    assert_eq!(
        m.sum("tetragon_observer_ringbuf_events_lost_total", &[]),
        0.0,
        "nothing lost to a full ring buffer"
    );
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| e["sensor_alert"]["rule"] == "ring-buffer-full"),
        "no ring loss reported"
    );
}

/// With no brain rule on connects, a connect that hits no policy is no
/// record at all: 500 connects move the ring buffer's count by the few
/// records of the process that makes them (its exec and exit).
#[test]
fn a_connect_nothing_needs_makes_no_record() {
    if !can_run("a_connect_nothing_needs_makes_no_record") {
        return;
    }
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let dir = TempDir::new();
    // A connect policy that matches nothing here: every connect is
    // evaluated, none hits.
    let policy = policy_file(
        &dir,
        "p.yaml",
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: nothing-here}\nspec:\n  kprobes:\n  - call: tcp_connect\n    syscall: false\n    args: [{index: 0, type: sock}]\n    selectors:\n    - matchArgs: [{index: 0, operator: DAddr, values: [192.0.2.0/24]}]\n      matchActions: [{action: Post}]\n",
    );
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);
    let received = |d: &Daemon| {
        d.scrape()
            .sum("tetragon_observer_ringbuf_events_received_total", &[])
    };
    let before = received(&daemon);
    let script = "import socket\nl = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(600)\nfor _ in range(500):\n    socket.create_connection(l.getsockname()).close()\n";
    let st = cg
        .command("/usr/bin/python3")
        .args(["-c", script])
        .status()
        .unwrap();
    assert!(st.success());
    // The python's exec and exit are seen; its connects are not records.
    daemon.wait_for("the exit of the connecting process", |e| {
        e["process_exit"]["process"]["binary"]
            .as_str()
            .is_some_and(|b| b.contains("python3"))
    });
    let grew = received(&daemon) - before;
    assert!(grew >= 2.0, "the exec and exit were counted: {grew}");
    assert!(grew < 50.0, "{grew} records for 500 connects");
}
