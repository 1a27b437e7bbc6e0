//! Exec, exit, lineage and the /proc scan, against the real kernel.
mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use base64::Engine;
use common::*;

#[test]
fn exec_event_carries_binary_args_cwd_uid_and_lineage() {
    if !can_run("exec_event_carries_binary_args_cwd_uid_and_lineage") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&[]);
    let cwd = TempDir::new();
    std::fs::set_permissions(
        cwd.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let marker = format!("marker-{}", std::process::id());
    // setpriv drops to uid 65534 after the cgroup move, then execs the shell.
    let status = cg
        .command("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
        ])
        .arg(format!("/bin/echo {marker} 'two words' >/dev/null"))
        .current_dir(cwd.path())
        .status()
        .unwrap();
    assert!(status.success());

    let echo = daemon.wait_for("echo exec", |e| {
        body(e, "process_exec").is_some_and(|b| {
            b["process"]["arguments"]
                .as_str()
                .is_some_and(|a| a.starts_with(&marker))
        })
    });
    let p = &echo["process_exec"]["process"];
    // /bin is a symlink on merged-/usr systems: the kernel's path is the real one.
    assert_eq!(p["binary"], resolved("/bin/echo"));
    assert_eq!(p["arguments"], format!("{marker} \"two words\""));
    assert_eq!(p["cwd"], cwd.path().to_string_lossy().as_ref());
    assert_eq!(p["uid"], 65534);
    assert!(p["flags"].as_str().unwrap().contains("execve"));
    assert!(
        p.get("process_credentials").is_none(),
        "credentials only with --enable-process-cred"
    );
    assert!(p.get("ns").is_none(), "ns only with --enable-process-ns");
    // Whether it is depends on this machine's PID 1 (see
    // enable_process_ns_puts_the_namespaces_in_events).
    assert!(p["in_init_tree"].is_boolean(), "{echo}");

    // exec_id = base64(node:ktime:pid)
    let raw = base64::engine::general_purpose::STANDARD
        .decode(p["exec_id"].as_str().unwrap())
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let parts: Vec<&str> = raw.rsplitn(3, ':').collect();
    assert_eq!(parts[0], p["pid"].to_string());
    assert!(parts[1].parse::<u64>().is_ok(), "{raw}");
    assert_eq!(parts[2], echo["node_name"].as_str().unwrap());

    // echo's parent is the shell; the shell's parent is this test process.
    let parent = &echo["process_exec"]["parent"];
    assert_eq!(parent["binary"], resolved("/bin/sh"));
    assert_eq!(p["parent_exec_id"], parent["exec_id"]);
    let sh = daemon.wait_for("sh exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["exec_id"] == parent["exec_id"])
    });
    let me = &sh["process_exec"]["parent"];
    assert_eq!(me["pid"], std::process::id());
    assert_eq!(
        sh["process_exec"]["process"]["parent_exec_id"],
        me["exec_id"]
    );
    assert!(
        me["flags"].as_str().unwrap().contains("procFS"),
        "the test predates the daemon"
    );
    assert!(
        echo["process_exec"].get("ancestors").is_none(),
        "no ancestors without --enable-ancestors"
    );
}

#[test]
fn exec_event_carries_the_login_uid() {
    if !can_run("exec_event_carries_the_login_uid") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&[]);
    let marker = format!("auid-{}", std::process::id());
    // The shell sets its own login uid (root may, once, while it is
    // unset), then execs echo, which keeps it.
    let st = cg
        .command("/bin/sh")
        .args([
            "-c",
            &format!("echo 4242 > /proc/self/loginuid 2>/dev/null; exec /bin/echo {marker}"),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let echo = daemon.wait_for("echo exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["arguments"] == marker.as_str())
    });
    let auid = &echo["process_exec"]["process"]["auid"];
    // Where the kernel has no audit support, or the write was refused
    // (the test's own login uid is already set), echo's is the test's.
    let expected = match std::fs::read_to_string("/proc/self/loginuid") {
        Err(_) => 4294967295u32,
        Ok(own) if own.trim() == "4294967295" => 4242,
        Ok(own) => own.trim().parse().unwrap(),
    };
    assert_eq!(*auid, expected, "{echo}");
    // The parent (this test, from the /proc scan) carries its own.
    let parent_auid = &echo["process_exec"]["parent"]["auid"];
    assert!(parent_auid.is_u64(), "{echo}");
}

#[test]
fn enable_process_cred_puts_the_credentials_in_events() {
    if !can_run("enable_process_cred_puts_the_credentials_in_events") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&["--enable-process-cred"]);
    let marker = format!("creds-{}", std::process::id());
    // Root becomes nobody (65534): every id, and no capability left.
    let st = cg
        .command("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "/bin/echo",
            &marker,
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let echo = daemon.wait_for("echo exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["arguments"] == marker.as_str())
    });
    let c = &echo["process_exec"]["process"]["process_credentials"];
    for id in [
        "uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid",
    ] {
        assert_eq!(c[id], 65534, "{id}: {echo}");
    }
    // A non-root exec loses the permitted and effective sets.
    assert!(c["caps"]["permitted"].is_null(), "{echo}");
    assert!(c["caps"]["effective"].is_null(), "{echo}");
    // Its parent, this test (root, from the /proc scan), holds
    // CAP_SYS_ADMIN: it loaded the daemon's programs.
    let parent = &echo["process_exec"]["parent"]["process_credentials"];
    assert_eq!(parent["euid"], 0, "{echo}");
    let effective: Vec<&str> = parent["caps"]["effective"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(effective.contains(&"CAP_SYS_ADMIN"), "{echo}");
    // Both in this test's user namespace: from the kernel with its level
    // and owner, from /proc with its inode only.
    let (mine, host) = ns_inums("user");
    let u = &c["user_ns"];
    assert_eq!(u["ns"]["inum"], mine, "{echo}");
    assert_eq!(
        u["ns"]["is_host"].as_bool().unwrap_or(false),
        host == Some(mine),
        "{echo}"
    );
    assert!(u["level"].is_u64() && u["uid"].is_u64(), "{echo}");
    assert_eq!(parent["user_ns"]["ns"]["inum"], mine, "{echo}");
}

/// Runs Python `code` in the cgroup, which must succeed and exec `echo
/// marker`; that exec's event.
fn python_echoes(daemon: &Daemon, cg: &TestCgroup, code: &str, marker: &str) -> serde_json::Value {
    let st = cg
        .command("/usr/bin/python3")
        .args(["-c", code])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    daemon.wait_for("echo exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["arguments"] == marker)
    })
}

/// The inode number of this process's namespace `kind`, and of PID 1's
/// (`None` where PID 1 hides it, as some sandboxes do; the daemon then
/// calls no namespace the host's).
fn ns_inums(kind: &str) -> (u64, Option<u64>) {
    let inum = |pid: &str| {
        let l = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
        let l = l.to_string_lossy();
        l[l.find('[')? + 1..l.len() - 1].parse().ok()
    };
    (inum("self").expect("this process's namespaces"), inum("1"))
}

#[test]
fn enable_process_ns_puts_the_namespaces_in_events() {
    if !can_run("enable_process_ns_puts_the_namespaces_in_events") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&["--enable-process-ns"]);
    let marker = format!("ns-{}", std::process::id());
    // A UTS and a network namespace of its own, then the exec.
    let echo = python_echoes(
        &daemon,
        &cg,
        &format!("import ctypes, os; assert ctypes.CDLL(None).unshare(0x04000000 | 0x40000000) == 0; os.execv('/bin/echo', ['echo', '{marker}'])"),
        &marker,
    );
    let ns = &echo["process_exec"]["process"]["ns"];
    let parent = &echo["process_exec"]["parent"]["ns"];
    for kind in ["uts", "net"] {
        let (mine, _) = ns_inums(kind);
        assert_ne!(ns[kind]["inum"], mine, "{kind} is its own: {echo}");
        assert!(ns[kind]["inum"].as_u64().is_some_and(|i| i > 0), "{echo}");
        assert!(ns[kind].get("is_host").is_none(), "{kind}: {echo}");
    }
    // The rest it shares with this test, whose own (from the /proc scan)
    // are in the parent's; each is the host's if PID 1's.
    for kind in ["ipc", "mnt", "pid", "pid_for_children", "cgroup", "user"] {
        let (mine, host) = ns_inums(kind);
        assert_eq!(ns[kind]["inum"], mine, "{kind}: {echo}");
        assert_eq!(parent[kind]["inum"], mine, "{kind}: {echo}");
        let is_host = ns[kind]["is_host"].as_bool().unwrap_or(false);
        assert_eq!(is_host, host == Some(mine), "{kind}: {echo}");
    }
    assert_eq!(parent["uts"]["inum"], ns_inums("uts").0, "{echo}");

    // in_init_tree: the PID 1 of a new PID namespace and what it starts
    // are in its tree, whatever this machine's own PID 1.
    let marker = format!("init-tree-{}", std::process::id());
    let echo = python_echoes(
        &daemon,
        &cg,
        &format!("import ctypes, os; assert ctypes.CDLL(None).unshare(0x20000000) == 0\nif os.fork() == 0: os.execv('/bin/sh', ['sh', '-c', '/bin/echo {marker}; true'])\nos.wait()"),
        &marker,
    );
    assert_eq!(
        echo["process_exec"]["parent"]["in_init_tree"], true,
        "{echo}"
    );
    assert_eq!(
        echo["process_exec"]["process"]["in_init_tree"], true,
        "{echo}"
    );
}

/// Whether set-user-ID bits take effect under `dir` (not `nosuid`).
fn honours_setuid(dir: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a zeroed statvfs for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path, st a valid out pointer.
    unsafe { libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_NOSUID == 0 }
}

#[test]
fn binary_properties_report_set_user_id_and_memfd_execs() {
    if !can_run("binary_properties_report_set_user_id_and_memfd_execs") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&[]);
    let dir = TempDir::new();
    // A program run from memory: no file system names it.
    let st = cg
        .command("/usr/bin/python3")
        .args([
            "-c",
            "import os; fd = os.memfd_create('sensor-props'); os.write(fd, open('/bin/true', 'rb').read()); os.execv(f'/proc/self/fd/{fd}', ['true'])",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    let e = daemon.wait_for("the memfd exec", |e| {
        body(e, "process_exec").is_some_and(|b| {
            b["process"]["binary"]
                .as_str()
                .is_some_and(|p| p.starts_with("/memfd:sensor-props"))
        })
    });
    let f = &e["process_exec"]["process"]["binary_properties"]["file"];
    assert_eq!(f["inode"]["links"], 0, "{e}");
    assert!(
        f["inode"]["number"]
            .as_str()
            .is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)),
        "{e}"
    );
    assert_eq!(f["path"], e["process_exec"]["process"]["binary"]);
    // A plain program has none.
    assert!(
        e["process_exec"]["parent"]
            .get("binary_properties")
            .is_none(),
        "{e}"
    );

    if !honours_setuid(dir.path()) {
        eprintln!("SKIP binary_properties_report_set_user_id_and_memfd_execs (set-user-ID part): {} is nosuid", dir.path().display());
        return;
    }
    // A set-user-ID root copy of true, run by nobody.
    let suid = dir.path().join("suid-true");
    std::fs::copy("/bin/true", &suid).unwrap();
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let st = cg
        .command("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            suid.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "{st:?}");
    let suid = suid.to_string_lossy().into_owned();
    let e = daemon.wait_for("the set-user-ID exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["binary"] == suid.as_str())
    });
    let p = &e["process_exec"]["process"];
    assert_eq!(p["uid"], 65534, "{e}");
    assert_eq!(p["binary_properties"]["setuid"], 0, "{e}");
    assert_eq!(
        p["binary_properties"]["privileges_changed"],
        serde_json::json!(["PRIVILEGES_RAISED_EXEC_FILE_SETUID"]),
        "{e}"
    );
    assert!(p["binary_properties"].get("file").is_none(), "{e}");
}

#[test]
fn enable_ancestors_base_puts_the_lineage_in_exec_and_exit_events() {
    if !can_run("enable_ancestors_base_puts_the_lineage_in_exec_and_exit_events") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&["--enable-ancestors", "base"]);
    let marker = format!("ancestors-{}", std::process::id());
    // Each `; :` keeps a shell from exec'ing its last command in place.
    let status = cg
        .command("/bin/sh")
        .arg("-c")
        .arg(format!("/bin/sh -c '/bin/echo {marker} >/dev/null; :'; :"))
        .status()
        .unwrap();
    assert!(status.success());
    let is_echo = |b: &serde_json::Value| b["process"]["arguments"] == marker.as_str();
    let exec = daemon.wait_for("echo exec", |e| {
        body(e, "process_exec").is_some_and(is_echo)
    });
    let exit = daemon.wait_for("echo exit", |e| {
        body(e, "process_exit").is_some_and(is_echo)
    });
    for (kind, e) in [("process_exec", &exec), ("process_exit", &exit)] {
        let b = &e[kind];
        let ancestors = b["ancestors"].as_array().expect("ancestors");
        // Beyond the parent (the inner shell): the outer shell, then this
        // test, then on up to init.
        assert_eq!(b["parent"]["binary"], resolved("/bin/sh"), "{kind}");
        assert_eq!(
            ancestors[0]["exec_id"], b["parent"]["parent_exec_id"],
            "{kind}"
        );
        assert_eq!(ancestors[0]["binary"], resolved("/bin/sh"), "{kind}");
        assert_eq!(ancestors[1]["pid"], std::process::id(), "{kind}");
        for pair in ancestors.windows(2) {
            assert_eq!(pair[1]["exec_id"], pair[0]["parent_exec_id"], "{kind}");
        }
        // At init or kthreadd, or where the lineage leaves what this pid
        // namespace shows (a sandbox's init has a parent outside it).
        let last = ancestors.last().expect("at least two");
        assert!(
            last["pid"].as_u64().is_some_and(|p| p <= 2)
                || last["parent_exec_id"].as_str().is_none_or(str::is_empty),
            "{kind} ends at {last}"
        );
    }
}

#[test]
fn exit_reports_status_and_signal() {
    if !can_run("exit_reports_status_and_signal") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&[]);
    let status = cg
        .command("/bin/sh")
        .args(["-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let mut sleeper = cg.command("/bin/sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    daemon.wait_for("sleep exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["process"]["pid"] == pid)
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGUSR1));

    let exit3 = daemon.wait_for("exit 3", |e| {
        body(e, "process_exit").is_some_and(|b| b["process"]["arguments"] == "-c \"exit 3\"")
    });
    assert_eq!(exit3["process_exit"]["status"], 3);
    assert!(exit3["process_exit"].get("signal").is_none());
    let killed = daemon.wait_for("sleep exit", |e| {
        body(e, "process_exit").is_some_and(|b| b["process"]["pid"] == pid)
    });
    assert_eq!(killed["process_exit"]["signal"], "SIGUSR1");
    assert_eq!(
        killed["process_exit"]["process"]["binary"],
        resolved("/bin/sleep")
    );
}

#[test]
fn process_older_than_the_daemon_is_a_procfs_parent() {
    if !can_run("process_older_than_the_daemon_is_a_procfs_parent") {
        return;
    }
    let cg = TestCgroup::new();
    // The shell starts first and waits for a line before it runs `true`.
    let mut sh = cg
        .command("/bin/sh")
        .args(["-c", "read x; /bin/true"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let daemon = Daemon::start(&[]);
    sh.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(sh.wait().unwrap().success());
    let t = daemon.wait_for("true exec", |e| {
        body(e, "process_exec").is_some_and(|b| b["parent"]["pid"] == sh.id())
    });
    let parent = &t["process_exec"]["parent"];
    assert!(
        parent["flags"].as_str().unwrap().contains("procFS"),
        "{parent}"
    );
    assert_eq!(parent["binary"], resolved("/bin/sh"));
    assert_eq!(parent["arguments"], "-c \"read x; /bin/true\"");
    assert_eq!(
        t["process_exec"]["process"]["parent_exec_id"],
        parent["exec_id"]
    );
}

#[test]
fn sigterm_detaches_every_program() {
    if !can_run("sigterm_detaches_every_program") {
        return;
    }
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let mut daemon = Daemon::start(&[
        "--policy",
        &shipped("reflex.yaml"),
        "--enforce-cgroup",
        &scope,
    ]);
    // exec, fork, exit, connect4/6, sendmsg4/6 and the quarantine filters,
    // plus what this kernel's path needs (the LSM exec hook, the compat
    // connect programs' signal sender), as `sensor probe --load` lists them;
    // not the programs attached on demand (syscall policies, TCP state
    // and packet hooks).
    let probe = Command::new(SENSOR)
        .args(["probe", "--load"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    let chosen = text
        .lines()
        .find_map(|l| l.strip_prefix("programs verified and attached: "))
        .expect("probe --load lists the programs")
        .split(", ")
        .filter(|p| {
            ![
                "snsr_syscall",
                "snsr_sys_return",
                "snsr_sock_state",
                "snsr_pkt_",
            ]
            .iter()
            .any(|on_demand| p.starts_with(on_demand))
        })
        .count();
    assert!(chosen >= 9, "{text}");
    assert_eq!(daemon.program_ids.len(), chosen, "{text}");
    let loaded = || -> Vec<u32> {
        aya::programs::loaded_programs()
            .filter_map(|p| p.ok().map(|p| p.id()))
            .collect()
    };
    let before = loaded();
    for id in &daemon.program_ids {
        assert!(
            before.contains(id),
            "program {id} is loaded while the daemon runs"
        );
    }
    assert!(daemon.stop().success());
    // The kernel frees a detached program after an RCU grace period, so its
    // id may linger for a moment after the daemon is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let after = loaded();
        let left: Vec<&u32> = daemon
            .program_ids
            .iter()
            .filter(|id| after.contains(id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs {left:?} still loaded 5 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = Command::new(SENSOR)
        .args(["policy", "check"])
        .arg(shipped("reflex.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_full_ring_buffer_is_counted_and_reported() {
    if !can_run("a_full_ring_buffer_is_counted_and_reported") {
        return;
    }
    let mut daemon = Daemon::start(&["--ring-buffer-size", "4096"]);
    let pid = daemon.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for _ in 0..100 {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(daemon.stop().success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = daemon.log_lines();
    assert!(
        log.iter()
            .any(|l| l.contains("ring buffer full: records lost")),
        "the loss is logged: {log:#?}"
    );
    let stop = log
        .iter()
        .find(|l| l.contains("sensor stopped"))
        .expect("stop line");
    let lost: u64 = stop
        .split("lost=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("lost= in the stop line");
    assert!(lost > 0, "{stop}");
}
