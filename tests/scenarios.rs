//! The four attack scenarios end to end, with the shipped `policies/`: test
//! pods (each a cgroup named as kubelet names it and a network namespace
//! joined by veth to the node's pod network) known to a fake API server
//! (real HTTP), a backend pod running a real HTTP server, and the real
//! daemon. The reflexes are scoped to the pods whose scenario is about them
//! (so that the frontend's curl is the brain's to judge, and nothing on the
//! test host is killed).
mod common;

use common::cluster::*;
use common::*;
use serde_json::Value;

#[test]
fn baseline_exfiltration_reflex_and_evasion() {
    if !can_run("baseline_exfiltration_reflex_and_evasion") {
        return;
    }
    let c = Cluster::new();
    let (backend, server) = c.backend();
    let frontend = c.pod("frontend");
    let fresh = c.pod("frontend-fresh");
    let evader = c.pod("frontend-evader");
    let daemon = c.daemon(&[&fresh, &evader], &c.state());
    let url = backend.url();

    // 1. Baseline: the frontend's curl reaches the backend, and its events
    //    carry the frontend's pod.
    assert_eq!(
        frontend.sh(&format!("curl -s -o /dev/null --max-time 3 {url}; exit $?")),
        Some(0)
    );
    assert_eq!(server.requests(), 1);
    let exec = daemon.wait_for("baseline curl with its pod", |e| {
        e["process_exec"]["process"]["binary"] == "/usr/bin/curl"
            && e["process_exec"]["process"]["pod"]["name"] == "frontend"
    });
    assert_eq!(exec["process_exec"]["process"]["pod"]["namespace"], "shop");
    assert_eq!(exec["process_exec"]["parent"]["pod"]["name"], "frontend");

    // 2. Exfiltration: the brain quarantines the frontend for the upload.
    //    (The upload itself may or may not get out first.)
    frontend.sh(&format!(
        "curl -s -o /dev/null --max-time 3 -d @/etc/hostname {url}; exit $?"
    ));
    let alert = daemon.wait_for("exfiltration alert", |e| {
        e["sensor_alert"]["rule"] == "exfiltration-curl-upload"
    });
    assert_eq!(alert["sensor_alert"]["process"]["pod"]["name"], "frontend");
    daemon.wait_for("node isolation", |e| {
        quarantine_of(e, &frontend.uid, "node", "isolated")
    });
    daemon.wait_for("label", |e| {
        quarantine_of(e, &frontend.uid, "label", "labelled")
    });
    let served = server.requests();
    assert_eq!(
        frontend.sh(&format!("curl -s -o /dev/null --max-time 3 {url}; exit $?")),
        Some(7),
        "the frontend's next curl cannot connect"
    );
    assert_eq!(
        connect_errno_to(&frontend, &backend),
        "1",
        "denied with EPERM"
    );
    assert!(labelled(&c.api, "frontend"));
    assert!(
        ["frontend-fresh", "frontend-evader", "backend"]
            .iter()
            .all(|p| !labelled(&c.api, p)),
        "only the frontend"
    );
    let annotation = c.api.pod("shop", "frontend").unwrap()["metadata"]["annotations"]
        ["sensor.io/quarantine"]
        .clone();
    assert!(
        annotation
            .as_str()
            .unwrap()
            .contains("exfiltration-curl-upload"),
        "{annotation}"
    );
    // The backend still serves other clients.
    assert_eq!(connect_errno_to(&fresh, &backend), "0");
    let script = format!("import urllib.request; urllib.request.urlopen('{url}')");
    let status = evader
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        server.requests(),
        served + 1,
        "only the other client's request"
    );

    // 3. Reflex: curl in a fresh frontend dies with 137, and the pod is not
    //    quarantined.
    assert_eq!(fresh.sh("curl --version; exit $?"), Some(137));
    let hit = daemon.wait_for("reflex event", |e| {
        e["process_kprobe"]["action"] == "KPROBE_ACTION_SIGKILL"
            && e["process_kprobe"]["process"]["pod"]["name"] == "frontend-fresh"
    });
    assert_eq!(
        hit["process_kprobe"]["policy_name"],
        "reflex-exfiltration-tools"
    );
    assert!(!labelled(&c.api, "frontend-fresh"));
    assert_eq!(connect_errno_to(&fresh, &backend), "0");

    // 4. Evasion: curl renamed sleep slips past the name-based reflex; the brain
    //    sees a "sleep" that connects, kills it and quarantines the pod. The
    //    renamed curl holds its connection open (telnet:// with a stdin that
    //    never ends) so that only the kill can end it early.
    let tools = TempDir::new();
    let sleep = tools.path().join("sleep");
    std::fs::copy("/usr/bin/curl", &sleep).unwrap();
    let started = std::time::Instant::now();
    let mut held = evader
        .command(&sleep.to_string_lossy())
        .args(["-s", "--max-time", "20"])
        .arg(format!("telnet://{}:{}", backend.ip, common::pod::PORT))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = held.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed by the brain");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "killed, not timed out: {:?}",
        started.elapsed()
    );
    let alert = daemon.wait_for("evasion alert", |e| {
        e["sensor_alert"]["rule"] == "evasion-renamed-binary"
            && e["sensor_alert"]["process"]["pod"]["name"] == "frontend-evader"
    });
    let killed = alert["sensor_alert"]["killed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        killed.first(),
        Some(&alert["sensor_alert"]["process"]["exec_id"]),
        "the alert names what it killed: {alert}"
    );
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| { e["process_kprobe"]["process"]["pod"]["name"] == "frontend-evader" }),
        "the name-based reflex missed it: the brain acted"
    );
    daemon.wait_for("evader isolated", |e| {
        quarantine_of(e, &evader.uid, "node", "isolated")
    });
    assert_eq!(connect_errno_to(&evader, &backend), "1");

    // A real sleep under a process named kubelet, outside the pods: nothing.
    let kubelet = tools.path().join("kubelet");
    std::fs::copy("/bin/sh", &kubelet).unwrap();
    assert!(std::process::Command::new(&kubelet)
        .args(["-c", "/bin/sleep 0.1; /bin/sleep 0.1"])
        .status()
        .unwrap()
        .success());
    daemon.wait_for("the kubelet's sleep", |e| {
        e["process_exec"]["parent"]["binary"] == kubelet.to_string_lossy().as_ref()
    });
    let alerts: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| e.get("sensor_alert").is_some())
        .collect();
    assert!(
        alerts
            .iter()
            .all(|a| a["sensor_alert"]["process"]["pod"].is_object()),
        "no alert outside the pods: {alerts:#?}"
    );
    assert!(
        !labelled(&c.api, "backend"),
        "the backend is never quarantined"
    );
}

#[test]
fn label_retries_through_errors_and_survives_a_restart_exactly_once() {
    if !can_run("label_retries_through_errors_and_survives_a_restart_exactly_once") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let a = c.pod("retried");
    let b = c.pod("restarted");
    let url = backend.url();

    // 500 three times, then 200: the label lands once.
    c.api.fail_next(&[500, 500, 500]);
    let daemon = c.daemon(&[&a, &b], &c.state());
    assert_eq!(a.sh(&format!("curl -s -d x {url}; exit $?")), Some(137));
    daemon.wait_for("labelled after retries", |e| {
        quarantine_of(e, &a.uid, "label", "labelled")
    });
    let retries = daemon
        .events()
        .iter()
        .filter(|e| quarantine_of(e, &a.uid, "label", "retrying"))
        .count();
    assert_eq!(retries, 3);
    assert_eq!(
        c.api
            .patches()
            .iter()
            .filter(|(_, n, _)| n == "retried")
            .count(),
        1,
        "one patch landed"
    );

    // The API keeps failing; the daemon stops between decision and label.
    c.api.fail_next(&[500; 1000]);
    assert_eq!(b.sh(&format!("curl -s -d x {url}; exit $?")), Some(137));
    daemon.wait_for("retrying", |e| {
        quarantine_of(e, &b.uid, "label", "retrying")
    });
    drop(daemon);
    assert!(!labelled(&c.api, "restarted"));
    c.api.clear_failures();
    let daemon = c.daemon(&[&a, &b], &c.state());
    daemon.wait_for("labelled after the restart", |e| {
        quarantine_of(e, &b.uid, "label", "labelled")
    });
    assert!(labelled(&c.api, "restarted"));
    assert_eq!(
        c.api
            .patches()
            .iter()
            .filter(|(_, n, _)| n == "restarted")
            .count(),
        1,
        "exactly once"
    );
    // Isolation survives the restart, from the label.
    assert_eq!(connect_errno_to(&b, &backend), "1");
}
