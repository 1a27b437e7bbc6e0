//! The policy directory is live: files added, changed and removed take
//! effect without a restart; a bad file, at start or later, is refused and
//! logged while the others (and its own last good version) keep working.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Writes `text` as `dir/name` the way a ConfigMap update does: a file
/// written elsewhere, renamed into place.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Polls until `bin` exits with `want`; returns how long that took.
fn until(cg: &TestCgroup, bin: &str, want: i32, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        if cg.exit_code(bin) == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn files_added_changed_and_removed_take_effect_and_bad_ones_are_refused_alone() {
    if !can_run("files_added_changed_and_removed_take_effect_and_bad_ones_are_refused_alone") {
        return;
    }
    let tmp = TempDir::new();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let bins: Vec<String> = (1..=3)
        .map(|i| {
            let b = tmp.path().join(format!("bin{i}"));
            std::fs::copy("/bin/true", &b).unwrap();
            b.to_string_lossy().into_owned()
        })
        .collect();
    put(&policies, "a.yaml", &kill_policy("kill-a", &bins[0]));
    put(&policies, "bad.yaml", "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bad}\nspec:\n  kprobes:\n  - call: no_such_hook\n");
    let cg = TestCgroup::new();
    let scope = cg.0.to_string_lossy().into_owned();
    let daemon = Daemon::start(&[
        "--policy-dir",
        policies.to_str().unwrap(),
        "--enforce-cgroup",
        &scope,
    ]);
    let log = daemon.startup.join("\n");
    assert!(
        log.contains("policy file refused") && log.contains("bad.yaml"),
        "the bad file is named at start: {log}"
    );
    assert_eq!(cg.exit_code(&bins[0]), Some(137), "the good file works");

    put(&policies, "c.yaml", &kill_policy("kill-c", &bins[1]));
    let added = until(&cg, &bins[1], 137, "an added file kills");
    put(&policies, "a.yaml", &kill_policy("kill-a", &bins[2]));
    let changed = until(&cg, &bins[2], 137, "a changed file kills its new binary");
    assert_eq!(cg.exit_code(&bins[0]), Some(0), "and no longer the old one");
    eprintln!("added: {added:?}, changed: {changed:?}");

    // A file that turns bad keeps its last good version in force.
    put(&policies, "a.yaml", "kind: TracingPolicy\nspec: [");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cg.exit_code(&bins[2]), Some(137));
    assert!(daemon
        .log_lines()
        .iter()
        .any(|l| l.contains("policy file refused") && l.contains("a.yaml")));

    std::fs::remove_file(policies.join("c.yaml")).unwrap();
    until(&cg, &bins[1], 0, "a removed file stops");
    assert_eq!(cg.exit_code(&bins[2]), Some(137), "the others stay");

    // Brain rules come and go the same way.
    let watched = tmp.path().join("watched");
    std::fs::copy("/bin/true", &watched).unwrap();
    let watched = watched.to_string_lossy().into_owned();
    put(
        &policies,
        "rule.yaml",
        &format!(
            "apiVersion: sensor.io/v1alpha1\nkind: BrainRule\nmetadata: {{name: dir-rule}}\nspec:\n  on: exec\n  binary: {{operator: In, values: [\"{watched}\"]}}\n  actions: [alert]\n"
        ),
    );
    let alerts = || {
        daemon
            .events()
            .iter()
            .filter(|e| e["sensor_alert"]["rule"] == "dir-rule")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alerts() == 0 {
        assert!(
            Instant::now() < deadline,
            "an added brain rule alerts within 5 s"
        );
        assert_eq!(cg.exit_code(&watched), Some(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(policies.join("rule.yaml")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = alerts();
    assert_eq!(cg.exit_code(&watched), Some(0));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(alerts(), before, "a removed brain rule no longer alerts");
}
