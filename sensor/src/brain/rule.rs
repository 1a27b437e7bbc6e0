//! Brain rules: this project's own YAML kind (`BrainRule`), parsed into a
//! [`Rule`] with the same error standard as reflex policies (file, field,
//! reason). A rule reads context, not names alone: the event, the binary and
//! its arguments, the parent and the ancestors, the pod, and how often.
use std::time::Duration;

use serde::Deserialize;

use crate::policy::{StrMatch, StrOp};

pub const API_VERSION: &str = "sensor.io/v1alpha1";
pub const KIND: &str = "BrainRule";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRule {
    pub api_version: String,
    #[allow(dead_code)] // read before parsing, to route the document here
    pub kind: String,
    pub metadata: RawMeta,
    pub spec: RawSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeta {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSpec {
    #[serde(default)]
    pub description: String,
    pub on: String,
    #[serde(default)]
    pub in_pod: bool,
    pub binary: Option<RawStr>,
    pub arguments: Option<RawArgs>,
    pub parent: Option<RawProc>,
    pub ancestors: Option<RawAncestors>,
    pub pod: Option<RawPod>,
    pub policy: Option<RawPolicyHit>,
    /// With `on: exit`: the terminating signals (`SIGKILL`, ...); any when empty.
    #[serde(default)]
    pub signals: Vec<String>,
    pub count: Option<RawCount>,
    pub actions: Vec<String>,
    /// Lets a `kill` rule outside pods reach protected binaries (the
    /// sensor, PID 1, the kubelet, the container runtime).
    #[serde(default)]
    pub allow_protected: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStr {
    pub operator: String,
    pub values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawArgs {
    #[serde(default)]
    pub any_of: Vec<String>,
    #[serde(default)]
    pub has_positional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProc {
    pub binary: Option<RawStr>,
    pub arguments: Option<RawArgs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAncestors {
    pub any: Option<RawProc>,
    pub none: Option<RawProc>,
    pub within: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPod {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyHit {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCount {
    pub at_least: usize,
    pub within: String,
}

/// Which events a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Exec,
    Connect,
    /// A reflex policy hit (process_kprobe / process_lsm / process_tracepoint).
    Policy,
    /// A process ended by a signal.
    Exit,
    /// A pod over its record budget in the kernel (one observation per
    /// `record-budget` report, every 2 s while it floods); no process.
    Flood,
}

/// Argument patterns: `*` at either end is a wildcard (`--data*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgMatch {
    pub any_of: Vec<String>,
    pub has_positional: bool,
}

impl ArgMatch {
    fn glob(pattern: &str, arg: &str) -> bool {
        match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
            (Some(p), _) if p.ends_with('*') => arg.contains(&p[..p.len() - 1]),
            (Some(p), None) => arg.ends_with(p),
            (None, Some(p)) => arg.starts_with(p),
            _ => arg == pattern,
        }
    }

    pub fn matches(&self, args: &[String]) -> bool {
        let any = self.any_of.is_empty()
            || args
                .iter()
                .any(|a| self.any_of.iter().any(|p| Self::glob(p, a)));
        let pos = !self.has_positional || args.iter().any(|a| !a.starts_with('-'));
        any && pos
    }
}

/// Conditions on one process.
#[derive(Debug, Clone, Default)]
pub struct ProcMatch {
    pub binary: Option<StrMatch>,
    pub arguments: Option<ArgMatch>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: String,
    pub on: On,
    pub in_pod: bool,
    pub process: ProcMatch,
    pub parent: Option<ProcMatch>,
    pub ancestors_any: Option<ProcMatch>,
    pub ancestors_none: Option<ProcMatch>,
    /// Levels of ancestry the ancestor conditions look at.
    pub within: usize,
    pub namespaces: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub policy_actions: Vec<String>,
    pub policy_names: Vec<String>,
    /// With `on: exit`: the signals that count (empty: any signal).
    pub signals: Vec<String>,
    /// (at least N, within T) per pod.
    pub count: Option<(usize, Duration)>,
    pub alert: bool,
    pub quarantine: bool,
    /// Kill the matching process and every process it started (SIGKILL):
    /// the offender stops at once, not only its pod's network.
    pub kill: bool,
}

type FieldResult<T> = Result<T, (String, String)>;

fn str_match(r: RawStr, at: &str) -> FieldResult<StrMatch> {
    let op = match r.operator.as_str() {
        "In" | "Equal" => StrOp::Equal,
        "NotIn" | "NotEqual" => StrOp::NotEqual,
        "Prefix" => StrOp::Prefix,
        "NotPrefix" => StrOp::NotPrefix,
        "Postfix" => StrOp::Postfix,
        "NotPostfix" => StrOp::NotPostfix,
        o => return Err((format!("{at}.operator"), format!("unknown operator `{o}`; expected In, NotIn, Prefix, NotPrefix, Postfix or NotPostfix"))),
    };
    if r.values.is_empty() {
        return Err((format!("{at}.values"), "must not be empty".into()));
    }
    Ok(StrMatch {
        op,
        values: r.values,
    })
}

fn args(r: RawArgs, at: &str) -> FieldResult<ArgMatch> {
    if r.any_of.is_empty() && !r.has_positional {
        return Err((at.into(), "give anyOf patterns or hasPositional".into()));
    }
    if let Some((i, _)) = r
        .any_of
        .iter()
        .enumerate()
        .find(|(_, p)| p.trim_matches('*').is_empty())
    {
        return Err((
            format!("{at}.anyOf[{i}]"),
            "a pattern needs more than `*`".into(),
        ));
    }
    Ok(ArgMatch {
        any_of: r.any_of,
        has_positional: r.has_positional,
    })
}

fn proc_match(r: RawProc, at: &str) -> FieldResult<ProcMatch> {
    if r.binary.is_none() && r.arguments.is_none() {
        return Err((at.into(), "give binary or arguments".into()));
    }
    Ok(ProcMatch {
        binary: r
            .binary
            .map(|b| str_match(b, &format!("{at}.binary")))
            .transpose()?,
        arguments: r
            .arguments
            .map(|a| args(a, &format!("{at}.arguments")))
            .transpose()?,
    })
}

/// A count window: a duration (30s, 5m, 1h) longer than zero.
fn duration(s: &str) -> Option<Duration> {
    crate::duration::parse(s).ok().filter(|d| !d.is_zero())
}

pub fn parse(raw: RawRule) -> FieldResult<Rule> {
    if raw.api_version != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!("`{}`: expected {API_VERSION}", raw.api_version),
        ));
    }
    if raw.metadata.name.is_empty() {
        return Err(("metadata.name".into(), "must not be empty".into()));
    }
    let s = raw.spec;
    let on = match s.on.as_str() {
        "exec" => On::Exec,
        "connect" => On::Connect,
        "policy" => On::Policy,
        "exit" => On::Exit,
        "flood" => On::Flood,
        o => {
            return Err((
                "spec.on".into(),
                format!("unknown event `{o}`; expected exec, connect, policy, exit or flood"),
            ))
        }
    };
    if on == On::Flood {
        // A flood is a pod's, not a process's: nothing below can match it.
        let process_fields = [
            ("spec.binary", s.binary.is_some()),
            ("spec.arguments", s.arguments.is_some()),
            ("spec.parent", s.parent.is_some()),
            ("spec.ancestors", s.ancestors.is_some()),
        ];
        if let Some((field, _)) = process_fields.iter().find(|(_, given)| *given) {
            return Err((
                (*field).into(),
                "on: flood has no process to match; match the pod".into(),
            ));
        }
        if s.actions.iter().any(|a| a == "kill") {
            return Err((
                "spec.actions".into(),
                "on: flood has no process to kill; use alert or quarantine".into(),
            ));
        }
    }
    if !s.signals.is_empty() && on != On::Exit {
        return Err(("spec.signals".into(), "only with on: exit".into()));
    }
    if let Some((i, bad)) = s
        .signals
        .iter()
        .enumerate()
        .find(|(_, v)| !v.starts_with("SIG") || v.len() < 5)
    {
        return Err((
            format!("spec.signals[{i}]"),
            format!("`{bad}` is not a signal name (SIGKILL, SIGSEGV, ...)"),
        ));
    }
    if s.policy.is_some() && on != On::Policy {
        return Err(("spec.policy".into(), "only with on: policy".into()));
    }
    let (mut alert, mut quarantine, mut kill) = (false, false, false);
    for (i, a) in s.actions.iter().enumerate() {
        match a.as_str() {
            "alert" => alert = true,
            "quarantine" => quarantine = true,
            "kill" => kill = true,
            o => {
                return Err((
                    format!("spec.actions[{i}]"),
                    format!("unknown action `{o}`; expected alert, quarantine or kill"),
                ))
            }
        }
    }
    if !alert && !quarantine && !kill {
        return Err((
            "spec.actions".into(),
            "give alert, quarantine, kill, or several".into(),
        ));
    }
    let (ancestors_any, ancestors_none, within) = match s.ancestors {
        Some(a) => {
            if a.any.is_none() && a.none.is_none() {
                return Err(("spec.ancestors".into(), "give any or none".into()));
            }
            (
                a.any
                    .map(|p| proc_match(p, "spec.ancestors.any"))
                    .transpose()?,
                a.none
                    .map(|p| proc_match(p, "spec.ancestors.none"))
                    .transpose()?,
                a.within.unwrap_or(16).clamp(1, 64),
            )
        }
        None => (None, None, 16),
    };
    let count = match s.count {
        Some(c) => {
            let d = duration(&c.within).ok_or((
                "spec.count.within".to_string(),
                format!("`{}` is not a duration (30s, 5m, 1h)", c.within),
            ))?;
            if c.at_least == 0 {
                return Err(("spec.count.atLeast".into(), "must be at least 1".into()));
            }
            Some((c.at_least, d))
        }
        None => None,
    };
    let binary = s.binary.map(|b| str_match(b, "spec.binary")).transpose()?;
    // A kill outside pods decided by the binary alone (no arguments, parent
    // or ancestors to narrow it) must not reach the node's own agents.
    let narrowed = s.arguments.is_some() || s.parent.is_some() || ancestors_any.is_some();
    let outside_pods = !(s.in_pod || quarantine);
    if kill && outside_pods && !narrowed && !s.allow_protected {
        if let Some((path, what)) =
            crate::policy::protect::Protected::of_this_node().admitted_by(binary.as_ref())
        {
            return Err((
                "spec.actions".into(),
                format!("kill would reach {what} ({path}): narrow spec.binary, add inPod, or set spec.allowProtected: true"),
            ));
        }
    }
    let (namespaces, labels) = s.pod.map(|p| (p.namespaces, p.labels)).unwrap_or_default();
    let (policy_actions, policy_names) = s.policy.map(|p| (p.actions, p.names)).unwrap_or_default();
    Ok(Rule {
        name: raw.metadata.name,
        description: s.description,
        on,
        in_pod: s.in_pod || quarantine,
        process: ProcMatch {
            binary,
            arguments: s.arguments.map(|a| args(a, "spec.arguments")).transpose()?,
        },
        parent: s.parent.map(|p| proc_match(p, "spec.parent")).transpose()?,
        ancestors_any,
        ancestors_none,
        within,
        namespaces,
        labels,
        policy_actions,
        policy_names,
        signals: s.signals,
        count,
        alert,
        quarantine,
        kill,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_globs() {
        let m = ArgMatch {
            any_of: vec!["-d".into(), "--data*".into(), "*.sh".into()],
            has_positional: false,
        };
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(m.matches(&a(&["-s", "--data-binary", "@x"])));
        assert!(m.matches(&a(&["run.sh"])));
        assert!(!m.matches(&a(&["-s", "http://x"])));
        let p = ArgMatch {
            any_of: vec![],
            has_positional: true,
        };
        assert!(p.matches(&a(&["-v", "backend", "80"])));
        assert!(!p.matches(&a(&["-l", "-p"])));
        assert_eq!(duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(duration("0s"), None);
        assert_eq!(duration("5d"), None);
    }

    /// A rule whose spec is `spec` (YAML lines indented by two).
    fn rule_with(spec: &str) -> FieldResult<Rule> {
        parse(
            serde_yaml::from_str(&format!(
                "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata: {{name: r}}\nspec:\n{spec}"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn a_flood_rule_matches_pods_not_processes() {
        let parse_yaml = |spec: &str| rule_with(&format!("  on: flood\n{spec}"));
        let r = parse_yaml("  count: {atLeast: 3, within: 10s}\n  actions: [alert, quarantine]\n")
            .unwrap();
        assert_eq!(r.on, On::Flood);
        assert!(r.in_pod, "a quarantine needs a pod");
        let e =
            parse_yaml("  binary: {operator: In, values: [/x]}\n  actions: [alert]\n").unwrap_err();
        assert_eq!(e.0, "spec.binary");
        let e = parse_yaml("  actions: [kill]\n").unwrap_err();
        assert_eq!(e.0, "spec.actions");
    }

    #[test]
    fn a_kill_that_reaches_the_kubelet_is_refused_unless_allowed() {
        let parse_yaml = |spec: &str| rule_with(&format!("  on: exec\n  actions: [kill]\n{spec}"));
        let e = parse_yaml("  binary: {operator: Postfix, values: [/kubelet]}\n").unwrap_err();
        assert_eq!(e.0, "spec.actions");
        assert!(e.1.contains("kubelet"), "{}", e.1);
        assert!(parse_yaml(
            "  binary: {operator: Postfix, values: [/kubelet]}\n  allowProtected: true\n"
        )
        .is_ok());
        assert!(
            parse_yaml("  binary: {operator: Postfix, values: [/kubelet]}\n  inPod: true\n")
                .is_ok()
        );
        assert!(parse_yaml("  binary: {operator: Postfix, values: [/curl]}\n").is_ok());
    }
}
