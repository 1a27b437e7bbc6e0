//! Ring buffer records to typed values. Every length the kernel wrote is
//! checked against the record before it is trusted.
use sensor_common::{
    kind, ConnectEvent, ExecEvent, ExitEvent, ForkEvent, ImaDigest, PacketEvent, SyscallEvent,
    SyscallReturn, SYSCALL_ARGS,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Exec(ExecRecord),
    /// An exec hit decided in the BPF-LSM hook, before the exec (refused
    /// by Override, or posted with the binary's hash): the caller, and in
    /// `path` the binary it tried; the hash where a selector asked for it.
    ExecDenied(ExecRecord, Option<ImaHash>),
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

/// A binary's IMA hash.
#[derive(Debug, Clone, PartialEq)]
pub enum ImaHash {
    /// As Tetragon's `ima_hash` prints it: the algorithm, a colon, the
    /// digest in hex (`sha256:9f86…`).
    Digest(String),
    /// IMA gave none: its negative errno, or an algorithm not known here.
    Failed(i32),
}

/// The kernel's `enum hash_algo`, by value: its name and digest length.
const HASH_ALGOS: [(&str, usize); 20] = [
    ("md4", 16),
    ("md5", 16),
    ("sha1", 20),
    ("rmd160", 20),
    ("sha256", 32),
    ("sha384", 48),
    ("sha512", 64),
    ("sha224", 28),
    ("rmd128", 16),
    ("rmd256", 32),
    ("rmd320", 40),
    ("wp256", 32),
    ("wp384", 48),
    ("wp512", 64),
    ("tgr128", 16),
    ("tgr160", 20),
    ("tgr192", 24),
    ("sm3", 32),
    ("streebog256", 32),
    ("streebog512", 64),
];

impl ImaHash {
    fn of(d: &ImaDigest) -> ImaHash {
        let Some((name, len)) = usize::try_from(d.algo).ok().and_then(|a| HASH_ALGOS.get(a)) else {
            return ImaHash::Failed(d.algo);
        };
        let hex: String = d.digest[..*len]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ImaHash::Digest(format!("{name}:{hex}"))
    }
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
    #[error("a hashed exec record holds a record of kind {0}, not an exec decided before it ran")]
    Hashed(u32),
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
                Record::ExecDenied(r, None)
            })
        }
        kind::EXEC_HASHED => {
            let digest: ImaDigest = read(kind, bytes)?;
            let inner = &bytes[size_of::<ImaDigest>()..];
            match decode(inner)? {
                Record::ExecDenied(r, None) => {
                    Ok(Record::ExecDenied(r, Some(ImaHash::of(&digest))))
                }
                _ => Err(DecodeError::Hashed(read::<u32>(kind, inner)?)),
            }
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
        record_bytes(kind::EXEC, path, args, cwd, claim_extra)
    }

    fn record_bytes(k: u32, path: &[u8], args: &[u8], cwd: &[u8], claim_extra: u32) -> Vec<u8> {
        let h = ExecEvent {
            kind: k,
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

    fn hashed(algo: i32, inner: Vec<u8>) -> Vec<u8> {
        let mut v = kind::EXEC_HASHED.to_ne_bytes().to_vec();
        v.extend_from_slice(&algo.to_ne_bytes());
        v.extend((0..64u8).map(|i| i + 0xa0));
        v.extend(inner);
        v
    }

    #[test]
    fn a_hashed_exec_carries_the_digest_as_tetragon_prints_it() {
        let denied = record_bytes(kind::EXEC_DENIED, b"/tmp/nop", b"", b"", 0);
        let Record::ExecDenied(r, Some(ImaHash::Digest(h))) =
            decode(&hashed(4, denied.clone())).unwrap()
        else {
            panic!("not a hashed exec")
        };
        assert_eq!(r.path, "/tmp/nop");
        let hex: String = (0..32u8).map(|i| format!("{:02x}", i + 0xa0)).collect();
        assert_eq!(h, format!("sha256:{hex}"));
        let Ok(Record::ExecDenied(_, Some(ImaHash::Digest(h)))) =
            decode(&hashed(1, denied.clone()))
        else {
            panic!("md5")
        };
        assert_eq!(h.len(), "md5:".len() + 32);
        // IMA's refusal, and an algorithm beyond the table, carry no digest.
        for algo in [-95, 20] {
            assert_eq!(
                decode(&hashed(algo, denied.clone())),
                Ok(Record::ExecDenied(
                    match decode(&denied).unwrap() {
                        Record::ExecDenied(r, None) => r,
                        _ => unreachable!(),
                    },
                    Some(ImaHash::Failed(algo))
                ))
            );
        }
        // Only an exec decided before it ran is hashed.
        let exec = record_bytes(kind::EXEC, b"/tmp/nop", b"", b"", 0);
        assert_eq!(
            decode(&hashed(4, exec)),
            Err(DecodeError::Hashed(kind::EXEC))
        );
        assert!(matches!(
            decode(&hashed(4, Vec::new())),
            Err(DecodeError::Short { .. })
        ));
    }
}
