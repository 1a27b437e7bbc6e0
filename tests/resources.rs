//! TracingPolicy resources, through the fake API server: a policy created
//! before the daemon starts enforces from its first moment, changes and
//! deletions take effect live, and a refused one carries the reason in its
//! status (under this node's name) while the others keep working.
mod common;

use apiserver_double::{FakeApi, TRACING_POLICIES, TRACING_POLICIES_NAMESPACED};
use common::*;
use serde_json::{json, Value};

fn kill_spec(bin: &str) -> Value {
    json!({"tracepoints": [{
        "subsystem": "sched", "event": "sched_process_exec",
        "selectors": [{
            "matchBinaries": [{"operator": "In", "values": [bin]}],
            "matchActions": [{"action": "Sigkill"}]
        }]
    }]})
}

fn resource(kind: &str, ns: Option<&str>, name: &str, spec: Value) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({"apiVersion": "cilium.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
}

#[test]
fn policy_resources_are_taken_changed_deleted_and_refused_with_a_status() {
    if !can_run("policy_resources_are_taken_changed_deleted_and_refused_with_a_status") {
        return;
    }
    let api = FakeApi::start();
    let node = format!("node-r-{}", std::process::id());
    let dir = TempDir::new();
    let bin = |name: &str| {
        let p = dir.path().join(name);
        std::fs::copy("/bin/true", &p).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (one, two) = (bin("one"), bin("two"));
    api.put(
        TRACING_POLICIES,
        resource("TracingPolicy", None, "kill-r", kill_spec(&one)),
    );
    let kubeconfig = api.kubeconfig(dir.path());
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::with_api(&kubeconfig, &node, &["--enforce-cgroup", &scope]);
    assert_eq!(
        cg.exit_code(&one),
        Some(137),
        "a resource listed at start enforces from the first moment"
    );
    let state = |res: &str, ns: &str, name: &str| {
        api.object(res, ns, name)
            .map(|o| o["status"]["nodes"][&node].clone())
            .unwrap_or_default()
    };
    eventually("the loaded status", || {
        state(TRACING_POLICIES, "", "kill-r")["state"] == "loaded"
    });

    api.put(
        TRACING_POLICIES,
        resource("TracingPolicy", None, "kill-r", kill_spec(&two)),
    );
    eventually("the change kills the new binary", || {
        cg.exit_code(&two) == Some(137)
    });
    assert_eq!(cg.exit_code(&one), Some(0), "and no longer the old one");
    eventually("the status follows the generation", || {
        state(TRACING_POLICIES, "", "kill-r")["observedGeneration"] == 2
    });

    let bad = json!({"kprobes": [{"call": "no_such_hook"}]});
    api.put(
        TRACING_POLICIES_NAMESPACED,
        resource("TracingPolicyNamespaced", Some("shop"), "bad-r", bad),
    );
    eventually("the refusal in the status", || {
        state(TRACING_POLICIES_NAMESPACED, "shop", "bad-r")["state"] == "refused"
    });
    let why = state(TRACING_POLICIES_NAMESPACED, "shop", "bad-r")["error"].clone();
    assert!(
        why.as_str()
            .unwrap_or("")
            .contains("shop/bad-r: spec.kprobes[0].call"),
        "{why}"
    );
    assert!(daemon
        .log_lines()
        .iter()
        .any(|l| l.contains("policy resource refused") && l.contains("bad-r")));
    assert_eq!(cg.exit_code(&two), Some(137), "the others keep working");

    api.delete(TRACING_POLICIES, "", "kill-r");
    eventually("a deleted resource stops", || cg.exit_code(&two) == Some(0));
}
