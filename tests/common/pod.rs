//! Test pods as kubelet and a CNI make them: a cgroup named as kubelet names
//! a container's, and a network namespace of the pod's own whose `eth0` is
//! one end of a veth pair. The other ends are in a "node" namespace that
//! routes between the pods, as a CNI's host routing does, so that nothing of
//! the host's own network changes. Commands run in a pod join its cgroup and
//! its network namespace before they exec.
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use apiserver_double::{pod, FakeApi};
use serde_json::json;

pub use super::netns::{HttpServer, PORT};

use super::netns::ip;
use super::{pod_ids, TestCgroup};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The node's pod network: 10.204.0.0/24, a /30 per pod. Every node is a
/// world of its own (nothing routes to the host), so nodes of parallel tests
/// may use the same addresses.
pub struct Node {
    ns: String,
    pods: AtomicU32,
}

impl Node {
    pub fn new() -> Node {
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let ns = format!("snsr-node-{pid}-{n}");
        ip(&["netns", "add", &ns]);
        in_ns(&ns, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Node {
            ns,
            pods: AtomicU32::new(0),
        }
    }

    /// A pod in namespace `shop` of the fake API server, with its cgroup
    /// and its network.
    pub fn pod(&self, api: &FakeApi, node_name: &str, name: &str) -> NetPod {
        let (uid, cid) = pod_ids();
        api.add_pod(pod(
            "shop",
            name,
            &uid,
            node_name,
            &cid,
            json!({"app": name}),
        ));
        let i = self.pods.fetch_add(1, Ordering::Relaxed);
        assert!(i < 63, "a /30 per pod in a /24");
        let (gw, addr) = (
            format!("10.204.0.{}", 4 * i + 1),
            format!("10.204.0.{}", 4 * i + 2),
        );
        let ns = format!("{}-{i}", self.ns);
        // Made straight in the two namespaces, so the names need not be
        // unique on the host.
        let outer = format!("pod{i}");
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &outer, "netns",
            &self.ns,
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &gw]);
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{gw}/30"),
            "dev",
            &outer,
        ]);
        ip(&["-n", &self.ns, "link", "set", &outer, "up"]);
        let netns = CString::new(format!("/run/netns/{ns}")).expect("no NUL");
        NetPod {
            name: name.to_string(),
            cg: TestCgroup::kubelet(&uid, &cid),
            uid,
            ip: addr,
            ns,
            netns,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn in_ns(ns: &str, cmd: &[&str]) {
    let mut args = vec!["netns", "exec", ns];
    args.extend_from_slice(cmd);
    ip(&args);
}

pub struct NetPod {
    pub name: String,
    pub uid: String,
    /// The pod's address on `eth0`.
    pub ip: String,
    pub cg: TestCgroup,
    ns: String,
    netns: CString,
}

impl NetPod {
    /// curl's exit status for `url` from this pod (0 reached, 7 refused,
    /// 28 timed out).
    pub fn curl(&self, url: &str) -> Option<i32> {
        self.sh(&format!(
            "curl -s -o /dev/null --max-time 3 '{url}'; exit $?"
        ))
    }

    /// A command that joins this pod's network namespace and cgroup before
    /// it execs.
    pub fn command(&self, program: &str) -> Command {
        let mut c = self.cg.command(program);
        let netns = self.netns.clone();
        // SAFETY: only open, setns and close run between fork and exec; the
        // path was allocated before the fork.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::setns(fd, libc::CLONE_NEWNET);
                libc::close(fd);
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    }

    /// Runs a shell script in the pod; its exit code (None if signalled).
    pub fn sh(&self, script: &str) -> Option<i32> {
        self.command("/bin/sh")
            .args(["-c", script])
            .status()
            .expect("running sh in the pod")
            .code()
    }

    /// A real HTTP server in this pod, on `PORT`, once it listens.
    /// Exit status of a python3 in this pod that opens a socket of
    /// `family, type` (`"AF_PACKET, socket.SOCK_RAW"`; 128 + signal when
    /// killed).
    pub fn open_socket(&self, args: &str) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let st = self
            .command("/usr/bin/python3")
            .args([
                "-c",
                &format!("import socket; socket.socket(socket.{args}).close()"),
            ])
            .status()
            .unwrap();
        st.code().or(st.signal().map(|s| 128 + s))
    }

    pub fn serve_http(&self) -> HttpServer {
        let log = std::env::temp_dir().join(format!("{}.log", self.ns));
        HttpServer::start(self.command("/usr/bin/python3"), log, &[])
    }

    pub fn url(&self) -> String {
        format!("http://{}:{PORT}/", self.ip)
    }
}

impl Drop for NetPod {
    fn drop(&mut self) {
        // The cgroup's drop kills what still runs in the pod afterwards.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
