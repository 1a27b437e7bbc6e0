//! Enforcement that outlives the daemon: the pinned set keeps killing and
//! isolating through a crash (`kill -9`), the next daemon adopts it without
//! attaching anything twice, an upgrade swaps sets with no gap, and a
//! daemon stopped without `--keep-on-exit` leaves nothing behind. Each test
//! pins under a `--bpf-dir` of its own.
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use apiserver_double::FakeApi;
use common::pod::Node;
use common::*;

/// A copy of `true` that the policy kills, and the policy, in `dir`.
fn blocked_binary(dir: &TempDir) -> (String, String) {
    let bin = dir.path().join("blocked");
    std::fs::copy("/bin/true", &bin).expect("copying true");
    let bin = bin.to_string_lossy().into_owned();
    let policy = policy_file(
        dir,
        "kill-blocked.yaml",
        &format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: kill-blocked\nspec:\n  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    selectors:\n    - matchBinaries:\n      - operator: In\n        values: [\"{bin}\"]\n      matchActions:\n      - action: Sigkill\n"
        ),
    );
    (bin, policy)
}

/// (program, links in the kernel) of each pinned program, from `sensor status`.
fn links_per_program(status: &str) -> Vec<(String, usize)> {
    status
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let name = l.split_whitespace().next()?;
            let links = l.split("links=").nth(1)?.parse().ok()?;
            Some((name.to_string(), links))
        })
        .collect()
}

#[test]
fn kill_9_leaves_the_reflex_and_the_quarantine_enforcing_and_the_next_daemon_adopts_them() {
    if !can_run(
        "kill_9_leaves_the_reflex_and_the_quarantine_enforcing_and_the_next_daemon_adopts_them",
    ) {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-p-{}", std::process::id());
    let net = Node::new();
    let backend = net.pod(&api, &node, "backend");
    let _server = backend.serve_http();
    let frontend = net.pod(&api, &node, "frontend");
    let other = net.pod(&api, &node, "other");
    let dir = TempDir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let kc = kubeconfig.to_str().unwrap();
    let (bin, policy) = blocked_binary(&dir);
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let bpf = BpfDir::new();
    let state = dir.path().join("state");
    let args = [
        "--policy",
        &policy,
        "--enforce-cgroup",
        &scope,
        "--bpf-dir",
        bpf.arg(),
        "--state-dir",
        state.to_str().unwrap(),
        "--keep-on-exit",
    ];
    let mut first = Daemon::with_api(&kubeconfig, &node, &args);
    assert_eq!(cg.exit_code(&bin), Some(137), "the reflex kills");
    quarantine_by_hand(kc, "apply", "shop/frontend");
    first.wait_for("isolation", |e| {
        e["sensor_quarantine"]["pod_uid"] == frontend.uid.as_str()
            && e["sensor_quarantine"]["outcome"] == "isolated"
    });
    assert_ne!(frontend.curl(&backend.url()), Some(0), "quarantined");
    let sorted = |mut v: Vec<u32>| {
        v.sort_unstable();
        v
    };
    let links_before = sorted(parse_ids(&first.ready, "links"));

    first.kill9();
    assert_eq!(
        cg.exit_code(&bin),
        Some(137),
        "with no daemon, the pinned reflex still kills"
    );
    assert_ne!(
        frontend.curl(&backend.url()),
        Some(0),
        "with no daemon, the quarantined pod still cannot connect"
    );
    assert_eq!(other.curl(&backend.url()), Some(0), "another pod still can");
    assert_eq!(cg.exit_code("/bin/true"), Some(0), "other binaries run");
    // The packet-socket guard is a pinned link on every kernel (a raw
    // tracepoint before 5.15): it holds with no daemon.
    assert_eq!(
        frontend.open_socket("AF_PACKET, socket.SOCK_RAW"),
        Some(137),
        "with no daemon, no packet socket for the quarantined pod"
    );

    let second = Daemon::with_api(&kubeconfig, &node, &args);
    assert!(second.ready.contains("origin=Adopted"), "{}", second.ready);
    assert_eq!(
        sorted(second.program_ids.clone()),
        sorted(first.program_ids.clone()),
        "the same programs, none loaded again"
    );
    assert_eq!(sorted(parse_ids(&second.ready, "links")), links_before);
    let links = links_per_program(&bpf.status());
    assert_eq!(links.len(), first.program_ids.len(), "{}", bpf.status());
    for (program, n) in &links {
        assert_eq!(*n, 1, "{program} is attached once: {}", bpf.status());
    }
    // Events flow again, through the adopted ring buffer.
    assert_eq!(cg.exit_code(&bin), Some(137));
    second.wait_for("the blocked exec, killed", |e| {
        is(e, "process_exec", &bin) && e["process_exec"]["process"]["pid"].as_u64().is_some()
    });
    assert_ne!(frontend.curl(&backend.url()), Some(0), "still quarantined");
    // The packet-socket guard holds too, as part of the adopted set.
    assert_eq!(
        frontend.open_socket("AF_PACKET, socket.SOCK_RAW"),
        Some(137),
        "no packet socket for the quarantined pod after the adoption"
    );
    assert_eq!(other.open_socket("AF_PACKET, socket.SOCK_RAW"), Some(0));
    // The adopted quarantine is the new daemon's: the label's removal lifts it.
    quarantine_by_hand(kc, "release", "shop/frontend");
    eventually("the frontend reaches the backend again", || {
        frontend.curl(&backend.url()) == Some(0)
    });
}

/// Runs `bin` in `cg` in a tight loop until `stop` exists; the file it
/// writes gets one exit status per line.
fn prober(cg: &TestCgroup, bin: &str, stop: &Path, out: &Path) -> std::process::Child {
    cg.command("/bin/sh")
        .args([
            "-c",
            &format!(
                "while [ ! -e '{}' ]; do '{bin}'; echo $?; done > '{}' 2>/dev/null",
                stop.display(),
                out.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the prober")
}

/// (link id, program id, program name) of every link whose program is one
/// of the sensor's, for failure messages.
fn sensor_links() -> Vec<(u32, u32, String)> {
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    aya::programs::loaded_links()
        .flatten()
        .filter_map(|l| {
            let name = names.get(&l.program_id())?;
            name.starts_with("snsr_")
                .then(|| (l.id(), l.program_id(), name.clone()))
        })
        .collect()
}

#[test]
fn an_upgrade_swaps_the_pinned_set_with_no_gap_and_a_plain_stop_removes_it() {
    if !can_run("an_upgrade_swaps_the_pinned_set_with_no_gap_and_a_plain_stop_removes_it") {
        return;
    }
    let dir = TempDir::new();
    let (bin, policy) = blocked_binary(&dir);
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let bpf = BpfDir::new();
    let mut old = Daemon::start(&[
        "--policy",
        &policy,
        "--enforce-cgroup",
        &scope,
        "--bpf-dir",
        bpf.arg(),
        "--keep-on-exit",
    ]);
    let (stop, out) = (dir.path().join("stop"), dir.path().join("probe"));
    let mut probe = prober(&cg, &bin, &stop, &out);
    // A rolling update: the old daemon is told to stop, the new build starts.
    assert!(old.stop().success());
    let new = Daemon::start_with_env(
        &[
            "--policy",
            &policy,
            "--enforce-cgroup",
            &scope,
            "--bpf-dir",
            bpf.arg(),
        ],
        &[("SENSOR_BUILD_ID", "upgrade-test")],
    );
    assert!(new.ready.contains("origin=Replaced"), "{}", new.ready);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    let _ = probe.wait();
    let codes = std::fs::read_to_string(&out).unwrap();
    let killed = codes.lines().filter(|l| *l == "137").count();
    let survived = codes.lines().filter(|l| *l != "137").count();
    eprintln!("prober: {killed} killed, {survived} survived");
    assert!(killed > 10, "the prober ran through the swap: {codes}");
    assert_eq!(survived, 0, "no exec escaped during the swap");
    let status = bpf.status();
    assert!(status.contains("/upgrade-test (complete)"), "{status}");
    assert_eq!(
        status.lines().filter(|l| l.starts_with("set ")).count(),
        1,
        "the old set is gone: {status}"
    );

    // Without --keep-on-exit, stopping removes everything.
    let mut new = new;
    assert!(new.stop().success());
    // Detached programs can run on for a moment (an RCU grace period; long
    // under emulation on 5.10).
    let deadline = Instant::now() + Duration::from_secs(5);
    while cg.exit_code(&bin) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "nothing enforces 5 s after the stop; {}; kernel links: {:?}; programs: {:?}",
            bpf.status(),
            sensor_links(),
            aya::programs::loaded_programs()
                .flatten()
                .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("snsr_")))
                .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bpf.status().contains("nothing pinned"), "{}", bpf.status());
}

#[test]
fn a_pending_decision_in_the_state_file_is_isolated_again_at_start() {
    if !can_run("a_pending_decision_in_the_state_file_is_isolated_again_at_start") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-s-{}", std::process::id());
    let net = Node::new();
    let backend = net.pod(&api, &node, "backend");
    let _server = backend.serve_http();
    let frontend = net.pod(&api, &node, "frontend");
    let dir = TempDir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // What a daemon that died before the label landed left behind.
    let decision = serde_json::json!([{
        "namespace": "shop",
        "name": "frontend",
        "uid": frontend.uid,
        "rule": "test-rule",
        "exec_ids": [],
        "time": "2026-11-26T00:00:00Z"
    }]);
    std::fs::write(state.join("pending-quarantines.json"), decision.to_string()).unwrap();
    assert_eq!(frontend.curl(&backend.url()), Some(0), "before: connected");
    let daemon = Daemon::with_api(
        &kubeconfig,
        &node,
        &["--state-dir", state.to_str().unwrap()],
    );
    assert_ne!(
        frontend.curl(&backend.url()),
        Some(0),
        "isolated from the state file at start"
    );
    daemon.wait_for("the restored isolation", |e| {
        e["sensor_quarantine"]["pod_uid"] == frontend.uid.as_str()
            && e["sensor_quarantine"]["stage"] == "node"
            && e["sensor_quarantine"]["outcome"] == "isolated"
            && e["sensor_quarantine"]["rule"] == "test-rule"
    });
    eventually("the label lands", || {
        api.pod("shop", "frontend").unwrap()["metadata"]["labels"]["quarantine"] == "true"
    });
    daemon.wait_for("the label outcome", |e| {
        e["sensor_quarantine"]["pod_uid"] == frontend.uid.as_str()
            && e["sensor_quarantine"]["outcome"] == "labelled"
    });
}
