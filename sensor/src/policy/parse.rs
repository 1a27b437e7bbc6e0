//! From the raw YAML schema to a [`Policy`]: every hook is mapped onto the
//! hooks this sensor implements, every operator and action is checked against
//! what the argument and the kernel support, and anything else is refused with
//! the field path and the reason.
use super::hooks::{self, HookDef};
use super::protect;
use super::raw::*;
use super::returns;
use super::selector::selector;
use super::syscall_hooks::{enforcers, syscall_kprobe, syscall_lists, syscall_tracepoint, Lists};
use super::syscalls;
use super::{limits, EventArg, Hook, HookPoint, Mode, NetMatch, Policy, Selector};
use sensor_common::net_ops;

/// An error at a field path, before the file name is attached.
#[derive(Debug)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub type Result<T> = std::result::Result<T, FieldError>;

pub fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T> {
    Err(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Refuses a field Tetragon knows but this sensor does not implement.
pub fn unsupported<T>(value: &Option<T>, field: String, what: &str) -> Result<()> {
    match value {
        Some(_) => err(field, format!("{what} is not supported by this sensor")),
        None => Ok(()),
    }
}

/// `spec.options`, Tetragon's list of `{name, value}`: `policy-mode` is the
/// one this sensor has; any other is refused rather than ignored.
fn options(value: Option<&serde_yaml::Value>) -> Result<Mode> {
    let Some(value) = value else {
        return Ok(Mode::Enforce);
    };
    let Some(list) = value.as_sequence() else {
        return err("spec.options", "expected a list of {name, value}");
    };
    let mut mode = Mode::Enforce;
    for (i, o) in list.iter().enumerate() {
        let field = format!("spec.options[{i}]");
        let name = o.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        let value = o.get("value").and_then(|v| v.as_str()).unwrap_or_default();
        match name {
            "policy-mode" => {
                mode = match value {
                    "enforce" => Mode::Enforce,
                    "monitor" => Mode::Monitor,
                    other => {
                        return err(
                            format!("{field}.value"),
                            format!("`{other}`: expected enforce or monitor"),
                        )
                    }
                }
            }
            other => {
                return err(
                    format!("{field}.name"),
                    format!("`{other}` is not supported by this sensor; supported: policy-mode"),
                )
            }
        }
    }
    Ok(mode)
}

pub fn policy(raw: RawPolicy) -> Result<Policy> {
    if raw.api_version != "cilium.io/v1alpha1" {
        return err(
            "apiVersion",
            format!("`{}`: expected cilium.io/v1alpha1", raw.api_version),
        );
    }
    let namespace = match raw.kind.as_str() {
        "TracingPolicy" => None,
        "TracingPolicyNamespaced" => match raw.metadata.namespace.clone().filter(|n| !n.is_empty())
        {
            Some(ns) => Some(ns),
            None => {
                return err(
                    "metadata.namespace",
                    "a TracingPolicyNamespaced needs the namespace it applies to",
                )
            }
        },
        other => {
            return err(
                "kind",
                format!("`{other}`: expected TracingPolicy or TracingPolicyNamespaced"),
            )
        }
    };
    if raw.metadata.name.is_empty() {
        return err("metadata.name", "must not be empty");
    }
    let s = &raw.spec;
    let no_spec = |name: &str| format!("spec.{name}");
    unsupported(&s.uprobes, no_spec("uprobes"), "uprobes")?;
    unsupported(&s.usdts, no_spec("usdts"), "usdts")?;
    unsupported(
        &s.fentries,
        no_spec("fentries"),
        "fentries (they need a BPF trampoline, which this kernel refuses)",
    )?;
    let lists = syscall_lists(s.lists.as_ref())?;
    enforcers(s.enforcers.as_ref(), &lists)?;
    unsupported(
        &s.container_selector,
        no_spec("containerSelector"),
        "containerSelector",
    )?;
    unsupported(&s.host_selector, no_spec("hostSelector"), "hostSelector")?;
    unsupported(&s.node_selector, no_spec("nodeSelector"), "nodeSelector")?;
    unsupported(
        &s.selectors_macros,
        no_spec("selectorsMacros"),
        "selectorsMacros",
    )?;
    unsupported(&s.loader, no_spec("loader"), "the loader sensor")?;

    let mode = options(s.options.as_ref())?;
    let mut hooks = Vec::new();
    for (i, k) in raw.spec.kprobes.into_iter().enumerate() {
        let at = format!("spec.kprobes[{i}]");
        hooks.push(kprobe(k, &lists, &at)?);
    }
    for (i, t) in raw.spec.tracepoints.into_iter().enumerate() {
        hooks.push(tracepoint(t, &lists, &format!("spec.tracepoints[{i}]"))?);
    }
    for (i, l) in raw.spec.lsmhooks.into_iter().enumerate() {
        hooks.push(lsm(l, &format!("spec.lsmhooks[{i}]"))?);
    }
    if hooks.is_empty() {
        return err("spec", "no kprobes, tracepoints or lsmhooks");
    }
    // Pod-scoped policies cannot reach the host's processes; monitor mode
    // acts on none.
    let unscoped = namespace.is_none() && raw.spec.pod_selector.is_none();
    if unscoped && mode == Mode::Enforce && !protect::allowed(raw.metadata.annotations.as_ref()) {
        let protected = protect::Protected::of_this_node();
        for h in &hooks {
            for (j, sel) in h.selectors.iter().enumerate() {
                if let Some(why) = protected.harmed_by(sel) {
                    return err(format!("{}.selectors[{j}]", h.field), why);
                }
            }
        }
    }
    let pod_selector = match raw.spec.pod_selector {
        Some(sel) => Some(
            super::LabelSelector::parse(sel, "spec.podSelector")
                .map_err(|(field, reason)| FieldError { field, reason })?,
        ),
        None => None,
    };
    Ok(Policy {
        name: raw.metadata.name,
        namespace,
        pod_selector,
        hooks,
        mode,
    })
}

fn kprobe(k: RawKprobe, lists: &Lists, at: &str) -> Result<Hook> {
    let Some(def) = hooks::kprobe(&k.call) else {
        if syscalls::number(&k.call).is_some() || k.call.starts_with("list:") {
            return syscall_kprobe(k, lists, at);
        }
        return err(
            format!("{at}.call"),
            format!(
                "unsupported hook `{}`; kprobes: {}, and the x86_64 syscalls (sys_NAME)",
                k.call,
                hooks::names(hooks::KPROBES)
            ),
        );
    };
    let return_arg = returns::of(&k, def, at)?;
    kprobe_extras(&k, at)?;
    let point = HookPoint::Kprobe {
        function: def.function.to_string(),
    };
    let mut h = hook(point, def, k.args, k.selectors, k.message, k.tags, at)?;
    h.return_arg = return_arg;
    Ok(h)
}

fn tracepoint(t: RawTracepoint, lists: &Lists, at: &str) -> Result<Hook> {
    if t.raw == Some(true) {
        return err(format!("{at}.raw"), "raw tracepoints are not supported");
    }
    match (t.subsystem.as_str(), t.event.as_str()) {
        ("sched", "sched_process_exec") => {}
        ("raw_syscalls", "sys_enter") | ("syscalls", _) => {
            return syscall_tracepoint(t, lists, at)
        }
        _ => {
            return err(
                format!("{at}.event"),
                format!(
                    "unsupported tracepoint `{}/{}`; tracepoints: sched/sched_process_exec, raw_syscalls/sys_enter, syscalls/sys_enter_NAME",
                    t.subsystem, t.event
                ),
            )
        }
    }
    let point = HookPoint::Tracepoint {
        subsystem: t.subsystem,
        event: t.event,
    };
    hook(
        point,
        &hooks::EXEC_TRACEPOINT,
        t.args,
        t.selectors,
        t.message,
        t.tags,
        at,
    )
}

fn lsm(l: RawLsmHook, at: &str) -> Result<Hook> {
    let Some(def) = hooks::lsm(&l.hook) else {
        return err(
            format!("{at}.hook"),
            format!(
                "unsupported LSM hook `{}`; LSM hooks: {}",
                l.hook,
                hooks::names(hooks::LSM_HOOKS)
            ),
        );
    };
    let point = HookPoint::Lsm { hook: l.hook };
    hook(point, def, l.args, l.selectors, l.message, l.tags, at)
}

/// Refuses the kprobe fields this sensor does not implement.
/// (`returnArgAction` is checked with the return: see `returns`.)
pub fn kprobe_extras(k: &RawKprobe, at: &str) -> Result<()> {
    unsupported(&k.data, format!("{at}.data"), "data")?;
    unsupported(&k.ignore, format!("{at}.ignore"), "ignore")?;
    Ok(())
}

/// Refuses the argument options this sensor does not implement.
pub fn arg_options(a: &RawArg, f: &str) -> Result<()> {
    arg_options_but_size(a, f)?;
    unsupported(
        &a.size_arg_index,
        format!("{f}.sizeArgIndex"),
        "sizeArgIndex",
    )
}

/// As [`arg_options`], taking `sizeArgIndex` (a syscall's `char_buf`).
pub fn arg_options_but_size(a: &RawArg, f: &str) -> Result<()> {
    for (name, v) in [
        ("resolve", &a.resolve),
        ("btfType", &a.btf_type),
        ("returnCopy", &a.return_copy),
        ("maxData", &a.max_data),
        ("source", &a.source),
    ] {
        unsupported(v, format!("{f}.{name}"), name)?;
    }
    Ok(())
}

/// Tetragon's limits on a hook's selectors, message and tags.
pub fn hook_limits(
    selectors: usize,
    message: Option<&String>,
    tags: &[String],
    at: &str,
) -> Result<()> {
    if selectors > limits::SELECTORS_PER_HOOK {
        return err(
            format!("{at}.selectors"),
            format!(
                "{selectors} selectors; at most {} per hook",
                limits::SELECTORS_PER_HOOK
            ),
        );
    }
    if message.is_some_and(|m| m.len() > 256) {
        return err(format!("{at}.message"), "longer than 256 characters");
    }
    if tags.len() > 16 {
        return err(format!("{at}.tags"), "more than 16 tags");
    }
    Ok(())
}

fn hook(
    point: HookPoint,
    def: &HookDef,
    args: Vec<RawArg>,
    selectors: Vec<RawSelector>,
    message: Option<String>,
    tags: Vec<String>,
    at: &str,
) -> Result<Hook> {
    let mut declared: Vec<(u32, EventArg)> = Vec::new();
    let available = || {
        def.args
            .iter()
            .map(|a| a.index.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, a) in args.iter().enumerate() {
        let f = format!("{at}.args[{i}]");
        let Some(d) = def.args.iter().find(|d| d.index == a.index) else {
            return err(
                format!("{f}.index"),
                format!(
                    "argument {} is not available; this hook exposes argument {}",
                    a.index,
                    available()
                ),
            );
        };
        let ty = a.type_.as_deref().unwrap_or("auto");
        if !d.types.contains(&ty) {
            return err(
                format!("{f}.type"),
                format!(
                    "type `{ty}` does not fit argument {}; expected {}",
                    a.index,
                    d.types.join(" or ")
                ),
            );
        }
        arg_options(a, &f)?;
        if declared.iter().any(|(idx, _)| *idx == a.index) {
            return err(
                format!("{f}.index"),
                format!("argument {} is declared twice", a.index),
            );
        }
        declared.push((a.index, d.arg));
    }
    hook_limits(selectors.len(), message.as_ref(), &tags, at)?;
    let mut parsed = Vec::new();
    for (i, s) in selectors.into_iter().enumerate() {
        parsed.push(selector(
            s,
            &declared,
            None,
            None,
            &format!("{at}.selectors[{i}]"),
        )?);
    }
    if !def.overrides {
        if let Some(i) = parsed.iter().position(|s| s.actions.errno.is_some()) {
            let why = if def.family == super::HookFamily::Exec {
                "Override on exec needs the hook that runs before the exec: kprobe security_bprm_check or lsmhook bprm_check_security; use Sigkill here"
            } else {
                "Override is not possible on this hook here (the call cannot be made to fail); Override a connect on tcp_connect or security_socket_connect"
            };
            return err(format!("{at}.selectors[{i}].matchActions"), why);
        }
    }
    if def.function != hooks::IMA_HOOK {
        if let Some(i) = parsed.iter().position(|s| s.actions.ima_hash) {
            return err(
                format!("{at}.selectors[{i}].matchActions"),
                format!("imaHash: the binary is hashed only on lsmhook {} here (Tetragon hashes in LSM hooks only)", hooks::IMA_HOOK),
            );
        }
    }
    if !def.signals {
        if let Some(i) = parsed.iter().position(|s| s.actions.signal.is_some()) {
            return err(
                format!("{at}.selectors[{i}].matchActions"),
                format!("{} is reported here, not acted on: {}; use Sigkill on tcp_connect or tcp_sendmsg", def.function, no_signal_why(def)),
            );
        }
    }
    if def.net_op == net_ops::CONNECT {
        let state = |m: &NetMatch| matches!(m, NetMatch::State(_));
        if let Some(i) = parsed.iter().position(|s| s.net.iter().any(state)) {
            return err(
                format!("{at}.selectors[{i}].matchArgs"),
                format!("State: {}'s kernel hook does not see the socket's TCP state; it is read on tcp_close, tcp_sendmsg, inet_csk_listen_start, tcp_set_state and tcp_create_openreq_child", def.function),
            );
        }
    }
    if parsed.is_empty() {
        // A hook without selectors posts every call, as in Tetragon.
        parsed.push(Selector::post_all());
    }
    if def.packets != hooks::Packets::None {
        for (i, s) in parsed.iter_mut().enumerate() {
            s.net.extend(packets_seen(def.packets));
            if s.net.len() > limits::MAX_ARG_FILTERS {
                return err(
                    format!("{at}.selectors[{i}].matchArgs"),
                    format!(
                        "{} filters with the {} that {} implies; at most {}",
                        s.net.len(),
                        if def.packets == hooks::Packets::Ip6 {
                            "one"
                        } else {
                            "two"
                        },
                        def.function,
                        limits::MAX_ARG_FILTERS
                    ),
                );
            }
        }
    }
    Ok(Hook {
        field: at.to_string(),
        point,
        family: def.family,
        binaries_of_new_image: def.binaries_of_new_image,
        net_ops: def.net_op,
        args: declared.into_iter().map(|(_, a)| a).collect(),
        syscalls: Vec::new(),
        return_arg: super::ReturnArg::None,
        return_type: None,
        selectors: parsed,
        message,
        tags,
    })
}

/// The filters that narrow the packets the packet programs see to those
/// a packet hook's function sees.
fn packets_seen(p: hooks::Packets) -> Vec<NetMatch> {
    let multicast = || {
        hooks::MULTICAST4
            .iter()
            .filter_map(|n| super::net::IpNet::parse(n).ok())
            .collect()
    };
    match p {
        hooks::Packets::None => Vec::new(),
        hooks::Packets::Ip4Unicast => vec![
            NetMatch::Family(vec![2]),
            NetMatch::Addr {
                dest: true,
                negate: true,
                nets: multicast(),
            },
        ],
        hooks::Packets::Ip4Multicast => vec![
            NetMatch::Family(vec![2]),
            NetMatch::Addr {
                dest: true,
                negate: false,
                nets: multicast(),
            },
        ],
        hooks::Packets::Ip6 => vec![NetMatch::Family(vec![10])],
    }
}

/// Why a hook that reports cannot signal.
fn no_signal_why(def: &HookDef) -> &'static str {
    if def.net_op & (net_ops::PACKET_IN | net_ops::PACKET_OUT) != 0 {
        "a received packet is handled in whichever task's context the kernel is in (softirq for most), not its socket owner's, and cannot be taken back; a Sigkill drops an outgoing packet and kills its sender on ip_output, ip_mc_output and ip6_output"
    } else if def.net_op & (net_ops::STATE | net_ops::OPENREQ) != 0 {
        "TCP state changes are mostly made in softirq, where the current task is whichever the packet interrupted, not the socket's owner"
    } else {
        "its kernel hook (a cgroup sock program) cannot send a signal on every kernel"
    }
}

#[cfg(test)]
mod tests {
    use super::super::{from_document, Mode};

    fn with_options(options: &str) -> Result<super::Policy, (String, String)> {
        let yaml = format!(
            "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {{name: p}}\nspec:\n  options: {options}\n  tracepoints:\n  - subsystem: sched\n    event: sched_process_exec\n"
        );
        from_document(serde_yaml::from_str(&yaml).expect("YAML"))
    }

    #[test]
    fn policy_mode_is_the_one_option_and_others_are_refused() {
        let p = with_options("[{name: policy-mode, value: monitor}]").unwrap();
        assert_eq!(p.mode, Mode::Monitor);
        let p = with_options("[{name: policy-mode, value: enforce}]").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        let (field, reason) = with_options("[{name: policy-mode, value: audit}]").unwrap_err();
        assert_eq!(field, "spec.options[0].value");
        assert!(reason.contains("enforce or monitor"), "{reason}");
        let (field, reason) =
            with_options("[{name: disable-kprobe-multi, value: \"1\"}]").unwrap_err();
        assert_eq!(field, "spec.options[0].name");
        assert!(reason.contains("policy-mode"), "{reason}");
    }
}
