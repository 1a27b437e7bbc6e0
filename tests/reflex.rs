//! The exec reflex: policies decided and enforced in the kernel, scoped to the
//! test's own cgroup.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn shipped_reflex_kills_curl_in_scope_only() {
    if !can_run("shipped_reflex_kills_curl_in_scope_only") {
        return;
    }
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&[
        "--policy",
        &shipped("reflex.yaml"),
        "--enforce-cgroup",
        &scope,
    ]);

    let out = cg
        .command("/bin/sh")
        .args(["-c", "curl --version; exit $?"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "curl in scope dies with SIGKILL"
    );
    assert!(
        out.stdout.is_empty(),
        "curl printed nothing: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    let curl = resolved("/usr/bin/curl");
    let hit = daemon.wait_for("policy event", |e| execs(e, "process_kprobe", &curl));
    let k = &hit["process_kprobe"];
    assert_eq!(k["function_name"], "security_bprm_check");
    assert_eq!(k["action"], "KPROBE_ACTION_SIGKILL");
    assert_eq!(k["policy_name"], "reflex-exfiltration-tools");
    // The caller, as in Tetragon: the shell's child before it became curl.
    assert_eq!(k["process"]["binary"], resolved("/bin/sh"));
    let exit = daemon.wait_for("exit event", |e| {
        body(e, "process_exit").is_some_and(|b| {
            b["process"]["pid"] == k["process"]["pid"] && b["process"]["binary"] == curl.as_str()
        })
    });
    assert_eq!(exit["process_exit"]["signal"], "SIGKILL");

    // The same binary outside the scope runs normally.
    let out = Command::new("curl").arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("curl "));
    let events = daemon.events();
    let kills = events
        .iter()
        .filter(|e| execs(e, "process_kprobe", &curl))
        .count();
    assert_eq!(kills, 1, "only the curl in scope hit the policy");
}

/// A kprobe policy on `security_bprm_check` with one selector.
fn bprm_policy(name: &str, selector: &str) -> String {
    kprobe_policy(
        "TracingPolicy",
        &format!("{{name: {name}}}"),
        "security_bprm_check",
        "linux_binprm",
        selector,
    )
}

fn equal_policy(name: &str, binary: &str) -> String {
    bprm_policy(
        name,
        &format!(
            "    - matchArgs: [{{index: 0, operator: Equal, values: [\"{binary}\"]}}]\n      matchActions: [{{action: Sigkill}}]\n"
        ),
    )
}

#[test]
fn blocked_binary_never_runs_an_instruction() {
    if !can_run("blocked_binary_never_runs_an_instruction") {
        return;
    }
    let dir = TempDir::new();
    let blocked = dir.path().join("blocked-touch");
    std::fs::copy("/usr/bin/touch", &blocked).unwrap();
    let blocked = blocked.to_string_lossy().into_owned();
    let policy = policy_file(&dir, "p.yaml", &equal_policy("block-touch", &blocked));
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);

    let marker = dir.path().join("marker");
    for i in 0..200 {
        let status = cg.command(&blocked).arg(&marker).status().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "run {i}: {status:?}");
    }
    assert!(!marker.exists(), "the blocked binary created its marker");
    daemon.wait_for("a kill", |e| execs(e, "process_kprobe", &blocked));

    // Outside the scope the same binary does create it: the marker test can fail.
    assert!(Command::new(&blocked)
        .arg(&marker)
        .status()
        .unwrap()
        .success());
    assert!(marker.exists());
}

fn follow_policy(follow: bool) -> String {
    let sh = resolved("/bin/sh");
    bprm_policy(
        "shell-children",
        &format!(
            "    - matchBinaries: [{{operator: In, values: [\"{sh}\"], followChildren: {follow}}}]
      matchArgs: [{{index: 0, operator: Postfix, values: [/true]}}]
      matchActions: [{{action: Sigkill}}]
"
        ),
    )
}

/// `sh -c 'env true'`: true is a grandchild of the shell, started by env.
fn grandchild_status(follow: bool) -> (Option<i32>, Option<i32>) {
    let dir = TempDir::new();
    let policy = policy_file(&dir, "p.yaml", &follow_policy(follow));
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let _daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);
    let grandchild = cg
        .command("/bin/sh")
        .args(["-c", "/usr/bin/env /bin/true; exit $?"])
        .status()
        .unwrap();
    let child = cg
        .command("/bin/sh")
        .args(["-c", "/bin/true; exit $?"])
        .status()
        .unwrap();
    (grandchild.code(), child.code())
}

#[test]
fn follow_children_kills_what_the_shell_starts_at_any_depth() {
    if !can_run("follow_children_kills_what_the_shell_starts_at_any_depth") {
        return;
    }
    assert_eq!(grandchild_status(true), (Some(137), Some(137)));
    // Without followChildren only the shell's direct exec matches.
    assert_eq!(grandchild_status(false), (Some(0), Some(137)));
}

#[test]
fn signal_action_and_nopost() {
    if !can_run("signal_action_and_nopost") {
        return;
    }
    let dir = TempDir::new();
    let sleep = resolved("/bin/sleep");
    let policy = policy_file(
        &dir,
        "p.yaml",
        &format!(
            "apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: signal-sleep}}
spec:
  lsmhooks:
  - hook: bprm_check_security
    args: [{{index: 0, type: linux_binprm}}]
    selectors:
    - matchArgs: [{{index: 0, operator: Equal, values: [\"{sleep}\"]}}]
      matchActions: [{{action: Signal, argSig: 10}}]
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    selectors:
    - matchBinaries: [{{operator: Prefix, values: [/usr/bin/sle]}}]
      matchActions: [{{action: NoPost}}, {{action: Sigkill}}]
"
        ),
    );
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);
    let status = cg.command("/bin/sleep").arg("5").status().unwrap();
    // Both selectors match; Sigkill wins over the SIGUSR1 of the other hook.
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let lsm = daemon.wait_for("lsm event", |e| execs(e, "process_lsm", &sleep));
    assert_eq!(lsm["process_lsm"]["function_name"], "bprm_check_security");
    assert_eq!(lsm["process_lsm"]["action"], "KPROBE_ACTION_SIGNAL");
    daemon.wait_for("exit", |e| is(e, "process_exit", &sleep));
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| e.get("process_tracepoint").is_some()),
        "NoPost suppresses the tracepoint selector's event"
    );
}

/// A binary 130 directories deep: the kernel's walk gives up before the
/// root, so the path's head is unknown. A `Prefix` kill on the directory it
/// is in, and a `NotPrefix` kill that an allow-list would write, both fire
/// (fail closed); an `In` list of short paths cannot match; the event says
/// the path was truncated.
#[test]
fn a_path_too_deep_to_resolve_fails_closed() {
    if !can_run("a_path_too_deep_to_resolve_fails_closed") {
        return;
    }
    let dir = TempDir::new();
    let top = dir.path().join("deep");
    let mut deep = top.clone();
    for _ in 0..130 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let bin = deep.join("tool");
    std::fs::copy("/bin/true", &bin).unwrap();
    let bin = bin.to_string_lossy().into_owned();
    let top = top.to_string_lossy().into_owned();
    // A NotPrefix kill admits the sensor's own binary, which self-protection
    // refuses unless the policy says so (the kill is scoped to the test's
    // cgroup anyway).
    let policy = |op: &str, value: &str| {
        format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: deep-{}, annotations: {{sensor.io/allow-protected: \"true\"}}}}\nspec:\n  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n    selectors:\n    - matchBinaries: [{{operator: {op}, values: [\"{value}\"]}}]\n      matchActions: [{{action: Sigkill}}]\n",
            op.to_lowercase()
        )
    };
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    for (op, value, want) in [
        ("Prefix", top.as_str(), Some(137)),
        ("NotPrefix", "/usr/", Some(137)),
        ("In", "/bin/true", Some(0)),
    ] {
        let file = policy_file(&dir, &format!("{op}.yaml"), &policy(op, value));
        let daemon = Daemon::start(&["--policy", &file, "--enforce-cgroup", &scope]);
        assert_eq!(cg.exit_code(&bin), want, "{op} {value}");
        let e = daemon.wait_for("the exec", |e| {
            e["process_exec"]["process"]["binary"]
                .as_str()
                .is_some_and(|b| b.ends_with("/d/d/tool"))
        });
        let flags = e["process_exec"]["process"]["flags"].as_str().unwrap_or("");
        assert!(flags.contains("truncFilename"), "{flags}");
    }
    // A shallow binary under NotPrefix /usr/ still runs: only the unknown
    // head fails closed.
    let shallow = copy_true(&dir, "shallow");
    let file = policy_file(
        &dir,
        "shallow.yaml",
        &policy("NotPrefix", &dir.path().to_string_lossy()),
    );
    let _daemon = Daemon::start(&["--policy", &file, "--enforce-cgroup", &scope]);
    assert_eq!(cg.exit_code(&shallow), Some(0));
}

/// A copy of python3 at `dir/name` and a policy file that follows it and
/// its children, killing any of them that execs a binary named `true`.
fn followed_python(dir: &TempDir, name: &str) -> (String, String) {
    let root = dir.path().join(name);
    std::fs::copy(resolved("/usr/bin/python3"), &root).unwrap();
    let root = root.to_string_lossy().into_owned();
    let selector = format!(
        "    - matchBinaries: [{{operator: In, values: [\"{root}\"], followChildren: true}}]
      matchArgs: [{{index: 0, operator: Postfix, values: [/true]}}]
      matchActions: [{{action: Sigkill}}]
"
    );
    let policy = policy_file(dir, "p.yaml", &bprm_policy(name, &selector));
    (root, policy)
}

/// More followed processes alive at once than the kernel's process map
/// holds (`--process-states 8`): the states already there are never
/// evicted (the root and its first children stay followed), the ones that
/// do not fit are refused and reported as a `process-state-full` alert
/// with their count, and once children exit the root's next child is
/// followed again.
#[test]
fn a_full_process_map_keeps_live_states_and_reports_the_refused() {
    if !can_run("a_full_process_map_keeps_live_states_and_reports_the_refused") {
        return;
    }
    let dir = TempDir::new();
    let (root, policy) = followed_python(&dir, "forker");
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&[
        "--policy",
        &policy,
        "--enforce-cgroup",
        &scope,
        "--process-states",
        "8",
    ]);
    // Twelve children live at once, then each execs /bin/true.
    let script = "import os, subprocess\n\
         r, w = os.pipe()\n\
         pids = []\n\
         for _ in range(12):\n    pid = os.fork()\n    if pid == 0:\n        os.close(w)\n        os.read(r, 1)\n        os.execv('/bin/true', ['/bin/true'])\n    pids.append(pid)\n\
         os.close(w)\n\
         codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]\n\
         after = subprocess.call(['/bin/true'])\n\
         print(' '.join(map(str, codes)), after)\n";
    let out = cg.command(&root).args(["-c", script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<i32> = text
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    // The root holds one entry; its first seven children the rest.
    assert_eq!(
        codes,
        [vec![-9; 7], vec![0; 5], vec![-9]].concat(),
        "the first seven children killed, the five refused not, the root still followed"
    );
    // Reported every 2 s, so the five may come in more than one alert.
    let reported = || -> u64 {
        daemon
            .events()
            .iter()
            .filter(|e| e["sensor_alert"]["rule"] == "process-state-full")
            .filter_map(|e| e["sensor_alert"]["count"].as_u64())
            .sum()
    };
    eventually_within(
        "the refused states reported",
        Duration::from_secs(15),
        || reported() >= 5,
    );
    assert_eq!(reported(), 5);
    let errors = daemon.scrape().sum(
        "tetragon_errors_total",
        &[("type", "process_state_map_full")],
    );
    assert_eq!(errors, 5.0);
}

/// Churn: a followed process forks 70,000 children, more than the kernel's
/// process map holds, and each exits at once. The map holds only the
/// living, so the followed root keeps its state and its next child's exec
/// is still killed.
#[test]
fn follow_children_survives_process_churn_past_the_map_size() {
    if !can_run("follow_children_survives_process_churn_past_the_map_size") {
        return;
    }
    let dir = TempDir::new();
    let (root, policy) = followed_python(&dir, "churner");
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let _daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);
    let script = "import os, subprocess\n\
         before = subprocess.call(['/bin/true'])\n\
         for _ in range(70000):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n\
         after = subprocess.call(['/bin/true'])\n\
         print(before, after)\n";
    let out = cg.command(&root).args(["-c", script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "-9 -9", "killed before and after the churn");
}

/// Tetragon's `examples/tracingpolicy/security_bprm_check.yaml`: an Equal
/// on the binary and a `returnArg`; the event carries `return` 0 (the
/// check let the exec go on). Its path is this test's copy of `true`.
#[test]
fn tetragons_security_bprm_check_example_reports_the_return_value() {
    if !can_run("tetragons_security_bprm_check_example_reports_the_return_value") {
        return;
    }
    let dir = TempDir::new();
    let sample = copy_true(&dir, "sample-exec");
    let example = format!(
        r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sample-no-exec-id"
spec:
  kprobes:
  - call: "security_bprm_check"
    syscall: false
    args:
    - index: 0
      type: "linux_binprm"
    returnArg:
      index: 0
      type: "int"
    selectors:
      - matchArgs:
          - index: 0
            operator: "Equal"
            values:
              - "{sample}"
"#
    );
    let file = policy_file(&dir, "p.yaml", &example);
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &file, "--enforce-cgroup", &scope]);
    assert_eq!(cg.exit_code(&sample), Some(0));
    let e = daemon.wait_for("the policy event", |e| execs(e, "process_kprobe", &sample));
    let k = &e["process_kprobe"];
    assert_eq!(k["policy_name"], "sample-no-exec-id");
    // The calling process, as Tetragon shows it: this test's child before
    // its exec, still this test's image.
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    assert_eq!(k["process"]["binary"], me.to_string_lossy().as_ref(), "{e}");
    assert!(
        k["process"]["flags"]
            .as_str()
            .is_some_and(|f| f.contains("clone")),
        "{e}"
    );
    assert_eq!(k["return"]["int_arg"], 0, "{e}");
}

/// Tetragon's `examples/tracingpolicy/process-exec/process-exec-elf-begin.yaml`
/// (its comments left out): every exec posts the ELF binary that will run
/// (for a script, its interpreter) in `file_arg`, with the calling
/// process.
#[test]
fn tetragons_elf_begin_example_reports_the_binary_that_runs() {
    if !can_run("tetragons_elf_begin_example_reports_the_binary_that_runs") {
        return;
    }
    let example = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "process-exec-elf-begin"
spec:
  kprobes:
  - call: "security_bprm_creds_from_file"
    syscall: false
    args:
    - index: 0
      type: "nop"
    - index: 1
      type: "file"
"#;
    let dir = TempDir::new();
    let file = policy_file(&dir, "p.yaml", example);
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &file, "--enforce-cgroup", &scope]);
    assert_eq!(cg.exit_code(script.to_str().unwrap()), Some(0));
    let sh = resolved("/bin/sh");
    let e = daemon.wait_for("the script's exec", |e| {
        body(e, "process_kprobe").is_some_and(|k| {
            k["policy_name"] == "process-exec-elf-begin"
                && k["args"][0]["file_arg"]["path"] == sh.as_str()
        })
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["function_name"], "security_bprm_creds_from_file");
    // One argument: the nop is not reported.
    assert_eq!(k["args"].as_array().map(Vec::len), Some(1), "{e}");
    // The caller: this test's child before its exec.
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    assert_eq!(k["process"]["binary"], me.to_string_lossy().as_ref(), "{e}");
}
