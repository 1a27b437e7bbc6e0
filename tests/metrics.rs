//! Operations: the Prometheus scrape moves with what happened (an exec, a
//! kill, a brain alert and quarantine with its label, records lost to a
//! full ring buffer), the label filter drops what it is told to, and the
//! health endpoints tell a sensor still coming up from one doing its job.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use apiserver_double::FakeApi;
use common::pod::Node;
use common::*;

const UPLOAD_RULE: &str = "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata:\n  name: metrics-upload\nspec:\n  on: exec\n  inPod: true\n  binary: {operator: Postfix, values: [/curl]}\n  arguments: {anyOf: [\"-d\"]}\n  actions: [alert, quarantine]\n";

#[test]
fn counters_move_with_execs_kills_alerts_and_quarantines() {
    if !can_run("counters_move_with_execs_kills_alerts_and_quarantines") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-m-{}", std::process::id());
    let net = Node::new();
    let web = net.pod(&api, &node, "web");
    let dir = TempDir::new();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let blocked = copy_true(&dir, "metrics-blocked");
    let marker = copy_true(&dir, "metrics-marker");
    std::fs::write(
        policies.join("kill.yaml"),
        kill_policy("metrics-kill", &blocked),
    )
    .unwrap();
    std::fs::write(policies.join("brain.yaml"), UPLOAD_RULE).unwrap();
    // A file the daemon refuses: Tetragon's `load_error` state.
    std::fs::write(
        policies.join("broken.yaml"),
        kill_policy("metrics-broken", &marker).replace("Sigkill", "Sigkil"),
    )
    .unwrap();
    let scope = web.cg.0.to_string_lossy().into_owned();
    let kubeconfig = api.kubeconfig(dir.path());
    let daemon = Daemon::with_api(
        &kubeconfig,
        &node,
        &[
            "--policy-dir",
            policies.to_str().unwrap(),
            "--enforce-cgroup",
            &scope,
        ],
    );
    let exec_of = |m: &Metrics, bin: &str| {
        m.sum(
            "tetragon_events_total",
            &[
                ("type", "PROCESS_EXEC"),
                ("namespace", "shop"),
                ("pod", "web"),
                ("binary", bin),
            ],
        )
    };
    let before = daemon.scrape();
    assert_eq!(exec_of(&before, &marker), 0.0);
    assert_eq!(
        before.sum(
            "tetragon_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        before.sum("tetragon_tracingpolicy_loaded", &[("state", "enabled")]),
        1.0,
        "{}",
        before.0
    );
    assert_eq!(
        before.sum("tetragon_tracingpolicy_loaded", &[("state", "load_error")]),
        1.0,
        "{}",
        before.0
    );

    // An exec, counted with its pod and binary.
    assert_eq!(web.command(&marker).status().unwrap().code(), Some(0));
    eventually("the exec counted", || {
        exec_of(&daemon.scrape(), &marker) == 1.0
    });

    // A kill: a policy event of the policy.
    let status = web.command(&blocked).status().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    eventually("the kill counted", || {
        daemon.scrape().sum(
            "tetragon_policy_events_total",
            &[
                ("policy", "metrics-kill"),
                ("pod", "web"),
                ("binary", &blocked),
            ],
        ) == 1.0
    });

    // An upload: the brain's alert, the node isolation, the label.
    web.sh("curl -s -o /dev/null --max-time 2 -d x http://127.0.0.1:1/; true");
    eventually("the quarantine counted", || {
        let m = daemon.scrape();
        m.sum("sensor_brain_alerts_total", &[("rule", "metrics-upload")]) == 1.0
            && m.sum(
                "sensor_brain_rule_matches_total",
                &[("rule", "metrics-upload")],
            ) >= 1.0
            && m.sum(
                "sensor_quarantines_total",
                &[
                    ("rule", "metrics-upload"),
                    ("stage", "node"),
                    ("outcome", "isolated"),
                ],
            ) == 1.0
            && m.sum("sensor_label_patches_total", &[("result", "ok")]) == 1.0
            && m.sum("sensor_decision_to_kernel_seconds_count", &[]) == 1.0
    });
    // Gauges come with the slow tick, and map entries are counted only
    // every 10 s: a wait of 10 s can fall just short of the next count.
    eventually_within("the gauges", Duration::from_secs(25), || {
        let m = daemon.scrape();
        m.sum("sensor_quarantined_cgroups", &[]) == 1.0
            && m.sum("sensor_pending_labels", &[]) == 0.0
            && m.sum("tetragon_process_cache_size", &[]) > 0.0
            && m.sum("tetragon_map_capacity", &[("map", "PROCS")]) == 65536.0
            && m.sum("tetragon_map_entries", &[("map", "QUARANTINE")]) == 1.0
    });
    // The quarantined pod's next connect is refused in the kernel, counted
    // there rather than sent as a record.
    web.sh("curl -s -o /dev/null --max-time 2 http://127.0.0.1:1/; true");
    eventually("the refused connect counted", || {
        daemon
            .scrape()
            .sum("sensor_quarantine_refusals_total", &[("kind", "connects")])
            >= 1.0
    });
    // The broken file mended: taken, and no longer an error.
    std::fs::write(
        policies.join("broken.yaml"),
        kill_policy("metrics-broken", &marker),
    )
    .unwrap();
    eventually("the mended file counted", || {
        let m = daemon.scrape();
        m.sum("tetragon_tracingpolicy_loaded", &[("state", "load_error")]) == 0.0
            && m.sum("tetragon_tracingpolicy_loaded", &[("state", "enabled")]) == 2.0
    });
    let m = daemon.scrape();
    assert_eq!(
        m.sum("tetragon_missed_events_total", &[]),
        0.0,
        "nothing lost"
    );
    assert!(m.sum("tetragon_observer_ringbuf_events_received_total", &[]) >= 3.0);
}

#[test]
fn a_full_ring_buffer_is_counted() {
    if !can_run("a_full_ring_buffer_is_counted") {
        return;
    }
    let cg = TestCgroup::new();
    // One page, and execs whose 3,000-byte arguments fill it one record at
    // a time: a burst overflows it between two drains.
    let daemon = Daemon::start(&["--ring-buffer-size", "4096"]);
    let status = cg
        .command("/bin/sh")
        .args([
            "-c",
            "a=$(head -c 3000 /dev/zero | tr '\\0' x); for i in $(seq 3000); do /bin/true $a; done",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("records lost counted", || {
        let m = daemon.scrape();
        let missed = m.sum("tetragon_missed_events_total", &[]);
        missed > 0.0
            && m.sum("tetragon_observer_ringbuf_events_lost_total", &[]) == missed
            && m.sum("tetragon_bpf_missed_events_total", &[("error", "ENOSPC")]) == missed
    });
    // And an event in the stream, not only a log line.
    let e = daemon.wait_for("the loss as an event", |e| {
        e["sensor_alert"]["rule"] == "ring-buffer-full"
    });
    assert!(e["sensor_alert"]["count"].as_u64().unwrap_or(0) > 0, "{e}");
}

#[test]
fn the_label_filter_drops_pod_and_binary_labels() {
    if !can_run("the_label_filter_drops_pod_and_binary_labels") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&["--metrics-label-filter", "namespace"]);
    assert_eq!(cg.command("/bin/true").status().unwrap().code(), Some(0));
    eventually("an exec counted", || {
        daemon
            .scrape()
            .sum("tetragon_events_total", &[("type", "PROCESS_EXEC")])
            > 0.0
    });
    let m = daemon.scrape();
    assert!(
        !m.0.contains("binary=\"/"),
        "a binary label survived the filter: {}",
        m.0
    );
    assert_eq!(
        m.sum(
            "tetragon_events_total",
            &[("type", "PROCESS_EXEC"), ("binary", "")]
        ),
        m.sum("tetragon_events_total", &[("type", "PROCESS_EXEC")])
    );

    let out = std::process::Command::new(SENSOR)
        .args(["run", "--metrics-label-filter", "namespace,container"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"container\""));
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn health_says_live_then_ready_when_programs_and_pods_are_in() {
    if !can_run("health_says_live_then_ready_when_programs_and_pods_are_in") {
        return;
    }
    // An API server that accepts connections and never answers: the daemon
    // waits for its pod watcher before it attaches anything.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = TempDir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let health = addr.to_string();
    let kc = kubeconfig.to_string_lossy().into_owned();
    let starting = std::thread::spawn(move || {
        Daemon::start(&["--kubeconfig", &kc, "--health-server-address", &health])
    });

    // Coming up: alive, not ready, and it says why.
    eventually("the health server answers", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let (live, _) = http_get(addr, "/healthz");
    let (ready, body) = http_get(addr, "/readyz");
    assert_eq!(live, 200);
    assert_eq!(ready, 503);
    assert!(body.contains("programs attached: no"), "{body}");

    // Ready for programs and policies, still not for the pod watcher.
    let daemon = starting.join().unwrap();
    let (ready, body) = http_get(addr, "/readyz");
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("programs attached: yes"), "{body}");
    assert!(body.contains("policies in the kernel: yes"), "{body}");
    assert!(body.contains("pod watcher: syncing"), "{body}");
    assert_eq!(http_get(addr, "/healthz").0, 200);
    drop(daemon);
    drop(silent);

    // Standalone, nothing to wait for: ready.
    let daemon = Daemon::start(&[]);
    let h = daemon.health.expect("a health server");
    let (ready, body) = http_get(h, "/readyz");
    assert_eq!(ready, 200, "{body}");
    assert!(body.contains("pod watcher: no Kubernetes API"), "{body}");
    assert_eq!(http_get(h, "/nope").0, 404);
}
