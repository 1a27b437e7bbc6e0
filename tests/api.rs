//! The control API: Tetragon's FineGuidanceSensors on the daemon's unix
//! socket. Policy calls through `sensor policy ...` change what the kernel
//! enforces before they return (seen on a real exec or connect each time),
//! a bad policy is refused with status 2 and changes nothing, and a client
//! generated from the protos (Python) streams filtered events.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Backend, PORT};
use common::*;

struct Api {
    address: String,
}

impl Api {
    fn policy(&self, args: &[&str]) -> Output {
        Command::new(SENSOR)
            .arg("policy")
            .args(args)
            .args(["--server-address", &self.address])
            .output()
            .expect("running sensor policy")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.policy(args);
        assert!(
            out.status.success(),
            "sensor policy {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn list(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list --json is JSON")
    }
}

#[test]
fn policy_calls_take_effect_before_they_return_and_a_bad_one_changes_nothing() {
    if !can_run("policy_calls_take_effect_before_they_return_and_a_bad_one_changes_nothing") {
        return;
    }
    let dir = TempDir::new();
    let (one, two) = (copy_true(&dir, "one"), copy_true(&dir, "two"));
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let address = format!("unix://{}", dir.path().join("api.sock").display());
    let daemon = Daemon::start(&["--enforce-cgroup", &scope, "--server-address", &address]);
    let api = Api { address };
    let mode = std::fs::metadata(dir.path().join("api.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "the socket is the owner's only"
    );

    let policy = policy_file(&dir, "kill.yaml", &kill_policy("kill-api", &one));
    assert_eq!(cg.exit_code(&one), Some(0), "before: runs");
    api.ok(&["add", &policy]);
    assert_eq!(
        cg.exit_code(&one),
        Some(137),
        "killed from the first exec after add returns"
    );
    let list = api.list();
    let p = &list["policies"][0];
    assert_eq!(p["name"], "kill-api");
    assert_eq!(p["state"], "TP_STATE_ENABLED");
    assert_eq!(p["mode"], "TP_MODE_ENFORCE");
    assert_eq!(p["info"], "api:kill-api");
    assert!(
        p["kernel_memory_bytes"].as_str().is_some_and(|n| n != "0"),
        "{p}"
    );

    api.ok(&["disable", "kill-api"]);
    assert_eq!(cg.exit_code(&one), Some(0), "disabled");
    assert_eq!(api.list()["policies"][0]["state"], "TP_STATE_DISABLED");
    api.ok(&["enable", "kill-api"]);
    assert_eq!(cg.exit_code(&one), Some(137), "enabled again");

    api.ok(&["mode", "kill-api", "monitor"]);
    assert_eq!(cg.exit_code(&one), Some(0), "monitor mode kills nothing");
    daemon.wait_for("the monitored hit", |e| {
        e["process_tracepoint"]["policy_name"] == "kill-api"
            && e["process_tracepoint"]["action"] == "KPROBE_ACTION_SIGKILL"
            && e["process_tracepoint"]["process"]["signal"].is_null()
    });
    let counters = &api.list()["policies"][0]["stats"]["action_counters"];
    assert_eq!(counters["monitor_signal"], "1", "{counters}");
    api.ok(&["mode", "kill-api", "enforce"]);
    assert_eq!(cg.exit_code(&one), Some(137), "enforcing again");

    // A bad policy: refused like `policy check` would, and nothing changes.
    let bad = policy_file(
        &dir,
        "bad.yaml",
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bad}\nspec:\n  kprobes:\n  - call: no_such_hook\n",
    );
    let out = api.policy(&["add", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad: spec.kprobes[0].call"), "{err}");
    assert_eq!(
        cg.exit_code(&one),
        Some(137),
        "the running set still enforces"
    );
    assert_eq!(api.list()["policies"].as_array().unwrap().len(), 1);

    // Replacing is all or nothing: the new version, and only it.
    let replaced = policy_file(&dir, "kill2.yaml", &kill_policy("kill-api", &two));
    api.ok(&["add", &replaced]);
    assert_eq!(cg.exit_code(&two), Some(137));
    assert_eq!(cg.exit_code(&one), Some(0));

    api.ok(&["delete", "kill-api"]);
    assert_eq!(cg.exit_code(&two), Some(0), "deleted");
    let out = api.policy(&["delete", "kill-api"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy named kill-api"));
}

#[test]
fn a_connect_policy_added_through_the_api_denies_at_once() {
    if !can_run("a_connect_policy_added_through_the_api_denies_at_once") {
        return;
    }
    let backend = Backend::start();
    let dir = TempDir::new();
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let address = format!("unix://{}", dir.path().join("api.sock").display());
    let _daemon = Daemon::start(&["--enforce-cgroup", &scope, "--server-address", &address]);
    let api = Api { address };
    let connect = || connect_errno(cg.command("/usr/bin/python3"), "AF_INET", &backend.v4, PORT);
    assert_eq!(connect(), "0");
    let policy = policy_file(
        &dir,
        "deny.yaml",
        &kprobe_policy(
            "TracingPolicy",
            "{name: deny-backend}",
            "tcp_connect",
            "sock",
            &format!(
                "    - matchArgs: [{{index: 0, operator: DAddr, values: [{}]}}]\n      matchActions: [{{action: Override, argError: -1}}]\n",
                backend.cidr4()
            ),
        ),
    );
    api.ok(&["add", &policy]);
    assert_eq!(
        connect(),
        "1",
        "EPERM from the first connect after add returns"
    );
    api.ok(&["delete", "deny-backend"]);
    assert_eq!(connect(), "0");
}

#[test]
fn a_client_generated_from_the_protos_streams_filtered_events() {
    if !can_run("a_client_generated_from_the_protos_streams_filtered_events") {
        return;
    }
    let backend = Backend::start();
    let dir = TempDir::new();
    let curl_bin = resolved("/usr/bin/curl");
    let policy = policy_file(
        &dir,
        "post.yaml",
        &kprobe_policy(
            "TracingPolicy",
            "{name: watch-backend}",
            "tcp_connect",
            "sock",
            &format!(
                "    - matchArgs: [{{index: 0, operator: DAddr, values: [{}]}}]\n",
                backend.cidr4()
            ),
        ),
    );
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let sock = dir.path().join("api.sock");
    let address = format!("unix://{}", sock.display());
    let _daemon = Daemon::start(&[
        "--policy",
        &policy,
        "--enforce-cgroup",
        &scope,
        "--server-address",
        &address,
    ]);
    let out = dir.path().join("py");
    std::fs::create_dir(&out).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/grpc/getevents.py");
    let mut client = Command::new("/usr/bin/python3")
        .args([
            script,
            sock.to_str().unwrap(),
            out.to_str().unwrap(),
            "curl",
        ])
        .args(["PROCESS_EXEC", "PROCESS_KPROBE", "PROCESS_EXIT"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the Python client");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = client.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    // Events flow until the client has one of each type; `true` runs too,
    // and the client's binary filter must keep it out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the client got every type within 20 s: {:?}",
            lines.lock().unwrap()
        );
        let _ = cg.command("/bin/true").status();
        let _ = cg
            .command("/bin/sh")
            .args([
                "-c",
                &format!("curl -s -o /dev/null --max-time 3 {}", backend.url()),
            ])
            .status();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(client.wait().unwrap().success());
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for kind in ["process_exec", "process_kprobe", "process_exit"] {
        assert!(
            events.iter().any(|e| e.get(kind).is_some()),
            "a {kind} event: {lines:?}"
        );
    }
    for e in &events {
        let body = e
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.starts_with("process_"))
            .unwrap()
            .1;
        assert_eq!(
            body["process"]["binary"],
            curl_bin.as_str(),
            "only curl passes the filter: {e}"
        );
    }
    let kprobe = events.iter().find_map(|e| e.get("process_kprobe")).unwrap();
    assert_eq!(kprobe["function_name"], "tcp_connect");
    assert_eq!(kprobe["args"][0]["sock_arg"]["daddr"], backend.v4);
}

/// A policy whose one hook has these selectors (binaries, action).
fn selectors_policy(name: &str, selectors: &[(&[String], &str)]) -> String {
    let mut y = format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    selectors:\n"
    );
    for (bins, action) in selectors {
        let values: Vec<String> = bins.iter().map(|b| format!("\"{b}\"")).collect();
        y.push_str(&format!(
            "    - matchBinaries: [{{operator: In, values: [{}]}}]\n      matchActions: [{{action: {action}}}]\n",
            values.join(", ")
        ));
    }
    y
}

#[test]
fn a_policy_switch_is_whole_in_the_kernel_with_no_moment_of_a_mix() {
    if !can_run("a_policy_switch_is_whole_in_the_kernel_with_no_moment_of_a_mix") {
        return;
    }
    let dir = TempDir::new();
    let (a, b) = (copy_true(&dir, "a"), copy_true(&dir, "b"));
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let address = format!("unix://{}", dir.path().join("api.sock").display());
    let _daemon = Daemon::start(&["--enforce-cgroup", &scope, "--server-address", &address]);
    let api = Api { address };
    // Both versions kill `a`, through a different selector. A mix of the two
    // (the second's first selector, a Post, with the first's values) would
    // let `a` through: the first match in a hook decides. The first
    // version's selector holds 200 more values, so that tables written in
    // place would hold such a mix for a while.
    let mut first: Vec<String> = vec![a.clone()];
    first.extend((0..199).map(|i| format!("/nonexistent/{i}")));
    let one = policy_file(
        &dir,
        "one.yaml",
        &selectors_policy("swap", &[(&first, "Sigkill")]),
    );
    let two = policy_file(
        &dir,
        "two.yaml",
        &selectors_policy(
            "swap",
            &[
                (std::slice::from_ref(&b), "Post"),
                (std::slice::from_ref(&a), "Sigkill"),
            ],
        ),
    );
    api.ok(&["add", &one]);
    let (stop, out) = (dir.path().join("stop"), dir.path().join("codes"));
    let mut prober = cg
        .command("/bin/sh")
        .args([
            "-c",
            &format!(
                "while [ ! -e '{}' ]; do '{a}'; echo $?; done > '{}' 2>/dev/null",
                stop.display(),
                out.display()
            ),
        ])
        .spawn()
        .unwrap();
    for i in 0..40 {
        api.ok(&["add", if i % 2 == 0 { &two } else { &one }]);
    }
    std::fs::write(&stop, "").unwrap();
    prober.wait().unwrap();
    let codes = std::fs::read_to_string(&out).unwrap();
    let killed = codes.lines().filter(|l| *l == "137").count();
    let survived = codes.lines().filter(|l| *l != "137").count();
    eprintln!("prober during 40 switches: {killed} killed, {survived} survived");
    assert!(killed > 10, "the prober ran through the switches");
    assert_eq!(survived, 0, "no exec saw a mix of the two versions");
}
