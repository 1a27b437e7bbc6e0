//! Override on exec through BPF-LSM (`bprm_check_security`): the exec is
//! refused before it happens, the caller survives and its `execve` fails
//! with the policy's errno, and the event shows the caller (Tetragon's
//! semantics). On a kernel without usable BPF-LSM such a policy is refused
//! at load with the reason, and the test says it skips; the kernel matrix
//! runs it where BPF-LSM is active.
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
    if probe_says("exec Override", "BPF-LSM") {
        return true;
    }
    let out = Command::new(SENSOR)
        .args(["run", "--policy", policy, "--output", "none"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("matchActions") && err.contains("Override on exec needs BPF-LSM"),
        "{err}"
    );
    skip_kernel(
        test,
        "usable BPF-LSM (the policy was refused at load, as it must be)",
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
