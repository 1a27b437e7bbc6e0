//! What a kprobe hook returns, as its events show it in `return`:
//! `return`, `returnArg` and `returnArgAction`. The connect hooks return
//! an `int` (zero, or the errno of an Override); `sk_alloc` and
//! `tcp_create_openreq_child` return the socket they made, which Tetragon
//! policies track (`returnArgAction: TrackSock`).
//!
//! Tetragon tracks a socket so that events raised outside its owner's
//! context can name the owner. Here the owners are kept without it: the
//! socket hooks run in the acting task's context, the packet hooks name a
//! socket's creator, and TCP state changes made in softirq name the task
//! that listened or connected (see `sock.rs` in `sensor-ebpf`). TrackSock
//! and UntrackSock are accepted and do nothing, and the README says so.
use super::hooks::HookDef;
use super::parse::{err, Result};
use super::raw::RawKprobe;
use super::ReturnArg;

/// The return a non-syscall kprobe `k` on `def` shows in its events.
pub fn of(k: &RawKprobe, def: &HookDef, at: &str) -> Result<ReturnArg> {
    let ty = k
        .return_arg
        .as_ref()
        .map(|v| v.get("type").and_then(|t| t.as_str()).unwrap_or("auto"));
    if let Some(v) = &k.return_arg {
        if !matches!(v.get("index").map(|i| i.as_u64()), None | Some(Some(0))) {
            return err(
                format!("{at}.returnArg.index"),
                "the return value is index 0",
            );
        }
    }
    if def.returns_sock {
        if let Some(a) = &k.return_arg_action {
            if a.as_str() != Some("TrackSock") {
                return err(
                    format!("{at}.returnArgAction"),
                    format!("{} returns a socket: only TrackSock applies", def.function),
                );
            }
        }
        return match ty {
            None => Ok(ReturnArg::None),
            Some("sock" | "auto") => Ok(ReturnArg::Sock),
            Some(t) => err(
                format!("{at}.returnArg.type"),
                format!(
                    "type `{t}` does not fit {}'s return value; expected sock",
                    def.function
                ),
            ),
        };
    }
    if k.return_ == Some(true) {
        return err(format!("{at}.return"), "return probes are not supported");
    }
    if k.return_arg_action.is_some() {
        return err(
            format!("{at}.returnArgAction"),
            format!(
                "{} does not return a socket (TrackSock applies to sk_alloc and tcp_create_openreq_child)",
                def.function
            ),
        );
    }
    match ty {
        None => Ok(ReturnArg::None),
        Some("int" | "auto") if def.net_op & !sensor_common::net_ops::CONNECT == 0 => {
            Ok(ReturnArg::Int)
        }
        Some("int" | "auto") => err(
            format!("{at}.returnArg"),
            format!(
                "{}'s return value is not known where this sensor sees the call",
                def.function
            ),
        ),
        Some(t) => err(
            format!("{at}.returnArg.type"),
            format!("type `{t}` does not fit the return value; expected int"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<ReturnArg> {
        let k: RawKprobe = serde_yaml::from_str(yaml).expect("YAML");
        let def = super::super::hooks::kprobe(&k.call).expect("a hook");
        of(&k, def, "k")
    }

    #[test]
    fn sockets_return_from_their_hooks_and_ints_from_connects() {
        let alloc = "call: sk_alloc\nreturn: true\nreturnArg: {index: 0, type: sock}\nreturnArgAction: TrackSock\n";
        assert_eq!(check(alloc).unwrap(), ReturnArg::Sock);
        assert_eq!(
            check("call: tcp_create_openreq_child\nreturn: true\n").unwrap(),
            ReturnArg::None
        );
        let e = check("call: sk_alloc\nreturnArg: {index: 0, type: int}\n").unwrap_err();
        assert_eq!(e.field, "k.returnArg.type");
        let e = check("call: sk_alloc\nreturnArgAction: UntrackSock\n").unwrap_err();
        assert_eq!(e.field, "k.returnArgAction");
        assert_eq!(
            check("call: tcp_connect\nreturnArg: {index: 0, type: int}\n").unwrap(),
            ReturnArg::Int
        );
        let e = check("call: tcp_close\nreturnArg: {index: 0, type: int}\n").unwrap_err();
        assert!(e.reason.contains("not known"), "{}", e.reason);
        let e = check("call: tcp_connect\nreturn: true\n").unwrap_err();
        assert_eq!(e.field, "k.return");
        let e = check("call: tcp_close\nreturnArgAction: TrackSock\n").unwrap_err();
        assert!(
            e.reason.contains("does not return a socket"),
            "{}",
            e.reason
        );
    }
}
