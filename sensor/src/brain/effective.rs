//! What a process actually runs when its binary is a dynamic loader: `ld.so
//! /usr/bin/curl -d ...` execs the loader, which maps curl itself, so the
//! kernel (and a rule on the binary's name) sees only the loader. The brain
//! reads the loader's command line the way the loader does and judges the
//! program it names as well.

/// Loader options that take a value (glibc's `ld.so --help`).
const WITH_VALUE: &[&str] = &[
    "--library-path",
    "--inhibit-rpath",
    "--audit",
    "--preload",
    "--argv0",
    "--glibc-hwcaps-prefix",
    "--glibc-hwcaps-mask",
];

/// Whether `binary` is a dynamic loader: glibc's `ld-linux*.so*` / `ld-*.so*`
/// or musl's `ld-musl-*.so*`.
pub fn is_loader(binary: &str) -> bool {
    let name = binary.rsplit('/').next().unwrap_or(binary);
    name.starts_with("ld-") && name.contains(".so")
}

/// For a loader's words (its arguments, without argv[0]), the program it
/// runs and that program's arguments.
pub fn loaded_program(words: &[String]) -> Option<(&str, &[String])> {
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if w == "--" {
            i += 1;
            break;
        }
        if !w.starts_with("--") {
            break;
        }
        // `--opt=value` carries its value; `--opt value` takes the next word.
        i += if WITH_VALUE.contains(&w) { 2 } else { 1 };
    }
    let program = words.get(i)?;
    Some((program.as_str(), &words[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_program_a_loader_runs() {
        assert!(is_loader("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
        assert!(is_loader("/lib/ld-musl-x86_64.so.1"));
        assert!(!is_loader("/usr/bin/ld"));
        assert!(!is_loader("/usr/bin/curl"));
        let w = words("/usr/bin/curl -d x http://a");
        assert_eq!(loaded_program(&w), Some(("/usr/bin/curl", &w[1..])));
        let w = words("--library-path /x --inhibit-cache /usr/bin/curl -T f");
        assert_eq!(loaded_program(&w), Some(("/usr/bin/curl", &w[4..])));
        let w = words("--argv0 sleep -- /usr/bin/curl");
        assert_eq!(loaded_program(&w).map(|p| p.0), Some("/usr/bin/curl"));
        assert_eq!(loaded_program(&words("--list")), None);
    }
}
