//! The syscall family's hooks: kprobes on `sys_*` calls (`syscall: true`)
//! or on `list:NAME`, `raw_syscalls/sys_enter` and
//! `syscalls/sys_enter_NAME` tracepoints, all carried out on the raw
//! `sys_enter` tracepoint (and `sys_exit` for `return: true`); their
//! argument types (integers, and strings and buffers copied from user
//! memory); `lists` of syscalls. Their filters are `syscall_filters`'.
use std::collections::{BTreeMap, BTreeSet};

use sensor_common::{SYSCALL_ARGS, SYSCALL_NRS};

use super::parse::{arg_options, arg_options_but_size, err, hook_limits, kprobe_extras, Result};
use super::raw::{RawArg, RawKprobe, RawSelector, RawTracepoint};
use super::selector::selector;
use super::{syscalls, EventArg, Hook, HookFamily, HookPoint, IntType, Selector, SysArg, UserRead};

/// A policy's `lists` of `type: syscalls`, by name: their numbers.
pub type Lists = BTreeMap<String, BTreeSet<u32>>;

/// `spec.lists`: only syscall lists exist here.
pub fn syscall_lists(value: Option<&serde_yaml::Value>) -> Result<Lists> {
    let mut lists = Lists::new();
    let Some(value) = value else {
        return Ok(lists);
    };
    let Some(entries) = value.as_sequence() else {
        return err("spec.lists", "expected a list of {name, type, values}");
    };
    for (i, l) in entries.iter().enumerate() {
        let at = format!("spec.lists[{i}]");
        let name = l.get("name").and_then(|v| v.as_str()).unwrap_or_default();
        if name.is_empty() {
            return err(format!("{at}.name"), "missing");
        }
        let ty = l.get("type").and_then(|v| v.as_str()).unwrap_or_default();
        // Tetragon's generated_syscalls is every syscall.
        if ty == "generated_syscalls" {
            lists.insert(name.to_string(), syscalls::all().collect());
            continue;
        }
        if ty != "syscalls" {
            return err(
                format!("{at}.type"),
                format!("`{ty}`: only lists of type syscalls and generated_syscalls are supported"),
            );
        }
        if let Some(k) = l.as_mapping().and_then(|m| {
            m.keys()
                .filter_map(|k| k.as_str())
                .find(|k| !matches!(*k, "name" | "type" | "values"))
        }) {
            return err(
                format!("{at}.{k}"),
                format!("`{k}` is not supported by this sensor"),
            );
        }
        let values = l.get("values").and_then(|v| v.as_sequence());
        let mut set = BTreeSet::new();
        for (j, v) in values.into_iter().flatten().enumerate() {
            let v = v.as_str().unwrap_or_default();
            // Tetragon's lists may name the ia32 entry points too; those
            // syscalls are not matched here (see the README).
            if v.starts_with("__ia32_") || v.starts_with("__arm64_") {
                continue;
            }
            match syscalls::number(v) {
                Some(nr) => set.insert(nr),
                None => {
                    return err(
                        format!("{at}.values[{j}]"),
                        format!("`{v}` is not an x86_64 syscall"),
                    )
                }
            };
        }
        lists.insert(name.to_string(), set);
    }
    Ok(lists)
}

/// `spec.enforcers`: Tetragon attaches its override programs to these
/// calls. Here a NotifyEnforcer's signal is sent from `sys_enter`, so the
/// calls need no program of their own; they must still name syscalls or
/// lists of the policy.
pub fn enforcers(value: Option<&serde_yaml::Value>, lists: &Lists) -> Result<()> {
    let Some(value) = value else {
        return Ok(());
    };
    let Some(entries) = value.as_sequence() else {
        return err("spec.enforcers", "expected a list of {calls}");
    };
    for (i, e) in entries.iter().enumerate() {
        let calls = e.get("calls").and_then(|c| c.as_sequence());
        for (j, c) in calls.into_iter().flatten().enumerate() {
            let c = c.as_str().unwrap_or_default();
            let known = match c.strip_prefix("list:") {
                Some(l) => lists.contains_key(l),
                None => syscalls::number(c).is_some(),
            };
            if !known {
                return err(
                    format!("spec.enforcers[{i}].calls[{j}]"),
                    format!("`{c}` is neither an x86_64 syscall nor a list of the policy"),
                );
            }
        }
    }
    Ok(())
}

/// A kprobe on syscall `nr`, or with `call: list:NAME` on each syscall of
/// a list: its arguments are the registers by index.
pub fn syscall_kprobe(k: RawKprobe, lists: &Lists, at: &str) -> Result<Hook> {
    let numbers: Vec<u32> = match k.call.strip_prefix("list:") {
        Some(name) => match lists.get(name) {
            Some(set) => set.iter().copied().collect(),
            None => {
                return err(
                    format!("{at}.call"),
                    format!("no list named `{name}` in spec.lists"),
                )
            }
        },
        None => match syscalls::number(&k.call) {
            Some(nr) => vec![nr],
            None => return err(format!("{at}.call"), "not an x86_64 syscall"),
        },
    };
    let return_type = match (k.return_ == Some(true), k.return_arg.as_ref()) {
        (false, None) => None,
        (true, Some(v)) => Some(return_type(v, &format!("{at}.returnArg"))?),
        (true, None) => {
            return err(
                format!("{at}.returnArg"),
                "return: true needs returnArg (its type, at index 0)",
            )
        }
        (false, Some(_)) => {
            return err(
                format!("{at}.returnArg"),
                "a syscall's return value is reported with return: true",
            )
        }
    };
    kprobe_extras(&k, at)?;
    super::parse::unsupported(
        &k.return_arg_action,
        format!("{at}.returnArgAction"),
        "returnArgAction",
    )?;
    let mut declared = Vec::new();
    for (i, a) in k.args.iter().enumerate() {
        let f = format!("{at}.args[{i}]");
        if a.index as usize >= SYSCALL_ARGS {
            return err(
                format!("{f}.index"),
                format!("a syscall has arguments 0 to {}", SYSCALL_ARGS - 1),
            );
        }
        let arg = sys_arg(a, a.index as u8, &f)?;
        if declared.iter().any(|(idx, _)| *idx == a.index) {
            return err(
                format!("{f}.index"),
                format!("argument {} is declared twice", a.index),
            );
        }
        declared.push((a.index, arg));
    }
    // A list's events name the syscall each record is of (see
    // `syscalls::LIST_CALL`).
    let function = match numbers.as_slice() {
        [nr] if !k.call.starts_with("list:") => {
            syscalls::function_name(*nr).unwrap_or_else(|| k.call.clone())
        }
        _ => syscalls::LIST_CALL.to_string(),
    };
    let point = HookPoint::Kprobe { function };
    let mut hook = finish(
        point,
        numbers,
        declared,
        k.selectors,
        k.message,
        k.tags,
        (lists, return_type),
        at,
    )?;
    hook.return_type = return_type;
    Ok(hook)
}

/// `returnArg` of a syscall: index 0, an integer type.
fn return_type(v: &serde_yaml::Value, at: &str) -> Result<IntType> {
    if !matches!(v.get("index").map(|i| i.as_u64()), None | Some(Some(0))) {
        return err(format!("{at}.index"), "the return value is index 0");
    }
    let name = v.get("type").and_then(|t| t.as_str()).unwrap_or("int");
    match IntType::parse(name) {
        Some(IntType::Syscall64) | None => err(
            format!("{at}.type"),
            format!("type `{name}` does not fit a syscall's return value; expected int, uint32, uint64, size_t or long"),
        ),
        Some(t) => Ok(t),
    }
}

/// `raw_syscalls/sys_enter` (argument 4 the number; 5, the argument
/// array, is not reported) or `syscalls/sys_enter_NAME` (argument 4 the
/// number, 5 on the syscall's arguments). A tracepoint's `matchArgs`
/// index is the argument's position in `args`, as in Tetragon.
pub fn syscall_tracepoint(t: RawTracepoint, lists: &Lists, at: &str) -> Result<Hook> {
    let numbers: Vec<u32> = if t.subsystem == "raw_syscalls" {
        (0..SYSCALL_NRS as u32).collect()
    } else {
        let nr = t
            .event
            .strip_prefix("sys_enter_")
            .and_then(syscalls::number);
        match nr {
            Some(nr) => vec![nr],
            None => {
                return err(
                    format!("{at}.event"),
                    format!(
                        "`{}`: expected sys_enter_NAME of an x86_64 syscall (sys_exit_* is not supported yet)",
                        t.event
                    ),
                )
            }
        }
    };
    let raw = t.subsystem == "raw_syscalls";
    let mut declared = Vec::new();
    for (i, a) in t.args.iter().enumerate() {
        let f = format!("{at}.args[{i}]");
        let arg = match a.index {
            4 => EventArg::Syscall(SysArg::Number, int_type(a, &f, true)?),
            n if !raw && (5..5 + SYSCALL_ARGS as u32).contains(&n) => {
                sys_arg(a, (n - 5) as u8, &f)?
            }
            n => {
                return err(
                    format!("{f}.index"),
                    if raw {
                        format!("argument {n} is not available; raw_syscalls/sys_enter exposes 4 (the syscall number)")
                    } else {
                        format!("argument {n} is not available; 4 is the syscall number, 5 to 10 its arguments")
                    },
                )
            }
        };
        declared.push((i as u32, arg));
    }
    let point = HookPoint::Tracepoint {
        subsystem: t.subsystem,
        event: t.event,
    };
    finish(
        point,
        numbers,
        declared,
        t.selectors,
        t.message,
        t.tags,
        (lists, None),
        at,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    point: HookPoint,
    syscalls: Vec<u32>,
    declared: Vec<(u32, EventArg)>,
    selectors: Vec<RawSelector>,
    message: Option<String>,
    tags: Vec<String>,
    (lists, ret): (&Lists, Option<IntType>),
    at: &str,
) -> Result<Hook> {
    hook_limits(selectors.len(), message.as_ref(), &tags, at)?;
    let mut parsed = Vec::new();
    for (i, s) in selectors.into_iter().enumerate() {
        parsed.push(selector(
            s,
            &declared,
            Some(lists),
            ret,
            &format!("{at}.selectors[{i}]"),
        )?);
    }
    if parsed.is_empty() {
        parsed.push(Selector::post_all());
    }
    Ok(Hook {
        field: at.to_string(),
        point,
        family: HookFamily::Syscall,
        binaries_of_new_image: false,
        args: declared.into_iter().map(|(_, a)| a).collect(),
        syscalls,
        return_arg: super::ReturnArg::None,
        return_type: None,
        net_ops: 0,
        selectors: parsed,
        message,
        tags,
    })
}

/// Syscall argument `reg` as its type says: copied from user memory
/// (`string`, `char_buf` sized by another argument) or an integer.
fn sys_arg(a: &RawArg, reg: u8, f: &str) -> Result<EventArg> {
    let read = match a.type_.as_deref() {
        Some("string") => UserRead::String,
        Some("fd") => UserRead::Fd,
        Some("char_buf") => {
            arg_options_but_size(a, f)?;
            let at = format!("{f}.sizeArgIndex");
            // Tetragon's sizeArgIndex counts from 1 (its docs warn of it).
            let size = match a.size_arg_index.as_ref() {
                None => return err(at, "a char_buf needs sizeArgIndex (the argument holding its size, counted from 1); returnCopy is not supported"),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok())),
            };
            match size {
                Some(n @ 1..=6) if n != reg as u64 + 1 => UserRead::Buffer {
                    size_reg: n as u8 - 1,
                },
                _ => return err(at, format!("expected the number (1 to {SYSCALL_ARGS}) of another argument of the syscall")),
            }
        }
        _ => return Ok(EventArg::Syscall(SysArg::Reg(reg), int_type(a, f, false)?)),
    };
    if matches!(read, UserRead::String | UserRead::Fd) {
        arg_options(a, f)?;
    }
    Ok(EventArg::SyscallUser { reg, read })
}

/// The type of an integer syscall argument; the user-memory types this
/// sensor does not copy are refused with the reason.
fn int_type(a: &RawArg, f: &str, number: bool) -> Result<IntType> {
    arg_options(a, f)?;
    let name = a.type_.as_deref().unwrap_or("auto");
    match IntType::parse(name) {
        Some(IntType::Syscall64) if !number => err(
            format!("{f}.type"),
            "syscall64 is the type of the syscall number (argument 4 of a syscall tracepoint)",
        ),
        Some(t) => Ok(t),
        None => err(
            format!("{f}.type"),
            match name {
                "string" | "char_buf" => format!("type `{name}` does not fit the syscall number"),
                "char_iovec" | "const_buf" | "filename" | "path" | "file" => format!("type `{name}` is not supported for syscalls; user memory is copied as string or char_buf, and the integer types are int, uint32, uint64, size_t, long, syscall64"),
                _ => format!("type `{name}` does not fit a syscall argument; expected int, uint32, uint64, size_t, long or syscall64"),
            },
        ),
    }
}
