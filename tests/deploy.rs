//! The manifests a cluster gets: every document in `deploy/` parses as its
//! Kubernetes type (k8s-openapi) with nothing lost on the way (a misspelled
//! field would be), the DaemonSet carries the security settings a security
//! team asks for, the daemon runs with exactly the capabilities the
//! DaemonSet grants, and the admission policy's CEL says yes and no to a
//! table of requests as the README promises.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cel_interpreter::{Context, Program, Value as Cel};
use common::*;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of `deploy/*.yaml`, as JSON, with its file.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((f.file_name().unwrap().to_string_lossy().into_owned(), v));
            }
        }
    }
    out
}

/// Parses `v` as `T` and back: what does not survive was not a field of
/// `T` (a typo, or a field of another API version).
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", v["kind"], v["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, v, "{file}: {} lost fields in parsing", v["kind"]);
    typed
}

fn daemonset() -> DaemonSet {
    let (file, v) = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    strict(&file, &v)
}

fn container(ds: &DaemonSet) -> Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers[0].clone()
}

/// The capabilities the DaemonSet adds, lower-case, as setpriv names them.
fn granted(c: &Container) -> Vec<String> {
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    caps.add
        .clone()
        .unwrap()
        .iter()
        .map(|c| c.to_lowercase())
        .collect()
}

#[test]
fn every_manifest_parses_as_its_kubernetes_type() {
    let mut kinds = BTreeSet::new();
    for (file, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "DaemonSet" => drop(strict::<DaemonSet>(&file, &v)),
            "ServiceAccount" => drop(strict::<ServiceAccount>(&file, &v)),
            "ClusterRole" => drop(strict::<ClusterRole>(&file, &v)),
            "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&file, &v)),
            "ConfigMap" => drop(strict::<ConfigMap>(&file, &v)),
            "CustomResourceDefinition" => drop(strict::<CustomResourceDefinition>(&file, &v)),
            "ValidatingAdmissionPolicy" => drop(strict::<ValidatingAdmissionPolicy>(&file, &v)),
            "ValidatingAdmissionPolicyBinding" => {
                drop(strict::<ValidatingAdmissionPolicyBinding>(&file, &v))
            }
            other => panic!("{file}: a {other} this test does not know"),
        }
        kinds.insert(kind);
    }
    for k in [
        "DaemonSet",
        "ClusterRole",
        "ConfigMap",
        "ValidatingAdmissionPolicy",
    ] {
        assert!(kinds.contains(k), "no {k} in deploy/");
    }
}

#[test]
fn the_daemonset_is_hardened() {
    hardened(&daemonset());
}

/// The settings a security team checks, on a DaemonSet from `deploy/` or
/// rendered from the chart.
fn hardened(ds: &DaemonSet) {
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let c = container(ds);
    let sc = c.security_context.clone().unwrap();
    assert_ne!(sc.privileged, Some(true), "not privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let added: BTreeSet<String> = granted(&c).into_iter().collect();
    for must_not in ["sys_admin", "sys_module", "net_raw", "sys_boot", "setuid"] {
        assert!(!added.contains(must_not), "{must_not} is granted");
    }
    for needed in ["bpf", "perfmon", "net_admin", "kill"] {
        assert!(added.contains(needed), "{needed} is missing");
    }

    // The image is pinned to this version.
    assert_eq!(
        c.image.as_deref(),
        Some(format!("sensor:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    // Requests and limits: not BestEffort.
    let res = c.resources.clone().unwrap();
    for (what, m) in [("requests", res.requests), ("limits", res.limits)] {
        let m = m.unwrap_or_else(|| panic!("no {what}"));
        assert!(
            m.contains_key("cpu") && m.contains_key("memory"),
            "{what}: {m:?}"
        );
    }

    // Probes on the health server the arguments start.
    let args = c.args.clone().unwrap();
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .map(str::to_string)
    };
    let health = arg("--health-server-address").expect("a health server");
    let port: i32 = health.rsplit(':').next().unwrap().parse().unwrap();
    let named = |name: &str| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(named("health"), Some(port));
    let path_of = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an httpGet probe");
        assert_eq!(
            g.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("health".into())
        );
        g.path.unwrap()
    };
    assert_eq!(path_of(&c.liveness_probe), "/healthz");
    assert_eq!(path_of(&c.readiness_probe), "/readyz");
    assert!(args.contains(&"--keep-on-exit".to_string()));
    assert!(arg("--metrics-server").is_some());

    // CIDRs from the ConfigMap, through the environment.
    assert_eq!(arg("--pod-cidr").as_deref(), Some("$(POD_CIDR)"));
    assert_eq!(arg("--service-cidr").as_deref(), Some("$(SERVICE_CIDR)"));
    for (var, key) in [("POD_CIDR", "pod-cidr"), ("SERVICE_CIDR", "service-cidr")] {
        let env = c.env.iter().flatten().find(|e| e.name == var).expect(var);
        let r = env.value_from.clone().unwrap().config_map_key_ref.unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("sensor-config", key));
    }

    // The host's cgroupfs is read-only; only the state, log, socket and
    // bpffs mounts are writable.
    let mounts = c.volume_mounts.clone().unwrap();
    let cg = mounts
        .iter()
        .find(|m| m.mount_path == "/sys/fs/cgroup")
        .unwrap();
    assert_eq!(cg.read_only, Some(true));
    for m in &mounts {
        if m.read_only != Some(true) {
            assert!(
                [
                    "/sys/fs/bpf",
                    "/var/log/sensor",
                    "/var/lib/sensor",
                    "/var/run/sensor",
                    "/tmp"
                ]
                .contains(&m.mount_path.as_str()),
                "{} is writable",
                m.mount_path
            );
        }
        // Bidirectional propagation is for privileged containers only.
        assert_ne!(m.mount_propagation.as_deref(), Some("Bidirectional"));
    }
}

#[test]
fn rbac_grants_only_what_the_sensor_calls() {
    let (file, v) = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "ClusterRole")
        .unwrap();
    let role: ClusterRole = strict(&file, &v);
    let pods = role
        .rules
        .unwrap()
        .into_iter()
        .find(|r| r.resources.as_deref() == Some(&["pods".to_string()][..]))
        .expect("a rule on pods");
    // No `get`: the sensor lists and watches, and patches; it never reads
    // one pod. No create, update or delete.
    assert_eq!(pods.verbs, ["list", "watch", "patch"]);
}

#[test]
fn the_daemon_runs_with_the_daemonsets_capabilities_and_no_more() {
    if !can_run("the_daemon_runs_with_the_daemonsets_capabilities_and_no_more") {
        return;
    }
    let caps = granted(&container(&daemonset()));
    let bounding = format!("-all,+{}", caps.join(",+"));
    let dir = TempDir::new();
    let blocked = copy_true(&dir, "caps-blocked");
    let policy = policy_file(&dir, "kill.yaml", &kill_policy("caps-kill", &blocked));
    // A brain rule's kill is a kill(2) from the daemon: a process of
    // another user is signalled only with CAP_KILL.
    let victim = dir.path().join("caps-victim");
    std::fs::copy("/bin/sleep", &victim).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let rule = policy_file(
        &dir,
        "rule.yaml",
        "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata:\n  name: caps-brain-kill\nspec:\n  on: exec\n  binary: {operator: Postfix, values: [/caps-victim]}\n  actions: [alert, kill]\n",
    );
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    // setpriv drops every other capability from the bounding set: root's
    // capabilities after the exec are exactly these.
    let daemon = Daemon::start_under(
        &["setpriv", "--bounding-set", &bounding, "--inh-caps=-all"],
        &[
            "--policy",
            &policy,
            "--policy",
            &rule,
            "--enforce-cgroup",
            &scope,
        ],
        &[],
    );
    let eff = cap_mask(daemon.child.id(), "CapEff");
    const CAP_SYS_ADMIN: u64 = 21;
    assert_eq!(eff & (1 << CAP_SYS_ADMIN), 0, "CAP_SYS_ADMIN is not held");
    // What the DaemonSet grants, less what this machine's bounding set
    // lacks (a sandbox may withhold some, as this one does
    // CAP_SYS_RESOURCE): the daemon ran without it.
    let want = caps
        .iter()
        .map(|c| 1u64 << cap_number(c))
        .fold(0, |a, b| a | b);
    let here = cap_mask(std::process::id(), "CapBnd");
    assert_eq!(eff, want & here, "CapEff {eff:#x}: {caps:?}");
    if want & !here != 0 {
        eprintln!(
            "note: this machine withholds capabilities {:#x} of the DaemonSet's",
            want & !here
        );
    }

    let h = daemon.health.expect("a health server");
    let (ready, body) = http_get(h, "/readyz");
    assert_eq!(ready, 200, "{body}");
    use std::os::unix::process::ExitStatusExt;
    let status = cg.command(&blocked).status().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the reflex kills");

    let started = std::time::Instant::now();
    let status = cg
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&victim)
        .arg("20")
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the brain kills another user's process: {status:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

/// A capability set of process `pid` (`CapEff`, `CapBnd`, ...).
fn cap_mask(pid: u32, which: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{which}:")))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap()
}

/// The number of a capability (linux/capability.h).
fn cap_number(name: &str) -> u32 {
    match name {
        "dac_read_search" => 2,
        "kill" => 5,
        "net_admin" => 12,
        "sys_ptrace" => 19,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("a capability this test does not know: {other}"),
    }
}

/// An admission request by `user` (with `node` in its token, if any)
/// changing `old` into `new`.
struct Request {
    what: &'static str,
    user: &'static str,
    node: Option<&'static str>,
    old: Value,
    new: Value,
    allowed: bool,
}

const SENSOR: &str = "system:serviceaccount:kube-system:sensor";

fn pod(node: &str, labels: Value, notes: Value) -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "shop", "labels": labels, "annotations": notes,
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1"}]},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx:1"}]},
    })
}

fn with(mut v: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut v;
    for k in &path[..path.len() - 1] {
        at = &mut at[*k];
    }
    at[path[path.len() - 1]] = value;
    v
}

/// The table the README's threat model stands on.
fn requests() -> Vec<Request> {
    let plain = pod("node-a", json!({"app": "web"}), json!({"note": "x"}));
    let quarantined = pod(
        "node-a",
        json!({"app": "web", "quarantine": "true"}),
        json!({"note": "x", "sensor.io/quarantine": "{\"rule\":\"r\"}"}),
    );
    let on_b = with(plain.clone(), &["spec", "nodeName"], json!("node-b"));
    let quarantined_on_b = with(quarantined.clone(), &["spec", "nodeName"], json!("node-b"));
    let r = |what, user, node, old: &Value, new: &Value, allowed| Request {
        what,
        user,
        node,
        old: old.clone(),
        new: new.clone(),
        allowed,
    };
    vec![
        r(
            "the sensor quarantines a pod of its node",
            SENSOR,
            Some("node-a"),
            &plain,
            &quarantined,
            true,
        ),
        r(
            "the sensor quarantines again (annotation updated)",
            SENSOR,
            Some("node-a"),
            &quarantined,
            &with(
                quarantined.clone(),
                &["metadata", "annotations", "sensor.io/quarantine"],
                json!("{}"),
            ),
            true,
        ),
        r(
            "the sensor quarantines a pod of another node",
            SENSOR,
            Some("node-a"),
            &on_b,
            &quarantined_on_b,
            false,
        ),
        r(
            "a token bound to no node",
            SENSOR,
            None,
            &plain,
            &quarantined,
            false,
        ),
        r(
            "the sensor strips quarantine=true",
            SENSOR,
            Some("node-a"),
            &quarantined,
            &with(
                quarantined.clone(),
                &["metadata", "labels"],
                json!({"app": "web"}),
            ),
            false,
        ),
        r(
            "the sensor sets quarantine=false",
            SENSOR,
            Some("node-a"),
            &quarantined,
            &with(
                quarantined.clone(),
                &["metadata", "labels", "quarantine"],
                json!("false"),
            ),
            false,
        ),
        r(
            "the sensor adds another label",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(
                quarantined.clone(),
                &["metadata", "labels", "role"],
                json!("admin"),
            ),
            false,
        ),
        r(
            "the sensor changes another label",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(plain.clone(), &["metadata", "labels", "app"], json!("db")),
            false,
        ),
        r(
            "the sensor removes the quarantine annotation",
            SENSOR,
            Some("node-a"),
            &quarantined,
            &with(
                quarantined.clone(),
                &["metadata", "annotations"],
                json!({"note": "x"}),
            ),
            false,
        ),
        r(
            "the sensor removes another label",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(plain.clone(), &["metadata", "labels"], json!({})),
            false,
        ),
        r(
            "the sensor changes another annotation",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(
                plain.clone(),
                &["metadata", "annotations", "note"],
                json!("y"),
            ),
            false,
        ),
        r(
            "the sensor changes the image",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(
                plain.clone(),
                &["spec", "containers"],
                json!([{"name": "web", "image": "evil:1"}]),
            ),
            false,
        ),
        r(
            "the sensor adds a finalizer",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(plain.clone(), &["metadata", "finalizers"], json!(["x/y"])),
            false,
        ),
        r(
            "the sensor drops the owner",
            SENSOR,
            Some("node-a"),
            &plain,
            &with(plain.clone(), &["metadata", "ownerReferences"], json!([])),
            false,
        ),
        r(
            "an operator lifts a quarantine (not the sensor: not matched)",
            "alice",
            None,
            &quarantined,
            &with(
                quarantined.clone(),
                &["metadata", "labels"],
                json!({"app": "web"}),
            ),
            true,
        ),
    ]
}

/// Evaluates the policy on `r` as the API server does: match conditions,
/// then the variables in order, then every validation.
fn admit(policy: &ValidatingAdmissionPolicy, r: &Request) -> Result<(), String> {
    let spec = policy.spec.as_ref().unwrap();
    let mut extra = serde_json::Map::new();
    if let Some(n) = r.node {
        extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
    }
    let mut ctx = Context::default();
    let request = json!({"operation": "UPDATE", "userInfo": {"username": r.user, "extra": extra}});
    ctx.add_variable("request", request).unwrap();
    ctx.add_variable("object", r.new.clone()).unwrap();
    ctx.add_variable("oldObject", r.old.clone()).unwrap();
    let eval = |ctx: &Context, expr: &str| -> Cel {
        Program::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
            .execute(ctx)
            .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
    };
    for m in spec.match_conditions.iter().flatten() {
        if eval(&ctx, &m.expression) != Cel::Bool(true) {
            return Ok(());
        }
    }
    let mut vars = std::collections::HashMap::new();
    for v in spec.variables.iter().flatten() {
        let mut with_vars = ctx.new_inner_scope();
        with_vars.add_variable_from_value("variables", vars.clone());
        let value = eval(&with_vars, &v.expression);
        vars.insert(v.name.clone(), value);
    }
    ctx.add_variable_from_value("variables", vars);
    for v in spec.validations.iter().flatten() {
        match eval(&ctx, &v.expression) {
            Cel::Bool(true) => {}
            Cel::Bool(false) => return Err(v.message.clone().unwrap_or_default()),
            other => panic!("{}: not a bool: {other:?}", v.expression),
        }
    }
    Ok(())
}

#[test]
fn the_admission_policy_allows_the_quarantine_label_and_nothing_else() {
    let (file, v) = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "ValidatingAdmissionPolicy")
        .unwrap();
    let policy: ValidatingAdmissionPolicy = strict(&file, &v);
    let binding = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "ValidatingAdmissionPolicyBinding")
        .unwrap()
        .1;
    assert_eq!(binding["spec"]["policyName"], v["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        policy.spec.as_ref().unwrap().failure_policy.as_deref(),
        Some("Fail")
    );
    let mut wrong = Vec::new();
    for r in requests() {
        let verdict = admit(&policy, &r);
        if verdict.is_ok() != r.allowed {
            wrong.push(format!(
                "{}: expected allowed={}, got {verdict:?}",
                r.what, r.allowed
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

fn chart() -> PathBuf {
    deploy().join("helm/sensor")
}

/// Every `.Values.a.b` a template names.
fn value_paths(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\.Values((?:\.[A-Za-z0-9_]+)+)").unwrap();
    re.captures_iter(text)
        .map(|c| c[1][1..].to_string())
        .collect()
}

#[test]
fn the_chart_is_whole_and_matches_the_manifests() {
    let chart_yaml: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart_yaml["version"], env!("CARGO_PKG_VERSION"));
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();

    // Every value a template reads has a default.
    let mut missing = Vec::new();
    for t in std::fs::read_dir(chart().join("templates")).unwrap() {
        let t = t.unwrap().path();
        let text = std::fs::read_to_string(&t).unwrap();
        for path in value_paths(&text) {
            let found = path.split('.').try_fold(&values, |v, k| v.get(k));
            if found.is_none() {
                missing.push(format!(
                    "{}: .Values.{path}",
                    t.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(missing.is_empty(), "no default in values.yaml: {missing:?}");

    // The files the chart links to are there (helm packages them).
    let policies: Vec<_> = std::fs::read_dir(chart().join("policies"))
        .unwrap()
        .collect();
    assert!(policies.len() >= 3, "the shipped policies");
    assert!(std::fs::read_to_string(chart().join("crds/crds.yaml"))
        .unwrap()
        .contains("TracingPolicy"));
    assert!(std::fs::read_to_string(chart().join("admission.yaml"))
        .unwrap()
        .contains("ValidatingAdmissionPolicy"));

    // The defaults are the plain manifests' settings.
    let c = container(&daemonset());
    let plain = serde_json::to_value(c.resources.clone().unwrap()).unwrap();
    assert_eq!(values["resources"], plain, "resources");
    let plain_tolerations = serde_json::to_value(
        daemonset()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .tolerations
            .unwrap(),
    )
    .unwrap();
    assert_eq!(values["tolerations"], plain_tolerations, "tolerations");
    assert_eq!(values["priorityClassName"], "system-node-critical");
    let template = std::fs::read_to_string(chart().join("templates/daemonset.yaml")).unwrap();
    let caps_line = template
        .lines()
        .find(|l| l.trim_start().starts_with("add: ["))
        .unwrap();
    let chart_caps: Vec<String> = caps_line
        .trim()
        .trim_start_matches("add: [")
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().to_lowercase())
        .collect();
    assert_eq!(
        chart_caps,
        granted(&c),
        "the chart grants what deploy/ grants"
    );
    render_where_helm_is();
}

/// `helm template` of the chart, checked as `deploy/` is.
fn render_where_helm_is() {
    // Helm is not packaged by Debian and this machine reaches no other
    // source: the render runs where helm is installed, and says so here.
    let Ok(out) = std::process::Command::new("helm")
        .args(["template", "t", "--namespace", "kube-system"])
        .arg(chart())
        .output()
    else {
        eprintln!("note: helm is not installed: the chart was checked without rendering it");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut daemonsets = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        match v["kind"].as_str() {
            Some("DaemonSet") => {
                hardened(&strict::<DaemonSet>("helm template", &v));
                daemonsets += 1;
            }
            Some("ValidatingAdmissionPolicy") => {
                let p: ValidatingAdmissionPolicy = strict("helm template", &v);
                let m = &p.spec.unwrap().match_conditions.unwrap()[0].expression;
                assert!(
                    m.contains("system:serviceaccount:kube-system:sensor"),
                    "{m}"
                );
            }
            _ => {}
        }
    }
    assert_eq!(daemonsets, 1);
}
