//! A pod that floods: UDP sends as fast as it can, each one a send the
//! connect hooks see. Its records are held to its own budget in the kernel,
//! so that another pod's exfiltration is still seen and quarantined at once,
//! nothing is lost to a full ring buffer, and what the flooder did not get
//! to send is reported: a `sensor_alert` (rule `record-budget`) naming its
//! pod with the count, and a metric.
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
