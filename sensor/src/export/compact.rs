//! One line per event for people, in the spirit of `tetra getevents -o
//! compact`: an emoji, the event kind, where it ran, the binary and what
//! happened.
use super::event::{Argument, Envelope, Event, Process};

fn command(p: &Process) -> String {
    if p.arguments.is_empty() {
        p.binary.to_string()
    } else {
        format!("{} {}", p.binary, p.arguments)
    }
}

/// What the first argument names: a path, or a connection.
fn path_of(args: &[Argument]) -> String {
    args.iter()
        .map(|a| match a {
            Argument::StringArg(s) => s.clone(),
            Argument::LinuxBinprmArg(b) => b.path.clone(),
            Argument::SockArg(s) => {
                let proto = s.protocol.trim_start_matches("IPPROTO_").to_lowercase();
                format!(
                    "{proto} {} -> {}",
                    endpoint(&s.saddr, s.sport),
                    endpoint(&s.daddr, s.dport)
                )
            }
            Argument::SkbArg(s) => {
                let proto = s.protocol.trim_start_matches("IPPROTO_").to_lowercase();
                format!(
                    "{proto} packet {} -> {} ({} bytes)",
                    endpoint(&s.saddr, s.sport),
                    endpoint(&s.daddr, s.dport),
                    s.len
                )
            }
            Argument::SockaddrArg(s) => endpoint(&s.addr, s.port),
            Argument::IntArg(n) => n.to_string(),
            Argument::UintArg(n) => n.to_string(),
            Argument::SizeArg(n) | Argument::LongArg(n) => n.clone(),
            Argument::SyscallId(s) => s.id.to_string(),
            Argument::BytesArg(b) => b.clone(),
            Argument::TruncatedBytesArg(t) => t.bytes_arg.clone(),
            Argument::FileArg(f) => f.path.clone(),
        })
        .next()
        .unwrap_or_default()
}

fn endpoint(addr: &str, port: u32) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn policy_line(action: &str, what: &str, args: &[Argument], policy: &str) -> (String, String) {
    let verb = action.trim_start_matches("KPROBE_ACTION_");
    let icon = if verb == "POST" {
        "🔔 policy "
    } else {
        "🛑 reflex "
    };
    (
        icon.into(),
        format!("{what} {} {verb} [{policy}]", path_of(args)),
    )
}

/// The compact line for one event.
pub fn line(e: &Envelope) -> String {
    let Some(p) = e.event.process() else {
        return match &e.event {
            Event::SensorQuarantine(q) => {
                let pod = if q.pod.is_empty() {
                    q.pod_uid.clone()
                } else {
                    format!("{}/{}", q.namespace, q.pod)
                };
                let err = q
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                format!(
                    "🧫 quarantine {} {pod} {} {}{err} [{}]",
                    e.node_name, q.stage, q.outcome, q.rule
                )
            }
            _ => String::new(),
        };
    };
    let (head, tail) = match &e.event {
        Event::ProcessExec(_) => ("🚀 process".to_string(), String::new()),
        Event::ProcessExit(x) => {
            let how = if x.signal.is_empty() {
                x.status.to_string()
            } else {
                x.signal.clone()
            };
            ("💥 exit   ".to_string(), how)
        }
        Event::ProcessKprobe(k) => {
            policy_line(&k.action, &k.function_name, &k.args, &k.policy_name)
        }
        Event::ProcessLsm(l) => policy_line(&l.action, &l.function_name, &l.args, &l.policy_name),
        Event::ProcessTracepoint(t) => policy_line(
            &t.action,
            &format!("{}/{}", t.subsys, t.event),
            &t.args,
            &t.policy_name,
        ),
        Event::SensorQuarantine(_) => (String::new(), String::new()),
        Event::SensorAlert(a) => ("🧠 alert  ".to_string(), format!("[{}]", a.rule)),
    };
    let mut out = format!("{head} {} {}", e.node_name, command(p));
    if !tail.is_empty() {
        out.push(' ');
        out.push_str(&tail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::event::{BinprmArg, ProcessExit, ProcessKprobe};

    fn curl() -> Process {
        Process {
            binary: "/usr/bin/curl".into(),
            arguments: "--version".into(),
            ..Default::default()
        }
    }

    #[test]
    fn kill_and_exit_lines() {
        let k = Envelope {
            event: Event::ProcessKprobe(ProcessKprobe {
                process: curl(),
                parent: None,
                ancestors: Vec::new(),
                function_name: "security_bprm_check".into(),
                args: vec![Argument::LinuxBinprmArg(BinprmArg {
                    path: "/usr/bin/curl".into(),
                })],
                return_: None,
                action: "KPROBE_ACTION_SIGKILL".into(),
                policy_name: "reflex".into(),
                message: None,
                tags: vec![],
            }),
            node_name: "node1".into(),
            time: String::new(),
        };
        assert_eq!(
            line(&k),
            "🛑 reflex  node1 /usr/bin/curl --version security_bprm_check /usr/bin/curl SIGKILL [reflex]"
        );
        let x = Envelope {
            event: Event::ProcessExit(ProcessExit {
                process: curl(),
                parent: None,
                ancestors: Vec::new(),
                signal: "SIGKILL".into(),
                status: 0,
                time: String::new(),
            }),
            node_name: "node1".into(),
            time: String::new(),
        };
        assert_eq!(line(&x), "💥 exit    node1 /usr/bin/curl --version SIGKILL");
    }
}
