//! The label path under the errors a real API server gives: outcomes follow
//! the typed status, one pod's refusals never hold back another's label, a
//! pod recreated under the same name is not labelled for the old one, and a
//! corrupt state file is kept aside and reported.
mod common;

use common::cluster::*;
use common::*;

/// Label outcomes of one pod, in order.
fn outcomes(d: &Daemon, uid: &str) -> Vec<String> {
    d.events()
        .iter()
        .filter(|e| e["sensor_quarantine"]["pod_uid"] == uid)
        .filter(|e| e["sensor_quarantine"]["stage"] == "label")
        .map(|e| {
            e["sensor_quarantine"]["outcome"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn refusals_for_one_pod_hold_back_no_other_and_a_404_in_a_name_is_not_gone() {
    if !can_run("refusals_for_one_pod_hold_back_no_other_and_a_404_in_a_name_is_not_gone") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    // Named so that its refusals contain "404": only a 404 status means gone.
    let refused = c.pod("x-404");
    let other = c.pod("other");
    let url = backend.url();
    // 0.1 + 0.2 + ... + 3.2 s of backoff: about 6 s of refusals.
    c.api.fail_pod("x-404", &[403; 6]);
    let daemon = c.daemon(&[&refused, &other], &c.state());

    assert_eq!(
        refused.sh(&format!("curl -s -d x {url}; exit $?")),
        Some(137)
    );
    daemon.wait_for("refused", |e| {
        quarantine_of(e, &refused.uid, "label", "retrying")
    });
    assert_eq!(other.sh(&format!("curl -s -d x {url}; exit $?")), Some(137));
    daemon.wait_for("the other pod labelled", |e| {
        quarantine_of(e, &other.uid, "label", "labelled")
    });
    assert!(labelled(&c.api, "other"));
    assert!(
        !labelled(&c.api, "x-404"),
        "the other pod's label did not wait for this one's backoff"
    );
    let refusal = daemon.wait_for("the refusal's reason", |e| {
        quarantine_of(e, &refused.uid, "label", "retrying")
    });
    let reason = refusal["sensor_quarantine"]["error"].as_str().unwrap_or("");
    assert!(
        reason.contains("403") || reason.contains("refused"),
        "{reason}"
    );

    daemon.wait_for("labelled once the refusals stop", |e| {
        quarantine_of(e, &refused.uid, "label", "labelled")
    });
    let seen = outcomes(&daemon, &refused.uid);
    assert_eq!(
        seen.iter().filter(|o| *o == "retrying").count(),
        6,
        "{seen:?}"
    );
    assert!(!seen.contains(&"failed".to_string()), "{seen:?}");
    assert!(labelled(&c.api, "x-404"));
    // Isolated on the node the whole time.
    assert_eq!(connect_errno_to(&refused, &backend), "1");
}

#[test]
fn a_pod_recreated_under_the_same_name_is_not_labelled() {
    if !can_run("a_pod_recreated_under_the_same_name_is_not_labelled") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let web = c.pod("web");
    let url = backend.url();
    // 500, not 503: the client retries 503 itself before the labeler sees it.
    c.api.fail_pod("web", &[500; 1000]);
    let daemon = c.daemon(&[&web], &c.state());
    assert_eq!(web.sh(&format!("curl -s -d x {url}; exit $?")), Some(137));
    daemon.wait_for("label retrying", |e| {
        quarantine_of(e, &web.uid, "label", "retrying")
    });

    // The pod is deleted and its controller makes a new one of that name.
    c.api.delete(apiserver_double::PODS, "shop", "web");
    c.api.add_pod(apiserver_double::pod(
        "shop",
        "web",
        "recreated-uid",
        &c.node_name,
        "0123456789abcdef",
        serde_json::json!({"app": "web"}),
    ));
    c.api.clear_failures();
    let gone = daemon.wait_for("given up: a different pod", |e| {
        quarantine_of(e, &web.uid, "label", "failed")
    });
    let reason = gone["sensor_quarantine"]["error"].as_str().unwrap_or("");
    assert!(reason.contains("different pod"), "{reason}");
    assert!(!labelled(&c.api, "web"), "the new pod carries no label");
    assert!(
        c.api.patches().iter().all(|(_, n, _)| n != "web"),
        "no patch landed on the new pod"
    );
}

#[test]
fn a_corrupt_state_file_is_kept_aside_and_reported() {
    if !can_run("a_corrupt_state_file_is_kept_aside_and_reported") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let web = c.pod("web");
    let state = c.state();
    std::fs::create_dir_all(&state).unwrap();
    let file = std::path::Path::new(&state).join("pending-quarantines.json");
    std::fs::write(&file, b"[{\"namespace\": \"shop\", \"na").unwrap();

    let daemon = c.daemon(&[&web], &state);
    let e = daemon.wait_for("the corrupt state reported", |e| {
        e["sensor_quarantine"]["stage"] == "state" && e["sensor_quarantine"]["outcome"] == "corrupt"
    });
    let why = e["sensor_quarantine"]["error"].as_str().unwrap_or("");
    assert!(why.contains("pending-quarantines.json"), "{why}");
    let kept: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "kept aside once");
    assert_eq!(
        std::fs::read(kept[0].path()).unwrap(),
        b"[{\"namespace\": \"shop\", \"na",
        "kept as it was"
    );

    // The daemon goes on: a new decision is written to a fresh, private file.
    c.api.fail_pod("web", &[500; 1000]);
    assert_eq!(
        web.sh(&format!("curl -s -d x {}; exit $?", backend.url())),
        Some(137)
    );
    daemon.wait_for("retrying", |e| {
        quarantine_of(e, &web.uid, "label", "retrying")
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains(&web.uid) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "decision saved: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A pod the watcher does not know (created while the watch lags, or the
/// API was down) is still judged: the brain takes its uid from the cgroup
/// path, the node isolates it at once, and the label waits for the watcher.
#[test]
fn a_pod_the_watcher_does_not_know_is_isolated_at_once_and_labelled_once_known() {
    if !can_run("a_pod_the_watcher_does_not_know_is_isolated_at_once_and_labelled_once_known") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let ghost = c.pod("ghost");
    let object = c.api.pod("shop", "ghost").unwrap();
    c.api.delete(apiserver_double::PODS, "shop", "ghost");
    let daemon = c.daemon(&[&ghost], &c.state());

    assert_eq!(
        ghost.sh(&format!("curl -s -d x {}; exit $?", backend.url())),
        Some(137)
    );
    let isolated = daemon.wait_for("isolated by cgroup path", |e| {
        quarantine_of(e, &ghost.uid, "node", "isolated")
    });
    assert_eq!(
        isolated["sensor_quarantine"]["rule"],
        "exfiltration-curl-upload"
    );
    daemon.wait_for("the label waits", |e| {
        quarantine_of(e, &ghost.uid, "label", "waiting")
    });
    assert_eq!(connect_errno_to(&ghost, &backend), "1", "cut off meanwhile");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        connect_errno_to(&ghost, &backend),
        "1",
        "still cut off: an unlabelled pending decision is not released"
    );

    // The watcher catches up: the label lands, with the pod's name.
    c.api.add_pod(object);
    let labelled_event = daemon.wait_for("labelled once known", |e| {
        quarantine_of(e, &ghost.uid, "label", "labelled")
    });
    assert_eq!(labelled_event["sensor_quarantine"]["pod"], "ghost");
    assert!(labelled(&c.api, "ghost"));
    assert_eq!(connect_errno_to(&ghost, &backend), "1");
}

/// A pod the watcher never knew, judged by a connect rule (its connects are
/// recorded although every connect rule is about pods), then deleted: no
/// decision waits forever; the label gives up and the isolation goes with
/// the pod.
#[test]
fn a_pod_deleted_before_the_watcher_knew_it_is_let_go() {
    if !can_run("a_pod_deleted_before_the_watcher_knew_it_is_let_go") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let ghost = c.pod("ghost");
    let uid = ghost.uid.clone();
    c.api.delete(apiserver_double::PODS, "shop", "ghost");
    let daemon = c.daemon(&[&ghost], &c.state());
    // curl renamed `sleep`: only the brain's connect rule catches it.
    let tools = TempDir::new();
    let sleep = tools.path().join("sleep");
    std::fs::copy("/usr/bin/curl", &sleep).unwrap();
    let script = format!(
        "{} -s --max-time 10 {} >/dev/null; exit $?",
        sleep.display(),
        backend.url()
    );
    assert_eq!(ghost.sh(&script), Some(137), "killed by the brain");
    let isolated = daemon.wait_for("isolated by cgroup path", |e| {
        quarantine_of(e, &uid, "node", "isolated")
    });
    assert_eq!(
        isolated["sensor_quarantine"]["rule"],
        "evasion-renamed-binary"
    );
    daemon.wait_for("the label waits", |e| {
        quarantine_of(e, &uid, "label", "waiting")
    });
    drop(ghost);
    let failed = daemon.wait_for("the label gives up", |e| {
        quarantine_of(e, &uid, "label", "failed")
    });
    assert!(
        failed["sensor_quarantine"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("deleted")),
        "{failed}"
    );
    let released = daemon.wait_for("the isolation goes", |e| {
        quarantine_of(e, &uid, "node", "released")
    });
    assert_eq!(released["sensor_quarantine"]["rule"], "pod deleted");
}

/// The API server is down when the daemon starts: the daemon comes up all
/// the same, judges the pod from its cgroup path, isolates it at once, and
/// labels it once the API answers.
#[test]
fn the_api_down_at_start_holds_back_only_the_label() {
    if !can_run("the_api_down_at_start_holds_back_only_the_label") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let pod = c.pod("early");
    c.api.set_down(true);
    let daemon = c.daemon(&[&pod], &c.state());
    assert_eq!(
        pod.sh(&format!("curl -s -d x {}; exit $?", backend.url())),
        Some(137)
    );
    daemon.wait_for("isolated by cgroup path", |e| {
        quarantine_of(e, &pod.uid, "node", "isolated")
    });
    daemon.wait_for("the label waits", |e| {
        quarantine_of(e, &pod.uid, "label", "waiting")
    });
    assert_eq!(connect_errno_to(&pod, &backend), "1", "cut off meanwhile");
    assert!(!labelled(&c.api, "early"));

    c.api.set_down(false);
    let landed = daemon.wait_for("labelled once the API answers", |e| {
        quarantine_of(e, &pod.uid, "label", "labelled")
    });
    assert_eq!(landed["sensor_quarantine"]["pod"], "early");
    assert!(labelled(&c.api, "early"));
    assert_eq!(connect_errno_to(&pod, &backend), "1", "still cut off");
}

/// The sensor runs in a pod of its own (a DaemonSet): a `quarantine=true`
/// label on that pod is refused with a warning, and the pod keeps its
/// network, so that the sensor can still report and reconcile.
#[test]
fn the_sensors_own_pod_is_never_quarantined() {
    if !can_run("the_sensors_own_pod_is_never_quarantined") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let own = c.pod("sensor-self");
    // The daemon starts inside the pod's container cgroup.
    let enter = format!(
        "echo $$ > {} && exec \"$@\"",
        own.cg.0.join("cgroup.procs").display()
    );
    let daemon = c.daemon_under(&["sh", "-c", &enter, "sh"], &[&own], &c.state());
    let kubeconfig = c.api.kubeconfig(c.dir.path());
    quarantine_by_hand(kubeconfig.to_str().unwrap(), "apply", "shop/sensor-self");
    let refused = daemon.wait_for("the refusal", |e| {
        quarantine_of(e, &own.uid, "node", "refused")
    });
    assert_eq!(refused["sensor_quarantine"]["pod"], "sensor-self");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| quarantine_of(e, &own.uid, "node", "isolated")),
        "never isolated"
    );
    assert_eq!(connect_errno_to(&own, &backend), "0", "the network stays");
}
