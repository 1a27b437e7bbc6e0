//! The export flags on real events: Tetragon's allow and deny lists choose
//! what reaches the JSON file, field filters trim it, the rate limit caps
//! it (and counts what it dropped), and a bad value exits 2 with the flag
//! and the reason.
mod common;

use common::*;

#[test]
fn allow_deny_and_field_filters_shape_the_export() {
    if !can_run("allow_deny_and_field_filters_shape_the_export") {
        return;
    }
    let dir = TempDir::new();
    let keep = copy_true(&dir, "export-keep");
    let drop = copy_true(&dir, "export-drop");
    let cg = TestCgroup::new();
    let base = dir.path().to_string_lossy().into_owned();
    let allow = format!(r#"{{"event_set":["PROCESS_EXEC"],"binary_regex":["^{base}/"]}}"#);
    let deny = r#"{"binary_regex":["export-drop$"]}"#;
    let fields = r#"{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.pid","action":"INCLUDE"}"#;
    let daemon = Daemon::start(&[
        "--export-allowlist",
        &allow,
        "--export-denylist",
        deny,
        "--field-filters",
        fields,
    ]);
    for bin in [&drop, &keep] {
        assert_eq!(cg.command(bin).status().unwrap().code(), Some(0));
    }
    let kept = daemon.wait_for("the kept exec", |e| {
        e["process_exec"]["process"]["binary"] == keep.as_str()
    });
    // Trimmed to the two fields, the envelope untouched.
    let process = kept["process_exec"]["process"].as_object().unwrap();
    let mut names: Vec<&str> = process.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["binary", "pid"], "{kept}");
    assert!(kept["process_exec"].get("parent").is_none(), "{kept}");
    assert!(kept["node_name"].is_string() && kept["time"].is_string());
    // The allow list let only execs of this test's binaries through, and
    // the deny list took one of them out.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for e in daemon.events() {
        let bin = e["process_exec"]["process"]["binary"].as_str();
        assert_eq!(bin, Some(keep.as_str()), "only the kept exec: {e}");
    }
}

#[test]
fn an_ancestor_binary_filter_keeps_the_descendants_beyond_the_child() {
    if !can_run("an_ancestor_binary_filter_keeps_the_descendants_beyond_the_child") {
        return;
    }
    let dir = TempDir::new();
    let shell = dir.path().join("ancestor-shell");
    std::fs::copy(resolved("/bin/sh"), &shell).unwrap();
    let shell = shell.to_string_lossy().into_owned();
    let cg = TestCgroup::new();
    let allow = r#"{"event_set":["PROCESS_EXEC"],"ancestor_binary_regex":["/ancestor-shell$"]}"#;
    let daemon = Daemon::start(&["--enable-ancestors", "base", "--export-allowlist", allow]);
    let marker = format!("grandchild-{}", std::process::id());
    let status = cg
        .command(&shell)
        .arg("-c")
        .arg(format!("/bin/sh -c '/bin/echo {marker} >/dev/null; :'; :"))
        .status()
        .unwrap();
    assert!(status.success());
    // echo's ancestors (beyond its parent, the inner shell) hold the shell.
    let echo = daemon.wait_for("the grandchild's exec", |e| {
        e["process_exec"]["process"]["arguments"] == marker.as_str()
    });
    assert_eq!(
        echo["process_exec"]["ancestors"][0]["binary"],
        shell.as_str()
    );
    // The inner shell is the shell's child: its ancestors start above it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    for e in daemon.events() {
        assert_eq!(
            e["process_exec"]["process"]["arguments"],
            marker.as_str(),
            "only the grandchild passes: {e}"
        );
    }
}

#[test]
fn the_rate_limit_caps_the_export_and_counts_the_rest() {
    if !can_run("the_rate_limit_caps_the_export_and_counts_the_rest") {
        return;
    }
    let cg = TestCgroup::new();
    let daemon = Daemon::start(&["--export-rate-limit", "5"]);
    cg.exec_burst(20);
    eventually("the drops counted", || {
        daemon
            .scrape()
            .sum("tetragon_export_ratelimit_events_dropped_total", &[])
            >= 15.0
    });
    assert_eq!(daemon.events().len(), 5, "five a minute, no more");
    assert_eq!(
        daemon.scrape().sum("tetragon_events_exported_total", &[]),
        5.0
    );
}

#[test]
fn bad_export_flags_exit_2_with_the_reason() {
    for (flag, value, says) in [
        (
            "--export-allowlist",
            r#"{"binary_regex":["("]}"#,
            "binary_regex",
        ),
        (
            "--export-denylist",
            r#"{"binnary_regex":["x"]}"#,
            "unknown field \"binnary_regex\"",
        ),
        ("--export-denylist", r#"{"namespace":"#, "filter 0"),
        (
            "--field-filters",
            r#"{"fields":"process.pid","action":"KEEP"}"#,
            "KEEP",
        ),
        ("--export-file-rotation-interval", "10y", "unknown unit"),
        (
            "--export-allowlist",
            r#"{"ancestor_binary_regex":["bash"]}"#,
            "--enable-ancestors",
        ),
    ] {
        let out = std::process::Command::new(SENSOR)
            .args(["run", "--health-server-address", "", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}
