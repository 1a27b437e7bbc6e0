//! Ring buffer records to typed values. Every length the kernel wrote is
//! checked against the record before it is trusted.
use sensor_common::{
    kind, ConnectEvent, ExecEvent, ExitEvent, ForkEvent, PacketEvent, SyscallEvent, SyscallReturn,
    SYSCALL_ARGS,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Exec(ExecRecord),
    /// An exec refused by Override (BPF-LSM): the caller, and in `path`
    /// the binary it was refused.
    ExecDenied(ExecRecord),
    Fork(ForkEvent),
    Exit(ExitEvent),
    Connect(ConnectEvent),
    /// A packet a packet hook matched, with its socket.
    Packet(PacketEvent),
    Syscall(SyscallRecord),
    /// The return of a syscall whose hooks wait for it.
    SyscallReturn(SyscallReturn),
}

/// A syscall record: the header and the arguments copied from user memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SyscallRecord {
    pub header: SyscallEvent,
    /// Per argument, the bytes copied (a string with its NUL), if any.
    pub user: [Option<Vec<u8>>; SYSCALL_ARGS],
    /// The syscall's return value, once its return record came.
    pub ret: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecRecord {
    pub header: ExecEvent,
    pub path: String,
    /// argv, argv\[0\] included.
    pub args: Vec<String>,
    pub cwd: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("syscall record's copies ({want} bytes) exceed its {len} data bytes")]
    SyscallLengths { want: usize, len: usize },
    #[error("exec record lengths ({path}+{args}+{cwd}) exceed its {len} data bytes")]
    Lengths {
        path: usize,
        args: usize,
        cwd: usize,
        len: usize,
    },
}

/// Reads a plain-data `T` from the front of `bytes`.
fn read<T: Copy>(kind: u32, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
        });
    }
    // SAFETY: the length is checked, and T is one of the #[repr(C)] integer-only
    // records of sensor-common, for which every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let kind = read::<u32>(0, bytes)?;
    match kind {
        kind::EXEC | kind::EXEC_DENIED => {
            let header: ExecEvent = read(kind, bytes)?;
            let data = &bytes[size_of::<ExecEvent>()..];
            let (p, a, c) = (
                header.path_len as usize,
                header.args_len as usize,
                header.cwd_len as usize,
            );
            if p + a + c > data.len() {
                return Err(DecodeError::Lengths {
                    path: p,
                    args: a,
                    cwd: c,
                    len: data.len(),
                });
            }
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let args = data[p..p + a]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(text)
                .collect();
            let r = ExecRecord {
                header,
                path: text(&data[..p]),
                args,
                cwd: text(&data[p + a..p + a + c]),
            };
            Ok(if kind == kind::EXEC {
                Record::Exec(r)
            } else {
                Record::ExecDenied(r)
            })
        }
        kind::FORK => Ok(Record::Fork(read(kind, bytes)?)),
        kind::EXIT => Ok(Record::Exit(read(kind, bytes)?)),
        kind::CONNECT => Ok(Record::Connect(read(kind, bytes)?)),
        kind::PACKET => Ok(Record::Packet(read(kind, bytes)?)),
        kind::SYSCALL => {
            let header: SyscallEvent = read(kind, bytes)?;
            let data = &bytes[size_of::<SyscallEvent>()..];
            let want: usize = (0..SYSCALL_ARGS)
                .filter(|i| header.read & (1 << i) != 0)
                .map(|i| header.lens[i] as usize)
                .sum();
            if want > data.len() {
                return Err(DecodeError::SyscallLengths {
                    want,
                    len: data.len(),
                });
            }
            let mut at = 0;
            let user = std::array::from_fn(|i| {
                (header.read & (1 << i) != 0).then(|| {
                    let n = header.lens[i] as usize;
                    at += n;
                    data[at - n..at].to_vec()
                })
            });
            Ok(Record::Syscall(SyscallRecord {
                header,
                user,
                ret: None,
            }))
        }
        kind::SYSCALL_RETURN => Ok(Record::SyscallReturn(read(kind, bytes)?)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_bytes(path: &[u8], args: &[u8], cwd: &[u8], claim_extra: u32) -> Vec<u8> {
        let h = ExecEvent {
            kind: kind::EXEC,
            pid: 7,
            tid: 7,
            ppid: 1,
            uid: 0,
            gid: 0,
            ktime: 5,
            cgroup_id: 9,
            hits: 0,
            signal: 0,
            flags: 0,
            path_len: path.len() as u32,
            args_len: args.len() as u32 + claim_extra,
            cwd_len: cwd.len() as u32,
            comm: [0; 16],
            auid: 0,
            creds: Default::default(),
            ns: Default::default(),
            nspid: 0,
            _pad: 0,
            binary: Default::default(),
        };
        // SAFETY: viewing a repr(C) value as bytes.
        let mut v = unsafe {
            std::slice::from_raw_parts(
                (&h as *const ExecEvent).cast::<u8>(),
                size_of::<ExecEvent>(),
            )
        }
        .to_vec();
        v.extend_from_slice(path);
        v.extend_from_slice(args);
        v.extend_from_slice(cwd);
        v
    }

    #[test]
    fn exec_record_splits_path_args_and_cwd() {
        let b = exec_bytes(b"/bin/echo", b"echo\0a b\0c\0", b"/tmp", 0);
        let Record::Exec(e) = decode(&b).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.path, "/bin/echo");
        assert_eq!(e.args, vec!["echo", "a b", "c"]);
        assert_eq!(e.cwd, "/tmp");
        assert_eq!(e.header.pid, 7);
    }

    #[test]
    fn lying_lengths_and_short_records_are_errors() {
        let b = exec_bytes(b"/bin/echo", b"x\0", b"/", 100);
        assert!(matches!(decode(&b), Err(DecodeError::Lengths { .. })));
        assert_eq!(
            decode(&[2, 0, 0, 0]),
            Err(DecodeError::Short { kind: 2, len: 4 })
        );
        assert_eq!(decode(&[77, 0, 0, 0]), Err(DecodeError::UnknownKind(77)));
        assert!(matches!(decode(&[1]), Err(DecodeError::Short { .. })));
    }
}
