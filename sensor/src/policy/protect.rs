//! Self-protection: a policy that would kill (or deny the exec or every
//! connect of) the sensor itself, PID 1, the kubelet or the container
//! runtime is refused, unless it says so with the annotation
//! `sensor.io/allow-protected: "true"`. A typo in a `NotIn` list must not
//! take the node down or blind the sensor: an immune system that attacks
//! its own host is the failure it exists to prevent.
//!
//! A selector harms a protected binary when it acts (Sigkill, Signal,
//! Override), has no connection filter (so the binary alone decides), and
//! its `matchBinaries` and path filters admit that binary's path.
//! Pod-scoped policies cannot reach host processes; the sensor's own pod is
//! kept out of their scopes at run time (`scopes`). The brain's `kill` rules
//! outside pods get the same check (`brain::rule`, `spec.allowProtected`),
//! and a kill never signals PID 1, the sensor or a protected binary, nor
//! does a quarantine take the sensor's own pod (`antibody`).
use std::sync::OnceLock;

use super::{Selector, StrMatch};

/// The annotation that lets a policy act on protected binaries.
pub const ALLOW_ANNOTATION: &str = "sensor.io/allow-protected";

/// File names of the node's agents: killing one stops pods from starting
/// or being managed.
const AGENTS: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "crun",
    "conmon",
    "crio",
    "dockerd",
    "cri-dockerd",
];
const AGENT_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin", "/sbin"];

/// The protected paths, each with what it is.
pub struct Protected {
    paths: Vec<(String, String)>,
}

impl Protected {
    /// This node's: the sensor's own executable and PID 1's, as the kernel
    /// resolves them, and the agents where packages install them.
    pub fn of_this_node() -> &'static Protected {
        static P: OnceLock<Protected> = OnceLock::new();
        P.get_or_init(|| {
            let mut paths = Vec::new();
            for (link, what) in [
                ("/proc/self/exe", "the sensor itself"),
                ("/proc/1/exe", "PID 1"),
            ] {
                if let Ok(p) = std::fs::read_link(link) {
                    paths.push((p.to_string_lossy().into_owned(), what.to_string()));
                }
            }
            for dir in AGENT_DIRS {
                for name in AGENTS {
                    paths.push((format!("{dir}/{name}"), format!("the node agent {name}")));
                }
            }
            Protected { paths }
        })
    }

    /// Whether `path` is a protected binary.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|(p, _)| p == path)
    }

    /// The first protected binary that `binary` (absent: any) admits, with
    /// what it is; for the brain's rules.
    pub fn admitted_by(&self, binary: Option<&StrMatch>) -> Option<(&str, &str)> {
        self.paths
            .iter()
            .find(|(p, _)| binary.is_none_or(|m| admits(m, p)))
            .map(|(p, what)| (p.as_str(), what.as_str()))
    }

    /// The first protected binary `sel` would act on, as a reason.
    pub fn harmed_by(&self, sel: &Selector) -> Option<String> {
        let acts = sel.actions.signal.is_some() || sel.actions.errno.is_some();
        if !acts || !sel.net.is_empty() {
            return None;
        }
        self.paths
            .iter()
            .find(|(p, _)| {
                sel.binaries.as_ref().is_none_or(|b| admits(&b.set, p))
                    && sel.path.iter().all(|m| admits(m, p))
            })
            .map(|(p, what)| {
                format!(
                    "its action would reach {what} ({p}): narrow matchBinaries or the path, or annotate the policy {ALLOW_ANNOTATION}: \"true\""
                )
            })
    }
}

/// Whether `m` admits `path`, negation included.
fn admits(m: &StrMatch, path: &str) -> bool {
    m.contains(path) != (m.op.filter().negate == 1)
}

/// Whether the policy's annotations allow acting on protected binaries.
pub fn allowed(annotations: Option<&serde_yaml::Value>) -> bool {
    annotations
        .and_then(|a| a.get(ALLOW_ANNOTATION))
        .and_then(|v| v.as_str())
        == Some("true")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Actions, BinaryMatch, StrOp};

    fn protected() -> Protected {
        Protected {
            paths: vec![
                ("/opt/sensor/sensor".into(), "the sensor itself".into()),
                ("/usr/bin/kubelet".into(), "the node agent kubelet".into()),
            ],
        }
    }

    fn sel(binaries: Option<(StrOp, &str)>, path: Option<(StrOp, &str)>, kill: bool) -> Selector {
        let set = |(op, v): (StrOp, &str)| StrMatch {
            op,
            values: vec![v.to_string()],
        };
        Selector {
            binaries: binaries.map(|b| BinaryMatch {
                set: set(b),
                follow_children: false,
            }),
            path: path.map(set).into_iter().collect(),
            net: Vec::new(),
            ints: Vec::new(),
            strs: Vec::new(),
            pids: Vec::new(),
            namespaces: Vec::new(),
            ret: None,
            numbers: None,
            actions: Actions {
                signal: kill.then_some(9),
                ..Actions::POST
            },
        }
    }

    #[test]
    fn kills_that_admit_a_protected_binary_are_found() {
        let p = protected();
        let harms = |s: &Selector| p.harmed_by(s).is_some();
        assert!(harms(&sel(None, None, true)), "no filter: everything");
        assert!(harms(&sel(Some((StrOp::NotPrefix, "/usr/")), None, true)));
        assert!(harms(&sel(Some((StrOp::Postfix, "/kubelet")), None, true)));
        assert!(harms(&sel(None, Some((StrOp::Prefix, "/usr/bin")), true)));
        assert!(!harms(&sel(None, None, false)), "Post only");
        assert!(!harms(&sel(Some((StrOp::Postfix, "/curl")), None, true)));
        assert!(!harms(&sel(Some((StrOp::NotPrefix, "/")), None, true)));
        assert!(!harms(&sel(None, Some((StrOp::Prefix, "/tmp/")), true)));
    }

    #[test]
    fn the_annotation_allows() {
        let yaml = |v: &str| {
            serde_yaml::from_str::<serde_yaml::Value>(&format!("{{\"{ALLOW_ANNOTATION}\": {v}}}"))
                .unwrap()
        };
        assert!(allowed(Some(&yaml("\"true\""))));
        assert!(!allowed(Some(&yaml("\"yes\""))));
        assert!(!allowed(None));
    }
}
