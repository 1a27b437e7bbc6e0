//! Pod context: processes in a cgroup named as kubelet names a container's
//! get Tetragon's `pod` object from the pods a fake API server (real HTTP)
//! holds for this node.
mod common;

use apiserver_double::{pod, FakeApi};
use common::*;
use serde_json::json;

fn exec_of(daemon: &Daemon, marker: &str) -> serde_json::Value {
    daemon.wait_for("exec in the pod", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["arguments"].as_str() == Some(marker))
    })
}

#[test]
fn events_of_a_pod_carry_its_pod_and_container() {
    if !can_run("events_of_a_pod_carry_its_pod_and_container") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-{}", std::process::id());
    let (uid, cid) = pod_ids();
    api.add_pod(pod(
        "shop",
        "frontend-5d8f7c9b4d-x2x9z",
        &uid,
        &node,
        &cid,
        json!({"app": "frontend", "tier": "web"}),
    ));
    // A pod of another node must not be watched.
    let (other_uid, other_cid) = pod_ids();
    api.add_pod(pod(
        "shop",
        "elsewhere",
        &other_uid,
        "another-node",
        &other_cid,
        json!({}),
    ));
    let dir = TempDir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let cg = TestCgroup::kubelet(&uid, &cid);
    let other = TestCgroup::kubelet(&other_uid, &other_cid);
    let daemon = Daemon::with_api(&kubeconfig, &node, &[]);

    assert!(cg
        .command("/bin/echo")
        .arg("in-the-pod")
        .status()
        .unwrap()
        .success());
    let e = exec_of(&daemon, "in-the-pod");
    let p = &e["process_exec"]["process"];
    let pod = &p["pod"];
    assert_eq!(pod["namespace"], "shop");
    assert_eq!(pod["name"], "frontend-5d8f7c9b4d-x2x9z");
    assert_eq!(pod["uid"], uid);
    assert_eq!(pod["container"]["id"], format!("containerd://{cid}"));
    assert_eq!(pod["container"]["name"], "app");
    assert_eq!(
        pod["container"]["image"]["name"],
        "registry.example/app:1.0"
    );
    assert_eq!(
        pod["container"]["image"]["id"],
        "registry.example/app@sha256:0123"
    );
    assert_eq!(pod["pod_labels"], json!({"app": "frontend", "tier": "web"}));
    assert_eq!(pod["workload"], "shop-web");
    assert_eq!(pod["workload_kind"], "Deployment");
    assert_eq!(p["docker"], cid[..31]);
    daemon.wait_for("exit in the pod", |e| {
        body(e, "process_exit").is_some_and(|b| {
            b["process"]["exec_id"] == p["exec_id"] && b["process"]["pod"]["name"] == pod["name"]
        })
    });

    // The other node's pod is unknown here: its events wait, then go out
    // without a pod (but with the container id from the cgroup).
    assert!(other
        .command("/bin/echo")
        .arg("not-our-node")
        .status()
        .unwrap()
        .success());
    let e = exec_of(&daemon, "not-our-node");
    assert!(e["process_exec"]["process"].get("pod").is_none());
    assert_eq!(e["process_exec"]["process"]["docker"], other_cid[..31]);

    // A host process has neither.
    assert!(std::process::Command::new("/bin/echo")
        .arg("on-the-host")
        .status()
        .unwrap()
        .success());
    let e = exec_of(&daemon, "on-the-host");
    assert!(e["process_exec"]["process"].get("pod").is_none());
    assert!(e["process_exec"]["process"].get("docker").is_none());
}

#[test]
fn an_event_before_its_pod_is_known_waits_for_it() {
    if !can_run("an_event_before_its_pod_is_known_waits_for_it") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-late-{}", std::process::id());
    let dir = TempDir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let (uid, cid) = pod_ids();
    let cg = TestCgroup::kubelet(&uid, &cid);
    let daemon = Daemon::with_api(&kubeconfig, &node, &[]);
    assert!(cg
        .command("/bin/echo")
        .arg("early")
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        daemon
            .events()
            .iter()
            .all(|e| !e.to_string().contains("\"early\"")),
        "the event waits"
    );
    api.add_pod(pod(
        "shop",
        "late-pod",
        &uid,
        &node,
        &cid,
        json!({"app": "late"}),
    ));
    let e = exec_of(&daemon, "early");
    assert_eq!(e["process_exec"]["process"]["pod"]["name"], "late-pod");
}

#[test]
fn namespaced_and_pod_selector_policies_act_only_on_their_pods() {
    if !can_run("namespaced_and_pod_selector_policies_act_only_on_their_pods") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-scoped-{}", std::process::id());
    let (shop_uid, shop_cid) = pod_ids();
    let (other_uid, other_cid) = pod_ids();
    api.add_pod(pod(
        "shop",
        "web",
        &shop_uid,
        &node,
        &shop_cid,
        json!({"app": "web"}),
    ));
    api.add_pod(pod(
        "other",
        "db",
        &other_uid,
        &node,
        &other_cid,
        json!({"app": "db"}),
    ));
    // A node of its own: the daemon fails closed for every pod there that
    // it cannot place, which must not reach other tests' pods.
    let node_cg = TestCgroup::new();
    let node_rel = node_cg.rel();
    let _kubepods = TestCgroup::at(&format!("{node_rel}/{KUBEPODS_BESTEFFORT}"));
    let shop = TestCgroup::kubelet_under(&node_rel, &shop_uid, &shop_cid);
    let other = TestCgroup::kubelet_under(&node_rel, &other_uid, &other_cid);
    let dir = TempDir::new();
    let echo = resolved("/bin/echo");
    let printf = resolved("/usr/bin/printf");
    let kill = |bin: &str| {
        format!("    - matchArgs: [{{index: 0, operator: Equal, values: [\"{bin}\"]}}]\n      matchActions: [{{action: Sigkill}}]\n")
    };
    let namespaced = kprobe_policy(
        "TracingPolicyNamespaced",
        "{name: no-echo, namespace: shop}",
        "security_bprm_check",
        "linux_binprm",
        &kill(&echo),
    );
    let namespaced = policy_file(&dir, "ns.yaml", &namespaced);
    // podSelector goes into spec, before kprobes.
    let selected = kprobe_policy(
        "TracingPolicy",
        "{name: no-printf-in-db}",
        "security_bprm_check",
        "linux_binprm",
        &kill(&printf),
    )
    .replace(
        "spec:\n",
        "spec:\n  podSelector: {matchLabels: {app: db}}\n",
    );
    let selected = policy_file(&dir, "sel.yaml", &selected);
    let kubeconfig = api.kubeconfig(dir.path());
    let scope = node_cg.0.to_string_lossy().into_owned();
    let _daemon = Daemon::with_api(
        &kubeconfig,
        &node,
        &[
            "--policy",
            &namespaced,
            "--policy",
            &selected,
            "--enforce-cgroup",
            &scope,
        ],
    );
    let run = |cg: &TestCgroup, bin: &str| {
        cg.command(bin)
            .arg("x")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        run(&shop, &echo).signal(),
        Some(9),
        "echo in namespace shop"
    );
    assert!(run(&other, &echo).success(), "echo in namespace other");
    assert!(run(&shop, &printf).success(), "printf in app=web");
    assert_eq!(run(&other, &printf).signal(), Some(9), "printf in app=db");
    assert!(
        std::process::Command::new(&echo)
            .arg("x")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success(),
        "echo on the host"
    );

    // A pod the watcher does not know yet cannot be placed: every scoped
    // policy holds for it (fail closed), until the watcher shows where it
    // belongs, here outside both scopes.
    let (late_uid, late_cid) = pod_ids();
    let late = TestCgroup::kubelet_under(&node_rel, &late_uid, &late_cid);
    assert_eq!(
        run(&late, &echo).signal(),
        Some(9),
        "echo in an unknown pod"
    );
    assert_eq!(
        run(&late, &printf).signal(),
        Some(9),
        "printf in an unknown pod"
    );
    api.add_pod(pod(
        "elsewhere",
        "late",
        &late_uid,
        &node,
        &late_cid,
        json!({"app": "late"}),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !run(&late, &echo).success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the late pod leaves the scopes within 5 s of being known"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        run(&late, &printf).success(),
        "printf in the known late pod"
    );
    assert_eq!(
        run(&shop, &echo).signal(),
        Some(9),
        "echo in namespace shop, still"
    );
}
