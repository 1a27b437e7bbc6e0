//! Override on exec through BPF-LSM (`bprm_check_security`): the exec is
//! refused before it happens, the caller survives and its `execve` fails
//! with the policy's errno, and the event shows the caller (Tetragon's
//! semantics); Post's `imaHash` adds the binary's IMA hash. On a kernel
//! without usable BPF-LSM (or, for the hash, without IMA's helper) such a
//! policy is refused at load with the reason, and the test says it skips;
//! the kernel matrix runs it where BPF-LSM is active.
mod common;

use std::process::Command;

use common::*;

/// A policy refusing execs of binaries whose path ends in `suffix`, on
/// `hook` (`kprobes: security_bprm_check` or `lsmhooks: bprm_check_security`).
fn override_policy(kprobe: bool, suffix: &str, errno: i32) -> String {
    let (section, hook) = if kprobe {
        ("kprobes", "call: security_bprm_check\n    syscall: false")
    } else {
        ("lsmhooks", "hook: bprm_check_security")
    };
    format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: no-{}}}\nspec:\n  {section}:\n  - {hook}\n    args: [{{index: 0, type: linux_binprm}}]\n    selectors:\n    - matchArgs: [{{index: 0, operator: Postfix, values: [\"{suffix}\"]}}]\n      matchActions: [{{action: Override, argError: {errno}}}]\n",
        if kprobe { "kprobe" } else { "lsm" }
    )
}

/// Whether this kernel can run the test; if not, checks that the policy is
/// refused at load with the reason, and says SKIP.
fn lsm_or_refusal(test: &str, policy: &str) -> bool {
    let usable = probe_says("exec Override", "BPF-LSM") && !probe_says("exec Override", "refused");
    usable_or_refused(
        test,
        policy,
        usable,
        &["Override on exec needs BPF-LSM"],
        "usable BPF-LSM",
    )
}

/// `usable`, or else: `policy` is refused at load (exit status 2, its
/// matchActions named, with one of `reasons`), and the test says it
/// skips for want of `lacking`.
fn usable_or_refused(
    test: &str,
    policy: &str,
    usable: bool,
    reasons: &[&str],
    lacking: &str,
) -> bool {
    if usable {
        return true;
    }
    let out = Command::new(SENSOR)
        .args(["run", "--policy", policy, "--output", "none"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("matchActions") && reasons.iter().any(|r| err.contains(r)),
        "{err}"
    );
    skip_kernel(
        test,
        &format!("{lacking} (the policy was refused at load, as it must be)"),
    );
    false
}

/// Runs a copy of `true` named `name` from python in the cgroup; python
/// prints the errno its execv failed with, or nothing when it ran.
fn exec_from_python(cg: &TestCgroup, binary: &str) -> (String, bool) {
    let script = format!(
        "import os, sys\ntry:\n    os.execv('{binary}', ['{binary}'])\nexcept OSError as e:\n    print(e.errno)\n    sys.exit(0)\n"
    );
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        out.status.success(),
    )
}

fn refused_exec(test: &str, kprobe: bool, event: &str, function: &str) {
    if !can_run(test) {
        return;
    }
    let dir = TempDir::new();
    let blocked = dir.path().join("refused-true");
    std::fs::copy("/bin/true", &blocked).unwrap();
    let blocked = blocked.to_string_lossy().into_owned();
    let policy = policy_file(
        &dir,
        "p.yaml",
        &override_policy(kprobe, "/refused-true", -1),
    );
    if !lsm_or_refusal(test, &policy) {
        return;
    }
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);

    let (errno, lived) = exec_from_python(&cg, &blocked);
    assert_eq!(errno, "1", "execve failed with EPERM");
    assert!(lived, "the caller lives on after the refusal");
    let python = resolved("/usr/bin/python3");
    let e = daemon.wait_for("override event", |e| {
        body(e, event).is_some_and(|b| b["action"] == "KPROBE_ACTION_OVERRIDE")
    });
    let b = &e[event];
    assert_eq!(b["process"]["binary"], python, "the event shows the caller");
    assert_eq!(b["function_name"], function);
    assert_eq!(b["args"][0]["linux_binprm_arg"]["path"], blocked);
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| is(e, "process_exec", &blocked)),
        "the refused binary never ran"
    );

    // Another binary in the scope, and the same one outside it, run.
    let (errno, lived) = exec_from_python(&cg, "/bin/true");
    assert_eq!((errno.as_str(), lived), ("", true));
    assert!(Command::new(&blocked).status().unwrap().success());
}

#[test]
fn lsm_override_fails_the_exec_and_the_caller_lives() {
    refused_exec(
        "lsm_override_fails_the_exec_and_the_caller_lives",
        false,
        "process_lsm",
        "bprm_check_security",
    );
}

#[test]
fn kprobe_security_bprm_check_override_goes_through_lsm() {
    refused_exec(
        "kprobe_security_bprm_check_override_goes_through_lsm",
        true,
        "process_kprobe",
        "security_bprm_check",
    );
}

/// Tetragon's `examples/tracingpolicy/lsm_bprm_check.yaml`, as shipped.
const LSM_BPRM_CHECK: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "lsm"
spec:
  lsmhooks:
  - hook: "bprm_check_security"
    args:
      - index: 0
        type: "linux_binprm"
    selectors:
    - matchBinaries:
      - operator: "In"
        values:
        - "/usr/bin/zsh"
        - "/usr/bin/bash"
      matchArgs:
        - index: 0
          operator: "Postfix"
          values:
            - "contrib/tester-progs/nop"
      matchActions:
        - action: Override
          argError: -1
        - action: Post
          imaHash: true
"#;

/// Whether this kernel can hash; if not, checks that the policy is
/// refused at load with the reason, and says SKIP.
fn ima_or_refusal(test: &str, policy: &str) -> bool {
    usable_or_refused(
        test,
        policy,
        probe_says("exec imaHash", "sleepable BPF-LSM"),
        &["imaHash needs", "Override on exec needs BPF-LSM"],
        "BPF-LSM with bpf_ima_file_hash and IMA",
    )
}

/// The hash of `file` in the algorithm `ima_hash` names, as `ima_hash`
/// writes it (`sha256:…`), computed by python's hashlib.
fn hashed_as(ima_hash: &str, file: &str) -> String {
    let algo = ima_hash.split(':').next().unwrap_or_default();
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import hashlib, sys\nh = hashlib.new(sys.argv[1])\nh.update(open(sys.argv[2], 'rb').read())\nprint(sys.argv[1] + ':' + h.hexdigest())",
            algo,
            file,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "hashlib has no {algo}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `binary` from bash (a forked bash execs it) in the cgroup:
/// bash's report of the exec and the status it saw.
fn exec_from_bash(cg: &TestCgroup, binary: &str) -> (String, String) {
    let out = cg
        .command("/usr/bin/bash")
        .args(["-c", &format!("'{binary}'; echo status $?")])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// A copy of `true` at `<dir>/contrib/tester-progs/nop`, the path the
/// example's Postfix names.
fn tester_nop(dir: &TempDir) -> String {
    let progs = dir.path().join("contrib/tester-progs");
    std::fs::create_dir_all(&progs).unwrap();
    let nop = progs.join("nop");
    std::fs::copy("/bin/true", &nop).unwrap();
    nop.to_string_lossy().into_owned()
}

#[test]
fn lsm_bprm_check_yaml_refuses_the_exec_and_posts_the_binarys_ima_hash() {
    let test = "lsm_bprm_check_yaml_refuses_the_exec_and_posts_the_binarys_ima_hash";
    if !can_run(test) {
        return;
    }
    let dir = TempDir::new();
    let nop = tester_nop(&dir);
    let policy = policy_file(&dir, "lsm_bprm_check.yaml", LSM_BPRM_CHECK);
    if !ima_or_refusal(test, &policy) {
        return;
    }
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);

    let (said, err) = exec_from_bash(&cg, &nop);
    assert_eq!(said, "status 126", "bash could not execute it: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    let e = daemon.wait_for("the lsm event", |e| {
        body(e, "process_lsm").is_some_and(|b| b["policy_name"] == "lsm")
    });
    let b = &e["process_lsm"];
    assert_eq!(b["action"], "KPROBE_ACTION_OVERRIDE");
    assert_eq!(b["function_name"], "bprm_check_security");
    assert_eq!(b["process"]["binary"], resolved("/usr/bin/bash"));
    assert_eq!(b["args"][0]["linux_binprm_arg"]["path"], nop);
    let ima = b["ima_hash"].as_str().expect("ima_hash");
    assert_eq!(ima, hashed_as(ima, &nop), "the hash of the refused binary");

    // Not from python, which the example's matchBinaries leaves out: it
    // runs, and nothing is hashed or refused.
    let (errno, lived) = exec_from_python(&cg, &nop);
    assert_eq!((errno.as_str(), lived), ("", true));
    let (said, _) = exec_from_bash(&cg, "/bin/true");
    assert_eq!(said, "status 0");
    // Records come in order: once the last exec is seen, so is any hit.
    daemon.wait_for("the last exec", |e| {
        is(e, "process_exec", &resolved("/bin/true"))
    });
    let lsm = daemon
        .events()
        .iter()
        .filter(|e| body(e, "process_lsm").is_some())
        .count();
    assert_eq!(lsm, 1, "one exec hit the policy");
}

#[test]
fn a_posted_ima_hash_lets_the_exec_run() {
    let test = "a_posted_ima_hash_lets_the_exec_run";
    if !can_run(test) {
        return;
    }
    let dir = TempDir::new();
    let nop = tester_nop(&dir);
    let post_only =
        LSM_BPRM_CHECK.replace("        - action: Override\n          argError: -1\n", "");
    assert!(!post_only.contains("Override"));
    let policy = policy_file(&dir, "hash.yaml", &post_only);
    if !ima_or_refusal(test, &policy) {
        return;
    }
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &policy, "--enforce-cgroup", &scope]);

    let (said, err) = exec_from_bash(&cg, &nop);
    assert_eq!(said, "status 0", "{err}");
    let e = daemon.wait_for("the lsm event", |e| body(e, "process_lsm").is_some());
    let b = &e["process_lsm"];
    assert_eq!(b["action"], "KPROBE_ACTION_POST");
    let ima = b["ima_hash"].as_str().expect("ima_hash");
    assert_eq!(ima, hashed_as(ima, &nop));
    daemon.wait_for("the binary ran", |e| is(e, "process_exec", &nop));
}
