//! `sensor compact` reads JSON lines (a file or stdin) and prints one human
//! line per event; bad lines are reported, not skipped silently.
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{TempDir, SENSOR};

const EXEC: &str = r#"{"process_exec":{"process":{"exec_id":"bjoxOjI=","pid":2,"uid":0,"binary":"/usr/bin/curl","arguments":"-d @/etc/hostname http://backend","start_time":"2026-01-01T00:00:00Z"}},"node_name":"node1","time":"2026-01-01T00:00:00Z"}"#;
const EXIT: &str = r#"{"process_exit":{"process":{"exec_id":"bjoxOjI=","pid":2,"uid":0,"binary":"/usr/bin/curl","start_time":"2026-01-01T00:00:00Z"},"signal":"SIGKILL","time":"2026-01-01T00:00:01Z"},"node_name":"node1","time":"2026-01-01T00:00:01Z"}"#;

#[test]
fn compact_reads_stdin_and_files() {
    let mut child = Command::new(SENSOR)
        .arg("compact")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{EXEC}\n{EXIT}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "🚀 process node1 /usr/bin/curl -d @/etc/hostname http://backend",
            "💥 exit    node1 /usr/bin/curl SIGKILL",
        ]
    );

    let dir = TempDir::new();
    let f = dir.path().join("events.json");
    std::fs::write(&f, format!("{EXEC}\nnot json\n")).unwrap();
    let out = Command::new(SENSOR)
        .arg("compact")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a bad line fails the command");
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("🚀 process"));
}
