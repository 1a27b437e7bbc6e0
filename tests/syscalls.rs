//! The syscall family on the real kernel, on the raw `sys_enter`
//! tracepoint: Tetragon's examples as it ships them (inlined) load and post
//! their events with the arguments typed as the policy says; integer
//! filters are decided in the kernel; Sigkill and NotifyEnforcer kill in
//! the syscall (137), only the binaries they name.
mod common;

use std::os::unix::process::ExitStatusExt;

use common::*;
use serde_json::Value;

/// Tetragon's `examples/tracingpolicy/sys_setuid.yaml`.
const SYS_SETUID: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "syscalls"
spec:
  kprobes:
  # int setuid(uid_t uid);
  - call: "sys_setuid"
    syscall: true
    args:
    - index: 0
      type: "int"
"#;

/// Tetragon's `examples/tracingpolicy/sys_ptrace.yaml`.
const SYS_PTRACE: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "syscalls"
spec:
  kprobes:
  # long ptrace(enum __ptrace_request request, pid_t pid, void *addr, void *data);
  - call: "sys_ptrace"
    syscall: true
    args:
     - index: 2
       type: "int"
"#;

/// Tetragon's `examples/tracingpolicy/list-syscalls-tracepoint.yaml`.
const LIST_SYSCALLS: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "list-syscalls-tracepoint"
spec:
  lists:
  - name: "dups"
    type: "syscalls"
    values:
    - "sys_dup"
    - "sys_dup2"
  tracepoints:
  - subsystem: "raw_syscalls"
    event: "sys_enter"
    args:
    - index: 4
      type: "uint64"
    selectors:
    - matchArgs:
      - index: 0
        operator: "InMap"
        values:
        - "list:dups"
"#;

/// Tetragon's `examples/tracingpolicy/list-syscalls.yaml`: a kprobe on
/// each syscall of a list.
const LIST_SYSCALLS_KPROBE: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "list-syscalls"
spec:
  lists:
  - name: "syscalls"
    type: "syscalls"
    values:
    - "sys_dup"
    - "sys_dup2"
  kprobes:
  - call: "list:syscalls"
"#;

/// Tetragon's `examples/tracingpolicy/killer.yaml`.
const KILLER: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "kill-syscalls"
spec:
  lists:
  - name: "dups"
    type: "syscalls"
    values:
    - "sys_dup"
    - "sys_dup2"
    - "__ia32_sys_dup"
  enforcers:
  - calls:
    - "list:dups"
  tracepoints:
  - subsystem: "raw_syscalls"
    event: "sys_enter"
    args:
    - index: 4
      type: "syscall64"
    selectors:
    - matchArgs:
      - index: 0
        operator: "InMap"
        values:
        - "list:dups"
      matchBinaries:
      - operator: "In"
        values:
        - "/usr/bin/bash"
      matchActions:
      - action: "NotifyEnforcer"
        argError: -1
        argSig: 9
"#;

/// A daemon with these policies, scoped to a fresh cgroup.
fn daemon_with(policies: &[&str]) -> (Daemon, TestCgroup, TempDir) {
    let dir = TempDir::new();
    let files: Vec<String> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| policy_file(&dir, &format!("p{i}.yaml"), p))
        .collect();
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let mut args = vec!["--enforce-cgroup", &scope];
    for f in &files {
        args.extend(["--policy", f]);
    }
    (Daemon::start(&args), cg, dir)
}

/// Runs Python `code` in the cgroup; its exit status.
fn python(cg: &TestCgroup, code: &str) -> std::process::ExitStatus {
    cg.command("/usr/bin/python3")
        .args(["-c", code])
        .status()
        .unwrap()
}

fn of_policy<'a>(e: &'a Value, kind: &str, policy: &str) -> Option<&'a Value> {
    e.get(kind).filter(|b| b["policy_name"] == policy)
}

#[test]
fn setuid_and_ptrace_post_their_integer_arguments() {
    if !can_run("setuid_and_ptrace_post_their_integer_arguments") {
        return;
    }
    // Both examples are named "syscalls" in Tetragon's tree; names are
    // unique here, so the second is renamed.
    let ptrace = SYS_PTRACE.replace("name: \"syscalls\"", "name: \"syscalls-ptrace\"");
    let (daemon, cg, _d) = daemon_with(&[SYS_SETUID, &ptrace]);
    let st = python(&cg, "import os; os.setuid(65534)");
    assert!(st.success(), "{st:?}");
    let python3 = resolved("/usr/bin/python3");
    let e = daemon.wait_for("the setuid event", |e| {
        of_policy(e, "process_kprobe", "syscalls")
            .is_some_and(|b| b["process"]["binary"] == python3.as_str())
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["function_name"], "__x64_sys_setuid");
    assert_eq!(k["args"][0]["int_arg"], 65534, "{e}");
    assert_eq!(k["action"], "KPROBE_ACTION_POST");
    assert!(k["parent"]["binary"].is_string(), "{e}");

    // ptrace(PTRACE_PEEKDATA (2), pid, addr): argument 2 is the address,
    // read as an int (its low half). The call fails (no tracee); the
    // event comes all the same, on entry.
    let st = python(
        &cg,
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); libc.ptrace(2, 1, 0x1234, 0)",
    );
    assert!(st.success(), "{st:?}");
    let e = daemon.wait_for("the ptrace event", |e| {
        of_policy(e, "process_kprobe", "syscalls-ptrace").is_some()
    });
    assert_eq!(e["process_kprobe"]["function_name"], "__x64_sys_ptrace");
    assert_eq!(e["process_kprobe"]["args"][0]["int_arg"], 0x1234, "{e}");
    // Outside the policy's syscalls nothing posts: every event of the two
    // policies is one of their calls.
    for e in daemon.events() {
        if let Some(k) = e.get("process_kprobe") {
            let f = k["function_name"].as_str().unwrap_or_default();
            assert!(f == "__x64_sys_setuid" || f == "__x64_sys_ptrace", "{e}");
        }
    }
}

#[test]
fn a_syscall_list_selects_numbers_on_raw_sys_enter() {
    if !can_run("a_syscall_list_selects_numbers_on_raw_sys_enter") {
        return;
    }
    let (daemon, cg, _d) = daemon_with(&[LIST_SYSCALLS, LIST_SYSCALLS_KPROBE]);
    // Through libc: Python's os.dup is an fcntl.
    let st = python(
        &cg,
        "import ctypes, os; libc = ctypes.CDLL(None); libc.dup(1); libc.dup2(1, 7); os.getpid()",
    );
    assert!(st.success(), "{st:?}");
    let python3 = resolved("/usr/bin/python3");
    for id in ["32", "33"] {
        daemon.wait_for("dup and dup2", |e| {
            of_policy(e, "process_tracepoint", "list-syscalls-tracepoint").is_some_and(|t| {
                t["process"]["binary"] == python3.as_str() && t["args"][0]["size_arg"] == id
            })
        });
    }
    // The kprobe on the list names each syscall.
    for f in ["__x64_sys_dup", "__x64_sys_dup2"] {
        daemon.wait_for(f, |e| {
            of_policy(e, "process_kprobe", "list-syscalls").is_some_and(|k| {
                k["process"]["binary"] == python3.as_str() && k["function_name"] == f
            })
        });
    }
    for e in daemon.events() {
        if let Some(k) = e.get("process_kprobe") {
            let f = k["function_name"].as_str().unwrap_or_default();
            assert!(f == "__x64_sys_dup" || f == "__x64_sys_dup2", "{e}");
        }
        if let Some(t) = e.get("process_tracepoint") {
            assert_eq!(t["subsys"], "raw_syscalls");
            assert_eq!(t["event"], "sys_enter");
            let id = t["args"][0]["size_arg"].as_str().unwrap_or_default();
            assert!(id == "32" || id == "33", "only the list's syscalls: {e}");
        }
    }
}

#[test]
fn killer_kills_the_binary_it_names_in_the_syscall() {
    if !can_run("killer_kills_the_binary_it_names_in_the_syscall") {
        return;
    }
    let bash = resolved("/bin/bash");
    if bash != "/usr/bin/bash" {
        eprintln!("SKIP killer_kills_the_binary_it_names_in_the_syscall: bash is {bash}, the example names /usr/bin/bash");
        return;
    }
    let (daemon, cg, _d) = daemon_with(&[KILLER]);
    // bash's redirection is a dup2: it dies in the syscall.
    let st = cg
        .command("/usr/bin/bash")
        .args(["-c", "exec 7>&1; echo survived"])
        .status()
        .unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let e = daemon.wait_for("the enforcer's event", |e| {
        of_policy(e, "process_tracepoint", "kill-syscalls").is_some()
    });
    let t = &e["process_tracepoint"];
    assert_eq!(t["process"]["binary"], "/usr/bin/bash");
    assert_eq!(t["args"][0]["syscall_id"]["id"], 33, "{e}");
    assert_eq!(t["args"][0]["syscall_id"]["abi"], "x64");
    assert_eq!(t["action"], "KPROBE_ACTION_NOTIFYENFORCER");
    // Another binary's dup2 is left alone.
    let st = python(&cg, "import os; os.dup2(1, 7)");
    assert!(st.success(), "{st:?}");
}

#[test]
fn integer_filters_are_decided_in_the_kernel() {
    if !can_run("integer_filters_are_decided_in_the_kernel") {
        return;
    }
    let python3 = resolved("/usr/bin/python3");
    let policy = format!(
        "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: setuid-range}}\nspec:\n  kprobes:\n  - call: sys_setuid\n    syscall: true\n    args: [{{index: 0, type: int}}]\n    selectors:\n    - matchBinaries: [{{operator: In, values: [\"{python3}\"]}}]\n      matchArgs: [{{index: 0, operator: InRange, values: [\"60000:65534\"]}}]\n      matchActions: [{{action: Sigkill}}]\n"
    );
    let (daemon, cg, _d) = daemon_with(&[&policy]);
    let st = python(&cg, "import os; os.setuid(1000)");
    assert!(st.success(), "out of range: {st:?}");
    let st = python(&cg, "import os; os.setuid(65534); print('survived')");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "in range: {st:?}");
    let e = daemon.wait_for("the kill", |e| {
        of_policy(e, "process_kprobe", "setuid-range").is_some()
    });
    assert_eq!(e["process_kprobe"]["action"], "KPROBE_ACTION_SIGKILL");
    assert_eq!(e["process_kprobe"]["args"][0]["int_arg"], 65534);
    let kills = daemon
        .events()
        .iter()
        .filter(|e| of_policy(e, "process_kprobe", "setuid-range").is_some())
        .count();
    assert_eq!(kills, 1, "only the call in range");
}

/// A policy directory, a cgroup and a bpffs directory of the test's own,
/// for daemons that pin their set there.
struct Pinned {
    dir: TempDir,
    cg: TestCgroup,
    bpf: BpfDir,
}

impl Pinned {
    fn new() -> Pinned {
        let dir = TempDir::new();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        Pinned {
            dir,
            cg: TestCgroup::new(),
            bpf: BpfDir::new(),
        }
    }

    /// A daemon on the directory, scoped to the cgroup, pinning in the
    /// bpffs directory, with `extra` flags.
    fn daemon(&self, extra: &[&str]) -> Daemon {
        let policies = self.dir.path().join("policies");
        let scope = self.cg.0.to_string_lossy().into_owned();
        let state = self.dir.path().join("state");
        let mut args = vec![
            "--policy-dir",
            policies.to_str().unwrap(),
            "--enforce-cgroup",
            &scope,
            "--bpf-dir",
            self.bpf.arg(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Daemon::start(&args)
    }

    /// killer.yaml, on Python instead of bash, in the directory (or gone).
    fn kill_python_dup2(&self, present: bool) {
        let file = self.dir.path().join("policies/kill.yaml");
        if !present {
            std::fs::remove_file(file).unwrap();
            return;
        }
        let kill = KILLER
            .replace("/usr/bin/bash", &resolved("/usr/bin/python3"))
            .replace("kill-syscalls", "kill-python-dup2");
        std::fs::write(file, kill).unwrap();
    }

    /// Whether a `snsr_syscall*` link is pinned in the bpffs directory.
    fn syscall_link_pinned(&self) -> bool {
        self.link_pinned("snsr_syscall")
    }

    /// Whether a link whose name starts with `prefix` is pinned.
    fn link_pinned(&self, prefix: &str) -> bool {
        std::fs::read_dir(&self.bpf.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|set| std::fs::read_dir(set.path().join("links")).ok())
            .flatten()
            .flatten()
            .any(|l| l.file_name().to_string_lossy().starts_with(prefix))
    }

    /// The exit status of Python's dup2 in the cgroup.
    fn dup2(&self) -> std::process::ExitStatus {
        python(&self.cg, "import os; os.dup2(1, 7)")
    }
}

#[test]
fn the_syscall_program_is_attached_only_while_a_syscall_policy_is_loaded() {
    if !can_run("the_syscall_program_is_attached_only_while_a_syscall_policy_is_loaded") {
        return;
    }
    let t = Pinned::new();
    let daemon = t.daemon(&[]);
    assert!(
        !t.syscall_link_pinned(),
        "no syscall policy, no program on every syscall"
    );
    t.kill_python_dup2(true);
    eventually("the policy attached the program", || {
        t.syscall_link_pinned()
    });
    let st = t.dup2();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    // The return program only for a hook that waits for returns.
    assert!(!t.link_pinned("snsr_sys_return"));
    let returns = t.dir.path().join("policies/returns.yaml");
    std::fs::write(&returns, OPENAT_WRITE).unwrap();
    eventually("a return: true hook attached the return program", || {
        t.link_pinned("snsr_sys_return")
    });
    std::fs::remove_file(&returns).unwrap();
    eventually("without it, the return program detached", || {
        !t.link_pinned("snsr_sys_return")
    });
    t.kill_python_dup2(false);
    eventually("the last syscall policy detached it", || {
        !t.syscall_link_pinned()
    });
    let st = t.dup2();
    assert!(st.success(), "{st:?}");
    drop(daemon);
}

#[test]
fn an_adopted_set_attaches_its_pinned_syscall_program_and_it_outlives_the_daemon() {
    if !can_run("an_adopted_set_attaches_its_pinned_syscall_program_and_it_outlives_the_daemon") {
        return;
    }
    let t = Pinned::new();
    // The first daemon pins a set with no syscall policy: the program is
    // pinned unattached.
    let mut first = t.daemon(&["--keep-on-exit"]);
    first.kill9();
    assert!(!t.syscall_link_pinned());
    t.kill_python_dup2(true);
    // The second adopts it and attaches the pinned program for the policy.
    let mut second = t.daemon(&["--keep-on-exit"]);
    assert!(second.ready.contains("origin=Adopted"), "{}", second.ready);
    assert!(t.syscall_link_pinned());
    let st = t.dup2();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    // Pinned with the set, it kills with no daemon.
    second.kill9();
    let st = t.dup2();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "with no daemon: {st:?}");
}

/// Tetragon's `examples/tracingpolicy/sys_mount.yaml`.
const SYS_MOUNT: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "syscalls"
spec:
  kprobes:
  - call: "sys_mount"
    syscall: true
    args:
    - index: 0
      type:  "string"
    - index: 1
      type:  "string"
"#;

/// Tetragon's `examples/tracingpolicy/symlink-observe.yaml`.
const SYMLINK_OBSERVE: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sys-symlink-passwd"
spec:
  kprobes:
  - call: "sys_symlinkat"
    syscall: true
    args:
    - index: 0
      type: "string"
    - index: 1
      type: "int"
    - index: 2
      type: "string"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Equal"
        values:
        - "/etc/passwd"
"#;

/// Tetragon's `examples/tracingpolicy/hardlink-observe.yaml`.
const HARDLINK_OBSERVE: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sys-linkat-passwd"
spec:
  kprobes:
  - call: "sys_linkat"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "string"
    - index: 2
      type: "int"
    - index: 3
      type: "string"
    - index: 4
      type: "int"
    selectors:
    - matchArgs:
      - index: 1
        operator: "Equal"
        values:
        - "/etc/passwd"
"#;

/// A policy on `mkdir`'s path: `Prefix`, in two policies whose values
/// nest (the kernel's trie answers with the longest match, which must
/// carry the shorter one's selector too), and a `Postfix` kill.
fn mkdir_policy(name: &str, selectors: &str) -> String {
    format!("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: {name}}}\nspec:\n  kprobes:\n  - call: sys_mkdir\n    syscall: true\n    args: [{{index: 0, type: string}}]\n    selectors:\n{selectors}")
}

#[test]
fn strings_from_user_memory_are_posted_and_matched_in_the_kernel() {
    if !can_run("strings_from_user_memory_are_posted_and_matched_in_the_kernel") {
        return;
    }
    let tmp = TempDir::new();
    let t = tmp.path().to_str().unwrap().to_string();
    let python3 = resolved("/usr/bin/python3");
    let outer = mkdir_policy(
        "mkdir-outer",
        &format!("    - matchArgs: [{{index: 0, operator: Prefix, values: [\"{t}/\"]}}]\n"),
    );
    let inner = mkdir_policy(
        "mkdir-inner",
        &format!("    - matchArgs: [{{index: 0, operator: Prefix, values: [\"{t}/in\"]}}]\n"),
    );
    let kill = mkdir_policy(
        "mkdir-kill",
        &format!("    - matchBinaries: [{{operator: In, values: [\"{python3}\"]}}]\n      matchArgs: [{{index: 0, operator: Postfix, values: [/forbidden]}}]\n      matchActions: [{{action: Sigkill}}]\n"),
    );
    let (daemon, cg, _d) = daemon_with(&[
        SYS_MOUNT,
        SYMLINK_OBSERVE,
        HARDLINK_OBSERVE,
        &outer,
        &inner,
        &kill,
    ]);
    // Each call fails (no such directory), after sys_enter has seen it.
    let st = python(
        &cg,
        &format!(
            "import ctypes; libc = ctypes.CDLL(None)\n\
             libc.mount(b'sensor-src', b'{t}/none/target', b'tmpfs', 0, None)\n\
             libc.symlinkat(b'/etc/shadow', -100, b'{t}/none/s1')\n\
             libc.symlinkat(b'/etc/passwd', -100, b'{t}/none/s2')\n\
             libc.linkat(-100, b'/etc/passwd', -100, b'{t}/none/h', 0)\n\
             libc.mkdir(b'{t}/out', 0o755)\n\
             libc.mkdir(b'{t}/inner', 0o755)\n"
        ),
    );
    assert!(st.success(), "{st:?}");
    let e = daemon.wait_for("the mount", |e| {
        of_policy(e, "process_kprobe", "syscalls").is_some()
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["function_name"], "__x64_sys_mount");
    assert_eq!(k["args"][0]["string_arg"], "sensor-src", "{e}");
    assert_eq!(k["args"][1]["string_arg"], format!("{t}/none/target"));
    let e = daemon.wait_for("the symlink to /etc/passwd", |e| {
        of_policy(e, "process_kprobe", "sys-symlink-passwd").is_some()
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["args"][0]["string_arg"], "/etc/passwd", "{e}");
    assert_eq!(k["args"][1]["int_arg"], -100);
    assert_eq!(k["args"][2]["string_arg"], format!("{t}/none/s2"));
    let e = daemon.wait_for("the hard link", |e| {
        of_policy(e, "process_kprobe", "sys-linkat-passwd").is_some()
    });
    assert_eq!(e["process_kprobe"]["args"][1]["string_arg"], "/etc/passwd");
    assert_eq!(
        e["process_kprobe"]["args"][3]["string_arg"],
        format!("{t}/none/h")
    );
    // Nested prefixes: the inner directory is in both policies' sets.
    daemon.wait_for("the inner mkdir in the outer policy", |e| {
        of_policy(e, "process_kprobe", "mkdir-outer")
            .is_some_and(|k| k["args"][0]["string_arg"] == format!("{t}/inner"))
    });
    daemon.wait_for("the inner mkdir in the inner policy", |e| {
        of_policy(e, "process_kprobe", "mkdir-inner").is_some()
    });
    // A Postfix kill, in the kernel. The syscall itself still runs (the
    // signal is sent from sys_enter; see the README); the process dies
    // before it returns to user space.
    let st = python(
        &cg,
        &format!("import os; os.mkdir('{t}/forbidden'); print('survived')"),
    );
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    daemon.wait_for("the kill", |e| {
        of_policy(e, "process_kprobe", "mkdir-kill")
            .is_some_and(|k| k["action"] == "KPROBE_ACTION_SIGKILL")
    });
    for e in daemon.events() {
        let Some(k) = e.get("process_kprobe") else {
            continue;
        };
        let args = &k["args"];
        match k["policy_name"].as_str().unwrap_or_default() {
            "sys-symlink-passwd" => assert_eq!(args[0]["string_arg"], "/etc/passwd", "{e}"),
            "mkdir-inner" => assert_eq!(args[0]["string_arg"], format!("{t}/inner"), "{e}"),
            "mkdir-outer" => assert!(
                args[0]["string_arg"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{t}/"))),
                "{e}"
            ),
            _ => {}
        }
    }
}

/// Tetragon's `examples/tracingpolicy/write.yaml`.
const WRITE: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sys-write"
spec:
  kprobes:
  - call: "sys_write"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "char_buf"
      sizeArgIndex: 3
    - index: 2
      type: "size_t"
    selectors:
    - matchPIDs:
      - operator: NotIn
        followForks: true
        isNamespacePID: true
        values:
        - 1
      matchArgs:
      - index: 0
        operator: "Equal"
        values:
        - "1"
"#;

/// Tetragon's `examples/tracingpolicy/sys_clock_settime.yaml`.
const SYS_CLOCK_SETTIME: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sys-clock-settime"
spec:
  kprobes:
  - call: "sys_clock_settime"
    syscall: true
    args:
    - index: 0
      type: int
    selectors:
    - matchPIDs:
      - operator: NotIn
        followForks: true
        isNamespacePID: true
        values:
        - 1
      - operator: NotIn
        followForks: true
        isNamespacePID: true
        values:
        - 0
"#;

/// Tetragon's `examples/tracingpolicy/sys_pivot_root.yaml`.
const SYS_PIVOT_ROOT: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sys-pivot-root"
spec:
  kprobes:
  - call: "sys_pivot_root"
    syscall: true
    args:
      - index: 0
        type: "string"
      - index: 1
        type: "string"
    selectors:
    - matchPIDs:
      - operator: NotIn
        followForks: true
        isNamespacePID: true
        values:
        - 1
      - operator: NotIn
        followForks: true
        isNamespacePID: true
        values:
        - 0
"#;

/// A "container": Python (`host`, outside any PID namespace of its own,
/// a descendant of the host's PID 1) makes a PID namespace whose PID 1 (`init`) and
/// its child make the calls `init` and `init-child`; then, as `kubectl
/// exec` does, a process enters the namespace from outside (its parent is
/// not in it) and makes them as `exec`. Each writes its name to stdout,
/// calls clock_settime with a clock id naming it (1 to 4: no clock is
/// set without a valid time) and pivot_root on paths naming it; `big`
/// bytes more go to stdout from `exec`. The calls go through syscall(2):
/// glibc's clock_settime reads the time it is given.
fn container_calls(big: usize) -> String {
    format!(
        r#"import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def calls(name, clock):
    os.write(1, name.encode())
    libc.syscall(227, clock, None)
    libc.syscall(155, ("/sensor-" + name).encode(), b"/old")
calls("host", 4)
assert libc.unshare(0x20000000) == 0, ctypes.get_errno()
init = os.fork()
if init == 0:
    calls("init", 1)
    child = os.fork()
    if child == 0:
        calls("init-child", 2)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(2)
    os._exit(0)
time.sleep(0.5)
ex = os.fork()
if ex == 0:
    calls("exec", 3)
    os.write(1, b"x" * {big})
    os._exit(0)
os.waitpid(ex, 0)
os.waitpid(init, 0)
"#
    )
}

#[test]
fn match_pids_follows_the_lineage_in_the_pid_namespace() {
    if !can_run("match_pids_follows_the_lineage_in_the_pid_namespace") {
        return;
    }
    let (daemon, cg, _d) = daemon_with(&[WRITE, SYS_CLOCK_SETTIME, SYS_PIVOT_ROOT]);
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", &container_calls(1500)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let b64 = |s: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    // The entered process posts; PID 1 and its child do not.
    let e = daemon.wait_for("exec's write", |e| {
        of_policy(e, "process_kprobe", "sys-write")
            .is_some_and(|k| k["args"][1]["bytes_arg"] == b64(b"exec"))
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["args"][0]["int_arg"], 1, "{e}");
    assert_eq!(k["args"][2]["size_arg"], "4");
    let exec_pid = k["process"]["pid"].clone();
    // Over 1024 bytes: cut, with the size written.
    let e = daemon.wait_for("the big write", |e| {
        of_policy(e, "process_kprobe", "sys-write")
            .is_some_and(|k| k["args"][1].get("truncated_bytes_arg").is_some())
    });
    let t = &e["process_kprobe"]["args"][1]["truncated_bytes_arg"];
    assert_eq!(t["orig_size"], "1500", "{e}");
    assert_eq!(t["bytes_arg"], b64(&[b'x'; 1024]));
    let e = daemon.wait_for("exec's clock_settime", |e| {
        of_policy(e, "process_kprobe", "sys-clock-settime").is_some()
    });
    assert_eq!(e["process_kprobe"]["args"][0]["int_arg"], 3, "{e}");
    assert_eq!(e["process_kprobe"]["process"]["pid"], exec_pid);
    let e = daemon.wait_for("exec's pivot_root", |e| {
        of_policy(e, "process_kprobe", "sys-pivot-root").is_some()
    });
    assert_eq!(
        e["process_kprobe"]["args"][0]["string_arg"], "/sensor-exec",
        "{e}"
    );
    assert_eq!(e["process_kprobe"]["args"][1]["string_arg"], "/old");
    // Nothing from the namespace's PID 1 or its descendants, nor from the
    // host's processes (descendants of the host's PID 1).
    for e in daemon.events() {
        if let Some(k) = e.get("process_kprobe") {
            assert_eq!(k["process"]["pid"], exec_pid, "only exec posts: {e}");
        }
    }
}

/// Tetragon's `examples/tracingpolicy/openat_write.yaml`.
const OPENAT_WRITE: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "sys-openat"
spec:
  kprobes:
  - call: "sys_openat"
    return: true
    syscall: true
    args:
    - index: 0
      type: int
    - index: 1
      type: "string"
    - index: 2
      type: "int"
    returnArg:
      index: 0
      type: int
    selectors:
    - matchArgs:
      - index: 1
        operator: "Equal"
        values:
        - "/etc/passwd"
      - index: 2
        operator: "Mask"
        values:
        - "64" # CREATE (0x40)
        - "1"  # WRONLY (0x01)
        - "2"  # RDWR (0x02)
      matchReturnArgs:
      - index: 0
        operator: "GT"
        values:
        - "0"
"#;

#[test]
fn a_hook_with_return_posts_at_the_return_and_filters_on_it() {
    if !can_run("a_hook_with_return_posts_at_the_return_and_filters_on_it") {
        return;
    }
    // The example names /etc/passwd; a machine without one (the kernel
    // matrix's guests) gets a root-owned file of the test's own instead.
    let tmp = TempDir::new();
    let (policy, target) = if std::path::Path::new("/etc/passwd").exists() {
        (OPENAT_WRITE.to_string(), "/etc/passwd".to_string())
    } else {
        let t = tmp.path().join("passwd");
        std::fs::write(&t, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let t = t.to_string_lossy().into_owned();
        (OPENAT_WRITE.replace("/etc/passwd", &t), t)
    };
    let (daemon, cg, _d) = daemon_with(&[&policy]);
    // Opened for writing and closed at once: nothing is written. Then the
    // same as nobody (EACCES: the return filter fails), and read-only
    // (the flags filter fails).
    let open = |flag: &str| format!("import os; os.close(os.open('{target}', os.{flag}))");
    let st = python(&cg, &open("O_WRONLY"));
    assert!(st.success(), "{st:?}");
    let st = cg
        .command("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(format!(
            "import os\ntry: os.open('{target}', os.O_WRONLY)\nexcept PermissionError: pass"
        ))
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    let st = python(&cg, &open("O_RDONLY"));
    assert!(st.success(), "{st:?}");
    let e = daemon.wait_for("the write open", |e| {
        of_policy(e, "process_kprobe", "sys-openat").is_some()
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["function_name"], "__x64_sys_openat");
    assert_eq!(k["args"][1]["string_arg"], target.as_str(), "{e}");
    assert_eq!(
        k["args"][2]["int_arg"].as_i64().map(|f| f & 3),
        Some(1),
        "{e}"
    );
    assert!(
        k["return"]["int_arg"].as_i64().is_some_and(|fd| fd > 0),
        "the fd: {e}"
    );
    assert_eq!(k["process"]["uid"], 0);
    // The failed and the read-only opens posted nothing, and the one event
    // came once.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let n = daemon
        .events()
        .iter()
        .filter(|e| of_policy(e, "process_kprobe", "sys-openat").is_some())
        .count();
    assert_eq!(n, 1, "{:?}", daemon.events());
}

/// `write(2)` with its descriptor as `fd`: resolved in the kernel to the
/// file's path, reported as `file_arg` and matched by Prefix there.
fn fd_policy(prefix: &str) -> String {
    format!(
        r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "fd-write"
spec:
  kprobes:
  - call: "sys_write"
    syscall: true
    args:
    - index: 0
      type: "fd"
    - index: 2
      type: "size_t"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values:
        - "{prefix}/"
"#
    )
}

#[test]
fn an_fd_argument_is_resolved_to_its_file_and_matched_by_path() {
    if !can_run("an_fd_argument_is_resolved_to_its_file_and_matched_by_path") {
        return;
    }
    let files = TempDir::new();
    let dir = std::fs::canonicalize(files.path()).unwrap();
    let target = dir.join("watched.txt").to_string_lossy().into_owned();
    let (daemon, cg, _d) = daemon_with(&[&fd_policy(&dir.to_string_lossy())]);
    let st = python(
        &cg,
        &format!(
            "import os\nfd = os.open('{target}', os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'abc')\nos.close(fd)\nd = os.open('/dev/null', os.O_WRONLY)\nos.write(d, b'x')\n"
        ),
    );
    assert!(st.success(), "{st:?}");
    let e = daemon.wait_for("the write event", |e| {
        of_policy(e, "process_kprobe", "fd-write").is_some()
    });
    let k = &e["process_kprobe"];
    assert_eq!(k["function_name"], "__x64_sys_write");
    assert_eq!(k["args"][0]["file_arg"]["path"], target.as_str(), "{e}");
    assert_eq!(k["args"][1]["size_arg"], "3", "{e}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for e in daemon.events() {
        if let Some(k) = of_policy(&e, "process_kprobe", "fd-write") {
            assert_eq!(
                k["args"][0]["file_arg"]["path"],
                target.as_str(),
                "only writes under the prefix post: {e}"
            );
        }
    }
}

/// Tetragon's `examples/tracingpolicy/process-credentials/
/// process.credentials.changes.at.syscalls.yaml` (comments left out):
/// credential changes outside the host's PID namespace.
const CREDENTIALS_AT_SYSCALLS: &str = r#"apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "process.credentials.changes.at.syscalls"
spec:
  kprobes:
  - call: "sys_setuid"
    syscall: true
    args:
    - index: 0
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setgid"
    syscall: true
    args:
    - index: 0
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setreuid"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setregid"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setresuid"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "int"
    - index: 2
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setresgid"
    syscall: true
    args:
    - index: 0
      type: "int"
    - index: 1
      type: "int"
    - index: 2
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setfsuid"
    syscall: true
    args:
    - index: 0
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
  - call: "sys_setfsgid"
    syscall: true
    args:
    - index: 0
      type: "int"
    selectors:
      - matchNamespaces:
        - namespace: Pid
          operator: NotIn
          values:
          - "host_ns"
"#;

/// Python makes each of the policy's eight calls, as root and changing
/// nothing, in the host's PID namespace, then in a child in a PID
/// namespace of its own (a container's); prints the child's pid.
const CREDENTIAL_CALLS: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def calls():
    os.setuid(0)
    os.setgid(0)
    os.setreuid(-1, -1)
    os.setregid(-1, -1)
    os.setresuid(-1, -1, -1)
    os.setresgid(-1, -1, -1)
    libc.setfsuid(0)
    libc.setfsgid(0)
calls()
assert libc.unshare(0x20000000) == 0, ctypes.get_errno()
child = os.fork()
if child == 0:
    calls()
    os._exit(0)
os.waitpid(child, 0)
print(child)
"#;

#[test]
fn match_namespaces_posts_only_calls_outside_the_hosts_pid_namespace() {
    if !can_run("match_namespaces_posts_only_calls_outside_the_hosts_pid_namespace") {
        return;
    }
    let (daemon, cg, _d) = daemon_with(&[CREDENTIALS_AT_SYSCALLS]);
    let out = cg
        .command("/usr/bin/python3")
        .args(["-c", CREDENTIAL_CALLS])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let child: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the child's pid");
    let policy = "process.credentials.changes.at.syscalls";
    let calls = [
        "setuid",
        "setgid",
        "setreuid",
        "setregid",
        "setresuid",
        "setresgid",
        "setfsuid",
        "setfsgid",
    ];
    eventually("the container's eight calls", || {
        daemon
            .events()
            .iter()
            .filter(|e| of_policy(e, "process_kprobe", policy).is_some())
            .count()
            >= calls.len()
    });
    let events: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter_map(|e| of_policy(&e, "process_kprobe", policy).cloned())
        .collect();
    // Only the child's: the host's calls came first and posted nothing.
    assert!(
        events.iter().all(|k| k["process"]["pid"] == child),
        "{events:?}"
    );
    let mut names: Vec<String> = events
        .iter()
        .map(|k| k["function_name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = calls.iter().map(|c| format!("__x64_sys_{c}")).collect();
    want.sort();
    assert_eq!(names, want);
    let setuid = events
        .iter()
        .find(|k| k["function_name"] == "__x64_sys_setuid")
        .expect("setuid");
    assert_eq!(setuid["args"][0]["int_arg"], 0);
}
