//! The four attack scenarios end to end, with the shipped `policies/`: two
//! test pods (cgroups named as kubelet names them) known to a fake API server
//! (real HTTP), a backend in a network namespace of the test's own, and the
//! real daemon. Reflexes are scoped to the test pods' cgroups.
mod common;

use std::process::Command;

use apiserver_double::{pod, FakeApi};
use common::netns::{Backend, PORT};
use common::*;
use serde_json::{json, Value};

struct Cluster {
    api: FakeApi,
    node: String,
    backend: Backend,
    dir: TempDir,
}

struct TestPod {
    uid: String,
    cg: TestCgroup,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            api: FakeApi::start(),
            node: format!("node-s-{}", std::process::id()),
            backend: Backend::start(),
            dir: TempDir::new(),
        }
    }

    fn pod(&self, name: &str) -> TestPod {
        let (uid, cid) = pod_ids();
        self.api.add_pod(pod(
            "shop",
            name,
            &uid,
            &self.node,
            &cid,
            json!({"app": name}),
        ));
        TestPod {
            uid: uid.clone(),
            cg: TestCgroup::kubelet(&uid, &cid),
        }
    }

    /// The daemon with the shipped policies, reflexes scoped to `pods`.
    fn daemon(&self, pods: &[&TestPod], state: &str) -> Daemon {
        let kubeconfig = self.api.kubeconfig(self.dir.path());
        let policies = shipped("");
        let scopes: Vec<String> = pods
            .iter()
            .map(|p| p.cg.0.parent().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut args = vec!["--policy-dir", &policies, "--state-dir", state];
        for s in &scopes {
            args.extend(["--enforce-cgroup", s.as_str()]);
        }
        Daemon::with_api(&kubeconfig, &self.node, &args)
    }

    fn state(&self) -> String {
        self.dir.path().join("state").to_string_lossy().into_owned()
    }
}

impl TestPod {
    fn sh(&self, script: &str) -> Option<i32> {
        self.cg
            .command("/bin/sh")
            .args(["-c", script])
            .status()
            .unwrap()
            .code()
    }

    /// errno of a TCP connect from this pod (0 = connected).
    fn connect_errno(&self, addr: &str) -> String {
        let script = format!("import socket\ns=socket.socket()\ns.settimeout(3)\nprint(s.connect_ex(('{addr}', {PORT})))");
        let out = self
            .cg
            .command("/usr/bin/python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn quarantine_of(e: &Value, uid: &str, stage: &str, outcome: &str) -> bool {
    let q = &e["sensor_quarantine"];
    q["pod_uid"] == uid && q["stage"] == stage && q["outcome"] == outcome
}

fn labelled(api: &FakeApi, name: &str) -> bool {
    api.pod("shop", name)
        .is_some_and(|p| p["metadata"]["labels"]["quarantine"] == "true")
}

#[test]
fn baseline_exfiltration_reflex_and_evasion() {
    if !can_run("baseline_exfiltration_reflex_and_evasion") {
        return;
    }
    let c = Cluster::new();
    let frontend = c.pod("frontend");
    let fresh = c.pod("frontend-fresh");
    let evader = c.pod("frontend-evader");
    let daemon = c.daemon(&[&frontend, &fresh, &evader], &c.state());
    let url = c.backend.url();

    // 1. Baseline: the request succeeds and its events carry the pod.
    assert_eq!(
        frontend.sh(&format!(
            "python3 -c \"import urllib.request; urllib.request.urlopen('{url}')\""
        )),
        Some(0)
    );
    daemon.wait_for("baseline exec with pod", |e| {
        e["process_exec"]["process"]["pod"]["name"] == "frontend"
    });

    // 2. Exfiltration: the reflex kills curl, and the brain quarantines the pod.
    assert_eq!(
        frontend.sh(&format!("curl -s -d @/etc/hostname {url}; exit $?")),
        Some(137)
    );
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
    assert_eq!(
        frontend.connect_errno(&c.backend.v4),
        "1",
        "the frontend's next connect is denied (EPERM)"
    );
    assert!(labelled(&c.api, "frontend"));
    assert!(
        !labelled(&c.api, "frontend-fresh") && !labelled(&c.api, "frontend-evader"),
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
    assert_eq!(
        fresh.connect_errno(&c.backend.v4),
        "0",
        "the backend still serves other clients"
    );
    assert!(Command::new("curl")
        .args(["-s", "-o", "/dev/null", &url])
        .status()
        .unwrap()
        .success());

    // 3. Reflex: curl in a fresh pod dies with 137, and the pod is not quarantined.
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

    // 4. Evasion: curl renamed sleep slips past the name-based reflex; the brain
    //    sees a "sleep" that connects and quarantines the pod.
    let tools = TempDir::new();
    let sleep = tools.path().join("sleep");
    std::fs::copy("/usr/bin/curl", &sleep).unwrap();
    // The quarantine may cut the request off mid-way: curl then times out.
    let code = evader.sh(&format!(
        "{} -s -o /dev/null --max-time 3 {url}; exit $?",
        sleep.display()
    ));
    assert_ne!(code, Some(137), "the name-based reflex missed it");
    daemon.wait_for("evasion alert", |e| {
        e["sensor_alert"]["rule"] == "evasion-renamed-binary"
            && e["sensor_alert"]["process"]["pod"]["name"] == "frontend-evader"
    });
    daemon.wait_for("evader isolated", |e| {
        quarantine_of(e, &evader.uid, "node", "isolated")
    });
    assert_eq!(evader.connect_errno(&c.backend.v4), "1");

    // A real sleep under a process named kubelet, outside the pods: nothing.
    let kubelet = tools.path().join("kubelet");
    std::fs::copy("/bin/sh", &kubelet).unwrap();
    assert!(Command::new(&kubelet)
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
}

#[test]
fn label_retries_through_errors_and_survives_a_restart_exactly_once() {
    if !can_run("label_retries_through_errors_and_survives_a_restart_exactly_once") {
        return;
    }
    let c = Cluster::new();
    let a = c.pod("retried");
    let b = c.pod("restarted");
    let url = c.backend.url();

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
    assert_eq!(b.connect_errno(&c.backend.v4), "1");
}
