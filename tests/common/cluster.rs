//! A node of test pods known to a fake API server, a backend serving HTTP,
//! and the real daemon with the shipped policies: what the scenario and
//! label tests share.
use apiserver_double::FakeApi;
use serde_json::Value;

use super::pod::{HttpServer, NetPod, Node, PORT};
use super::{shipped, Daemon, TempDir};

pub struct Cluster {
    pub api: FakeApi,
    pub node_name: String,
    pub net: Node,
    pub dir: TempDir,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            api: FakeApi::start(),
            node_name: format!("node-s-{}", std::process::id()),
            net: Node::new(),
            dir: TempDir::new(),
        }
    }

    pub fn pod(&self, name: &str) -> NetPod {
        self.net.pod(&self.api, &self.node_name, name)
    }

    /// The backend pod, serving HTTP.
    pub fn backend(&self) -> (NetPod, HttpServer) {
        let backend = self.pod("backend");
        let server = backend.serve_http();
        (backend, server)
    }

    /// The daemon with the shipped policies, reflexes scoped to `enforced`.
    pub fn daemon(&self, enforced: &[&NetPod], state: &str) -> Daemon {
        self.daemon_under(&[], enforced, state)
    }

    /// As [`Cluster::daemon`], run by `wrapper` (see `Daemon::start_under`).
    pub fn daemon_under(&self, wrapper: &[&str], enforced: &[&NetPod], state: &str) -> Daemon {
        let kubeconfig = self.api.kubeconfig(self.dir.path());
        let policies = shipped("");
        let scopes: Vec<String> = enforced
            .iter()
            .map(|p| p.cg.0.parent().unwrap().to_string_lossy().into_owned())
            .collect();
        let mut args = vec!["--policy-dir", &policies, "--state-dir", state];
        for s in &scopes {
            args.extend(["--enforce-cgroup", s.as_str()]);
        }
        let kc = kubeconfig.to_str().expect("utf-8 path");
        let mut all = vec!["--kubeconfig", kc, "--node-name", &self.node_name];
        all.extend_from_slice(&args);
        Daemon::start_under(wrapper, &all, &[])
    }

    pub fn state(&self) -> String {
        self.dir.path().join("state").to_string_lossy().into_owned()
    }
}

/// errno of a TCP connect from `pod` to `backend`'s HTTP port (0 = connected).
pub fn connect_errno_to(pod: &NetPod, backend: &NetPod) -> String {
    super::connect_errno(
        pod.command("/usr/bin/python3"),
        "AF_INET",
        &backend.ip,
        PORT,
    )
}

pub fn quarantine_of(e: &Value, uid: &str, stage: &str, outcome: &str) -> bool {
    let q = &e["sensor_quarantine"];
    q["pod_uid"] == uid && q["stage"] == stage && q["outcome"] == outcome
}

pub fn labelled(api: &FakeApi, name: &str) -> bool {
    api.pod("shop", name)
        .is_some_and(|p| p["metadata"]["labels"]["quarantine"] == "true")
}
