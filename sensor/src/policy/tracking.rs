//! Tetragon's socket-tracking hooks: `sk_alloc` with `returnArgAction:
//! TrackSock` and `__sk_free` with `UntrackSock`. Tetragon tracks a socket
//! so that events raised outside its owner's context (a packet in
//! softirq) name the owner. Here the network hooks run in the caller's own
//! context (connect, send, listen, the last close), so no tracking is
//! needed: such a hook loads when it posts nothing (every selector has
//! NoPost), and is then left out. One that would post an event for every
//! socket allocated or freed is refused with the reason.
use super::parse::{err, Result};
use super::raw::RawKprobe;

/// The tracking hooks, by call name.
pub fn is_tracking(call: &str) -> bool {
    matches!(call, "sk_alloc" | "__sk_free")
}

/// Checks a tracking hook; `Ok` means it may be left out.
pub fn check(k: &RawKprobe, at: &str) -> Result<()> {
    let posting = || {
        err(
            format!("{at}.selectors"),
            format!(
                "a {} hook that posts events (one per socket) is not supported; it loads when every selector has NoPost (socket tracking needs no hook here: the network hooks run in the socket owner's context)",
                k.call
            ),
        )
    };
    if k.selectors.is_empty() {
        return posting();
    }
    if let Some(a) = &k.return_arg_action {
        if a.as_str() != Some("TrackSock") {
            return err(
                format!("{at}.returnArgAction"),
                "only TrackSock is accepted on a tracking hook",
            );
        }
    }
    for (i, s) in k.selectors.iter().enumerate() {
        let mut no_post = false;
        for (j, a) in s.match_actions.iter().enumerate() {
            match a.action.to_ascii_lowercase().as_str() {
                "nopost" => no_post = true,
                "tracksock" | "untracksock" => {}
                other => {
                    return err(
                        format!("{at}.selectors[{i}].matchActions[{j}].action"),
                        format!("`{other}` on {}: a tracking hook takes NoPost, TrackSock and UntrackSock only", k.call),
                    )
                }
            }
        }
        if !no_post {
            return posting();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kprobe(yaml: &str) -> RawKprobe {
        serde_yaml::from_str(yaml).expect("YAML")
    }

    #[test]
    fn a_silent_tracking_hook_loads_and_a_posting_one_is_refused() {
        let silent = kprobe(
            "call: sk_alloc\nreturn: true\nreturnArgAction: TrackSock\nselectors:\n- matchArgs: [{index: 1, operator: Equal, values: ['2']}]\n  matchActions: [{action: NoPost}]\n",
        );
        assert!(check(&silent, "k").is_ok());
        let posting = kprobe(
            "call: sk_alloc\nselectors:\n- matchArgs: [{index: 1, operator: Equal, values: ['2']}]\n",
        );
        let e = check(&posting, "k").unwrap_err();
        assert!(e.reason.contains("NoPost"), "{}", e.reason);
        assert!(check(&kprobe("call: __sk_free\n"), "k").is_err());
        let kill = kprobe(
            "call: __sk_free\nselectors:\n- matchActions: [{action: NoPost}, {action: Sigkill}]\n",
        );
        assert_eq!(
            check(&kill, "k").unwrap_err().field,
            "k.selectors[0].matchActions[1].action"
        );
    }
}
