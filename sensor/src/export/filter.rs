//! Tetragon's event filters, for `GetEventsRequest` and for the export's
//! `--export-allowlist` / `--export-denylist`: an event is sent when it matches one filter
//! of the allow list (or the list is empty) and no filter of the deny list;
//! within one filter every field that is set must match (Tetragon's
//! semantics). Fields this sensor cannot evaluate are refused, never
//! ignored.
use regex::Regex;

use super::ancestors::{AncestorKinds, WITH_ANCESTORS};
use sensor_api::tetragon::get_events_response::Event;
use sensor_api::tetragon::{Filter, GetEventsRequest, GetEventsResponse, Process};

/// A compiled request.
pub struct Filters {
    allow: Vec<One>,
    deny: Vec<One>,
}

struct One {
    binary: Vec<Regex>,
    namespace: Vec<String>,
    pid: Vec<u32>,
    event_set: Vec<i32>,
    pod: Vec<Regex>,
    arguments: Vec<Regex>,
    labels: Vec<Selector>,
    policy_names: Vec<String>,
    parent_binary: Vec<Regex>,
    parent_arguments: Vec<Regex>,
    container_id: Vec<String>,
    container_name: Vec<Regex>,
    namespace_regex: Vec<Regex>,
    ancestor_binary: Vec<Regex>,
    health_check: Option<bool>,
}

impl Filters {
    /// Compiles a request; the error names the field and why. `ancestors`:
    /// which kinds carry them (an ancestor filter needs them).
    pub fn new(req: &GetEventsRequest, ancestors: AncestorKinds) -> Result<Filters, String> {
        if !req.field_filters.is_empty() {
            return Err("field_filters are not supported by this sensor".into());
        }
        if req.aggregation_options.is_some() {
            return Err("aggregation_options are not supported by this sensor".into());
        }
        Filters::lists(
            &req.allow_list,
            &req.deny_list,
            ("allow_list", "deny_list"),
            ancestors,
        )
    }

    /// Compiles an allow and a deny list; `names` are what errors call them.
    pub fn lists(
        allow: &[Filter],
        deny: &[Filter],
        names: (&str, &str),
        ancestors: AncestorKinds,
    ) -> Result<Filters, String> {
        let compile = |list: &[Filter], name: &str| -> Result<Vec<One>, String> {
            list.iter()
                .enumerate()
                .map(|(i, f)| One::new(f, ancestors).map_err(|e| format!("{name}[{i}].{e}")))
                .collect()
        };
        Ok(Filters {
            allow: compile(allow, names.0)?,
            deny: compile(deny, names.1)?,
        })
    }

    /// Whether no filter is set: everything passes.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn pass(&self, e: &GetEventsResponse) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(e)))
            && !self.deny.iter().any(|f| f.matches(e))
    }
}

fn regexes(v: &[String], field: &str) -> Result<Vec<Regex>, String> {
    v.iter()
        .map(|r| Regex::new(r).map_err(|e| format!("{field}: {e}")))
        .collect()
}

impl One {
    fn new(f: &Filter, ancestors: AncestorKinds) -> Result<One, String> {
        let refuse = |set: bool, field: &str| {
            if set {
                Err(format!("{field}: not supported by this sensor"))
            } else {
                Ok(())
            }
        };
        refuse(!f.pid_set.is_empty(), "pid_set")?;
        refuse(f.capabilities.is_some(), "capabilities")?;
        refuse(!f.cel_expression.is_empty(), "cel_expression")?;
        refuse(f.in_init_tree.is_some(), "in_init_tree")?;
        if !f.ancestor_binary_regex.is_empty() {
            // As Tetragon: every event type the filter covers must carry
            // ancestors, or it could never match them.
            let types = if f.event_set.is_empty() {
                WITH_ANCESTORS
            } else {
                &f.event_set[..]
            };
            if let Some(t) = types.iter().find(|t| !ancestors.enabled_for(**t)) {
                return Err(format!(
                    "ancestor_binary_regex: ancestors are not enabled for event type {t} (see --enable-ancestors)"
                ));
            }
        }
        Ok(One {
            health_check: f.health_check.as_ref().map(|b| b.value),
            binary: regexes(&f.binary_regex, "binary_regex")?,
            namespace: f.namespace.clone(),
            pid: f.pid.clone(),
            event_set: f.event_set.clone(),
            pod: regexes(&f.pod_regex, "pod_regex")?,
            arguments: regexes(&f.arguments_regex, "arguments_regex")?,
            labels: f
                .labels
                .iter()
                .map(|l| Selector::parse(l).map_err(|e| format!("labels: {l}: {e}")))
                .collect::<Result<_, _>>()?,
            policy_names: f.policy_names.clone(),
            parent_binary: regexes(&f.parent_binary_regex, "parent_binary_regex")?,
            parent_arguments: regexes(&f.parent_arguments_regex, "parent_arguments_regex")?,
            container_id: f.container_id.clone(),
            container_name: regexes(&f.container_name_regex, "container_name_regex")?,
            namespace_regex: regexes(&f.namespace_regex, "namespace_regex")?,
            ancestor_binary: regexes(&f.ancestor_binary_regex, "ancestor_binary_regex")?,
        })
    }

    fn matches(&self, e: &GetEventsResponse) -> bool {
        let (process, parent, policy) = parts(e);
        let any_re = |res: &[Regex], s: Option<&str>| {
            res.is_empty() || s.is_some_and(|s| res.iter().any(|r| r.is_match(s)))
        };
        let pod = process.and_then(|p| p.pod.as_ref());
        let namespace = pod.map(|p| p.namespace.as_str());
        let container = pod.and_then(|p| p.container.as_ref());
        (self.event_set.is_empty() || event_type(e).is_some_and(|t| self.event_set.contains(&t)))
            && any_re(&self.binary, process.map(|p| p.binary.as_str()))
            && (self.namespace.is_empty()
                || self.namespace.iter().any(|n| n == namespace.unwrap_or("")))
            && (self.pid.is_empty()
                || process
                    .and_then(|p| p.pid.as_ref())
                    .is_some_and(|pid| self.pid.contains(&pid.value)))
            && any_re(&self.pod, pod.map(|p| p.name.as_str()))
            && any_re(&self.arguments, process.map(|p| p.arguments.as_str()))
            && (self.labels.is_empty()
                || pod.is_some_and(|p| self.labels.iter().any(|s| s.matches(&p.pod_labels))))
            && (self.policy_names.is_empty()
                || policy.is_some_and(|n| self.policy_names.iter().any(|p| p == n)))
            && any_re(&self.parent_binary, parent.map(|p| p.binary.as_str()))
            && any_re(&self.parent_arguments, parent.map(|p| p.arguments.as_str()))
            && (self.container_id.is_empty()
                || container.is_some_and(|c| {
                    self.container_id
                        .iter()
                        .any(|id| c.id.starts_with(id.as_str()))
                }))
            && any_re(&self.container_name, container.map(|c| c.name.as_str()))
            && any_re(&self.namespace_regex, namespace)
            && (self.ancestor_binary.is_empty()
                || ancestors(e)
                    .iter()
                    .any(|a| self.ancestor_binary.iter().any(|r| r.is_match(&a.binary))))
            && self
                .health_check
                .is_none_or(|want| is_health_check(process) == want)
    }
}

/// The event's type as `EventType` numbers it (the oneof's field number);
/// `None` for sensor's own events, which no event_set names.
fn event_type(e: &GetEventsResponse) -> Option<i32> {
    Some(match e.event.as_ref()? {
        Event::ProcessExec(_) => 1,
        Event::ProcessExit(_) => 5,
        Event::ProcessKprobe(_) => 9,
        Event::ProcessTracepoint(_) => 10,
        Event::ProcessLsm(_) => 28,
        Event::Test(_) => 40000,
        Event::RateLimitInfo(_) => 40001,
        Event::SensorQuarantine(_) | Event::SensorAlert(_) => return None,
    })
}

/// Whether the process is the sensor checking its own health (`sensor
/// status`, what an exec probe runs), as Tetragon's `health_check` filter
/// matches its own `tetra status`.
fn is_health_check(p: Option<&Process>) -> bool {
    p.is_some_and(|p| {
        p.binary.rsplit('/').next() == Some("sensor") && p.arguments.starts_with("status")
    })
}

/// The filters of an `--export-allowlist` or `--export-denylist` value:
/// JSON objects separated by whitespace or newlines, as Tetragon reads
/// them. A field this sensor does not know is refused, not ignored: a
/// typo in a deny list would otherwise let everything out.
pub fn parse_list(flag: &str, text: &str, ancestors: AncestorKinds) -> Result<Vec<Filter>, String> {
    let mut out = Vec::new();
    for (i, v) in serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .enumerate()
    {
        let v = v.map_err(|e| format!("{flag}: filter {i}: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| format!("{flag}: filter {i}: not a JSON object"))?;
        for key in obj.keys() {
            if !FILTER_FIELDS.contains(&key.as_str()) {
                return Err(format!("{flag}: filter {i}: unknown field {key:?}"));
            }
        }
        let f: Filter =
            serde_json::from_value(v).map_err(|e| format!("{flag}: filter {i}: {e}"))?;
        // Compiled here so that a bad regex or a field this sensor cannot
        // evaluate fails at start.
        One::new(&f, ancestors).map_err(|e| format!("{flag}: filter {i}: {e}"))?;
        out.push(f);
    }
    Ok(out)
}

/// The fields of Tetragon's `Filter`, in protojson's two spellings.
const FILTER_FIELDS: &[&str] = &[
    "binary_regex",
    "binaryRegex",
    "namespace",
    "health_check",
    "healthCheck",
    "pid",
    "pid_set",
    "pidSet",
    "event_set",
    "eventSet",
    "pod_regex",
    "podRegex",
    "arguments_regex",
    "argumentsRegex",
    "labels",
    "policy_names",
    "policyNames",
    "capabilities",
    "parent_binary_regex",
    "parentBinaryRegex",
    "cel_expression",
    "celExpression",
    "parent_arguments_regex",
    "parentArgumentsRegex",
    "container_id",
    "containerId",
    "in_init_tree",
    "inInitTree",
    "ancestor_binary_regex",
    "ancestorBinaryRegex",
    "container_name_regex",
    "containerNameRegex",
    "namespace_regex",
    "namespaceRegex",
];

/// The event's ancestors (`--enable-ancestors`).
fn ancestors(e: &GetEventsResponse) -> &[Process] {
    match e.event.as_ref() {
        Some(Event::ProcessExec(x)) => &x.ancestors,
        Some(Event::ProcessExit(x)) => &x.ancestors,
        Some(Event::ProcessKprobe(x)) => &x.ancestors,
        Some(Event::ProcessTracepoint(x)) => &x.ancestors,
        Some(Event::ProcessLsm(x)) => &x.ancestors,
        _ => &[],
    }
}

/// The event's process, parent and policy name.
fn parts(e: &GetEventsResponse) -> (Option<&Process>, Option<&Process>, Option<&str>) {
    match e.event.as_ref() {
        Some(Event::ProcessExec(x)) => (x.process.as_ref(), x.parent.as_ref(), None),
        Some(Event::ProcessExit(x)) => (x.process.as_ref(), x.parent.as_ref(), None),
        Some(Event::ProcessKprobe(x)) => (
            x.process.as_ref(),
            x.parent.as_ref(),
            Some(x.policy_name.as_str()),
        ),
        Some(Event::ProcessTracepoint(x)) => (
            x.process.as_ref(),
            x.parent.as_ref(),
            Some(x.policy_name.as_str()),
        ),
        Some(Event::ProcessLsm(x)) => (
            x.process.as_ref(),
            x.parent.as_ref(),
            Some(x.policy_name.as_str()),
        ),
        Some(Event::SensorAlert(x)) => (x.process.as_ref(), x.parent.as_ref(), None),
        _ => (None, None, None),
    }
}

/// A Kubernetes label selector in its string form:
/// `k=v,k!=v,k in (a,b),k notin (a,b),k,!k`.
struct Selector(Vec<Term>);

enum Term {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        let mut rest = s.trim();
        while !rest.is_empty() {
            // Commas inside "(a,b)" do not end a term.
            let end = match (rest.find('('), rest.find(',')) {
                (Some(open), Some(comma)) if open < comma => {
                    let close = rest.find(')').ok_or("unclosed (")?;
                    rest[close..].find(',').map(|c| close + c)
                }
                (_, comma) => comma,
            };
            let (term, next) = match end {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, ""),
            };
            terms.push(Term::parse(term.trim())?);
            rest = next.trim();
        }
        Ok(Selector(terms))
    }

    fn matches(&self, labels: &std::collections::HashMap<String, String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl Term {
    fn parse(t: &str) -> Result<Term, String> {
        let list = |v: &str| -> Result<Vec<String>, String> {
            let v = v.trim();
            let inner = v
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| format!("`{v}`: expected (a,b,...)"))?;
            Ok(inner.split(',').map(|x| x.trim().to_string()).collect())
        };
        if let Some((k, v)) = t.split_once("!=") {
            return Ok(Term::NotIn(k.trim().into(), vec![v.trim().into()]));
        }
        if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            return Ok(Term::In(k.trim().into(), vec![v.trim().into()]));
        }
        if let Some((k, v)) = t.split_once(" notin ") {
            return Ok(Term::NotIn(k.trim().into(), list(v)?));
        }
        if let Some((k, v)) = t.split_once(" in ") {
            return Ok(Term::In(k.trim().into(), list(v)?));
        }
        if let Some(k) = t.strip_prefix('!') {
            return Ok(Term::Absent(k.trim().into()));
        }
        if t.is_empty() || t.contains(char::is_whitespace) {
            return Err(format!("`{t}`: not a label selector term"));
        }
        Ok(Term::Exists(t.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_api::tetragon::{Pod, ProcessExec, ProcessExit};

    fn exec(binary: &str, namespace: &str) -> GetEventsResponse {
        GetEventsResponse {
            event: Some(Event::ProcessExec(ProcessExec {
                process: Some(Process {
                    binary: binary.into(),
                    pod: (!namespace.is_empty()).then(|| Pod {
                        namespace: namespace.into(),
                        name: "web-1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn allow_then_deny_with_every_set_field_matching() {
        let req = GetEventsRequest {
            allow_list: vec![Filter {
                binary_regex: vec!["curl$".into()],
                namespace: vec!["shop".into()],
                ..Default::default()
            }],
            deny_list: vec![Filter {
                pod_regex: vec!["^web-".into()],
                event_set: vec![5],
                ..Default::default()
            }],
            ..Default::default()
        };
        let f = Filters::new(&req, AncestorKinds::default()).unwrap();
        assert!(f.pass(&exec("/usr/bin/curl", "shop")));
        assert!(!f.pass(&exec("/usr/bin/wget", "shop")), "binary");
        assert!(!f.pass(&exec("/usr/bin/curl", "")), "namespace");
        let mut exit = exec("/usr/bin/curl", "shop");
        if let Some(Event::ProcessExec(e)) = exit.event.take() {
            exit.event = Some(Event::ProcessExit(ProcessExit {
                process: e.process,
                ..Default::default()
            }));
        }
        assert!(!f.pass(&exit), "denied: an exit of a web pod");
    }

    #[test]
    fn fields_it_cannot_evaluate_are_refused() {
        let req = GetEventsRequest {
            allow_list: vec![Filter {
                cel_expression: vec!["true".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = Filters::new(&req, AncestorKinds::default())
            .err()
            .expect("refused");
        assert!(e.starts_with("allow_list[0].cel_expression"), "{e}");
        let bad_regex = GetEventsRequest {
            deny_list: vec![Filter {
                binary_regex: vec!["(".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(Filters::new(&bad_regex, AncestorKinds::default()).is_err());
    }

    #[test]
    fn ancestor_binaries_match_where_ancestors_are_enabled() {
        let req = GetEventsRequest {
            allow_list: vec![Filter {
                ancestor_binary_regex: vec!["/(ba|z)sh$".into()],
                event_set: vec![1],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = Filters::new(&req, AncestorKinds::default())
            .err()
            .expect("refused without ancestors");
        assert!(
            e.contains("--enable-ancestors") && e.contains("type 1"),
            "{e}"
        );
        let base: AncestorKinds = "base".parse().unwrap();
        let f = Filters::new(&req, base).unwrap();
        let mut ev = exec("/usr/bin/curl", "shop");
        assert!(!f.pass(&ev), "no ancestors");
        if let Some(Event::ProcessExec(x)) = ev.event.as_mut() {
            x.ancestors = vec![
                Process {
                    binary: "/usr/bin/bash".into(),
                    ..Default::default()
                },
                Process {
                    binary: "/sbin/init".into(),
                    ..Default::default()
                },
            ];
        }
        assert!(f.pass(&ev), "a bash among the ancestors");
        // Without event_set the filter covers every kind that can carry
        // ancestors, and base alone does not.
        let all = GetEventsRequest {
            allow_list: vec![Filter {
                ancestor_binary_regex: vec!["bash".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(Filters::new(&all, base).is_err());
        let every: AncestorKinds = "base,kprobe,tracepoint,lsm,uprobe,usdt,loader"
            .parse()
            .unwrap();
        assert!(Filters::new(&all, every).is_ok());
    }

    #[test]
    fn label_selectors_in_their_string_form() {
        let labels: std::collections::HashMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let m = |s: &str| Selector::parse(s).unwrap().matches(&labels);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("app in (web, api),!env"));
        assert!(!m("tier notin (front,back)"));
        assert!(m("env notin (prod)"));
        assert!(Selector::parse("app in web").is_err());
    }
}
