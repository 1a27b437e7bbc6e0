//! Tears down the TCP and UDP sockets a pod holds when it is isolated.
//! Dropping their packets alone leaves both ends waiting for a timeout;
//! destroying the socket gives the process an error at once
//! (`ECONNABORTED`, also to a blocked `recv`) and sends a TCP peer a reset,
//! which the quarantine's egress filter lets out.
//!
//! The kernel destroys a socket on a `SOCK_DESTROY` request over
//! `NETLINK_SOCK_DIAG` (what `ss -K` sends; `CONFIG_INET_DIAG_DESTROY`,
//! which every Debian kernel from 5.10 on has). Sockets are found with the
//! same family's dump in the pod's network namespace, and only the ones a
//! process of the pod holds (by inode) are destroyed: a pod on the host's
//! network shares its namespace with others.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::procs;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`: ports, addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_msg`: family, state, timer, retrans, the sockid, then
/// expires, queues and uid; the inode closes it.
const MSG_INODE_AT: usize = 4 + SOCKID_LEN + 16;
const MSG_LEN: usize = MSG_INODE_AT + 4;
/// TCP states worth tearing down: everything with a peer. Listening sockets
/// stay (their pod gets no packets anyway), and time-wait and request
/// sockets have no process.
const TCP_STATES: u32 = (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);
/// UDP sockets are connected (`TCP_ESTABLISHED`) or not (`TCP_CLOSE`): both
/// go, so that a process waiting on one learns it is cut off.
const UDP_STATES: u32 = (1 << 1) | (1 << 7);
/// The protocols torn down, with the states of each.
const PROTOCOLS: [(u8, u32); 2] = [
    (libc::IPPROTO_TCP as u8, TCP_STATES),
    (libc::IPPROTO_UDP as u8, UDP_STATES),
];

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Teardown {
    pub destroyed: usize,
    /// Why some sockets stayed (the first error per namespace).
    pub errors: Vec<String>,
}

/// Destroys the TCP and UDP sockets held by processes under cgroup `dir`.
pub fn cut(dir: &Path) -> Teardown {
    // Sockets by network namespace: (ns device, ns inode) → a pid inside it
    // and the socket inodes the pod holds there.
    let mut by_ns: HashMap<(u64, u64), (u32, HashSet<u64>)> = HashMap::new();
    for pid in procs::in_cgroup(dir) {
        let inodes = procs::socket_inodes(pid);
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if inodes.is_empty() {
            continue;
        }
        by_ns
            .entry((ns.dev(), ns.ino()))
            .or_insert_with(|| (pid, HashSet::new()))
            .1
            .extend(inodes);
    }
    let mut done = Teardown::default();
    for (pid, inodes) in by_ns.into_values() {
        match in_namespace_of(pid, move || destroy(&inodes)) {
            Ok(t) => {
                done.destroyed += t.destroyed;
                let errors = t.errors.into_iter();
                done.errors
                    .extend(errors.map(|e| format!("pid {pid}'s namespace: {e}")));
            }
            Err(e) => done.errors.push(format!("pid {pid}'s namespace: {e}")),
        }
    }
    done
}

/// Runs `f` on a thread that has joined `pid`'s network namespace (a thread
/// of its own: `setns` moves only the caller, and the daemon's threads stay
/// where they are).
fn in_namespace_of<F, T>(pid: u32, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::Builder::new()
        .name("sensor-teardown".into())
        .spawn(move || {
            // SAFETY: setns(2) on a namespace fd this thread holds open.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("teardown thread panicked"))?
}

/// In the current namespace: destroys the TCP and UDP sockets whose inode
/// is in `inodes`. A protocol that fails (no diag module, say) does not
/// keep the others from going; its first error is in the answer.
fn destroy(inodes: &HashSet<u64>) -> io::Result<Teardown> {
    let nl = Netlink::open()?;
    let mut done = Teardown::default();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for (protocol, states) in PROTOCOLS {
            let which = Which {
                family,
                protocol,
                states,
            };
            let mut first_error = None;
            match nl.dump(which, inodes) {
                Ok(found) => {
                    for sockid in found {
                        match nl.destroy(which, &sockid) {
                            Ok(()) => done.destroyed += 1,
                            // Closed between the dump and now.
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                            Err(e) => {
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(e) => first_error = Some(e),
            }
            if let Some(e) = first_error {
                done.errors.push(explain(which, e));
            }
        }
    }
    Ok(done)
}

/// An error of a dump or destroy, with what it was about and what it means.
fn explain(which: Which, e: io::Error) -> String {
    let (what, module) = match which.protocol as i32 {
        libc::IPPROTO_TCP => ("TCP", "tcp_diag"),
        _ => ("UDP", "udp_diag"),
    };
    let family = if which.family == libc::AF_INET6 as u8 {
        "6"
    } else {
        "4"
    };
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => format!(
            "{what}{family}: this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)"
        ),
        Some(libc::ENOENT) => {
            format!("{what}{family}: no socket diagnostics for it (module {module} not loaded)")
        }
        _ => format!("{what}{family}: {e}"),
    }
}

/// The sockets a dump or a destroy is about.
#[derive(Clone, Copy)]
struct Which {
    family: u8,
    protocol: u8,
    states: u32,
}

/// A `NETLINK_SOCK_DIAG` socket.
struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(Netlink {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The sockids of the sockets `which` names whose inode is in `inodes`.
    fn dump(&self, which: Which, inodes: &HashSet<u64>) -> io::Result<Vec<[u8; SOCKID_LEN]>> {
        self.send(&request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            which,
            &[0; SOCKID_LEN],
        ))?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for (kind, body) in messages(&buf[..n]) {
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => return Err(error_of(body).unwrap_or_else(truncated)),
                    SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                        let inode = u32::from_ne_bytes(
                            body[MSG_INODE_AT..MSG_LEN].try_into().unwrap_or_default(),
                        );
                        if inodes.contains(&u64::from(inode)) {
                            let mut id = [0; SOCKID_LEN];
                            id.copy_from_slice(&body[4..4 + SOCKID_LEN]);
                            found.push(id);
                        }
                    }
                    _ => {}
                }
            }
            if n == 0 {
                return Err(truncated());
            }
        }
    }

    /// Destroys one socket, named by its sockid (cookie included, so a new
    /// socket on the same ports is never hit).
    fn destroy(&self, which: Which, sockid: &[u8; SOCKID_LEN]) -> io::Result<()> {
        let any_state = Which {
            states: u32::MAX,
            ..which
        };
        self.send(&request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            any_state,
            sockid,
        ))?;
        let mut buf = [0u8; 1024];
        let n = self.recv(&mut buf)?;
        let answer = messages(&buf[..n]).next();
        match answer {
            Some((NLMSG_ERROR, body)) => error_of(body).map_or(Ok(()), Err),
            _ => Err(truncated()),
        }
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: send(2) of a buffer we own; netlink to the kernel
        // (address zero is implied on an unbound, unconnected socket).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: recv(2) into a buffer we own, bounded by its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// A netlink message carrying an `inet_diag_req_v2`.
fn request(kind: u16, flags: u16, which: Which, sockid: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 8 + SOCKID_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    m.extend_from_slice(&[which.family, which.protocol, 0, 0]);
    m.extend_from_slice(&which.states.to_ne_bytes());
    m.extend_from_slice(sockid);
    m
}

/// The messages in one datagram: (type, body after the header).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, body))
    })
}

/// An `NLMSG_ERROR`'s error: `None` for the zero of an acknowledgement.
fn error_of(body: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(body.get(0..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

fn truncated() -> io::Error {
    io::Error::other("truncated netlink answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_has_the_kernel_layout() {
        let id = [7; SOCKID_LEN];
        let which = Which {
            family: 10,
            protocol: 6,
            states: 5,
        };
        let m = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, which, &id);
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 21);
        assert_eq!(&m[16..20], &[10, 6, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 5);
        assert_eq!(&m[24..], &id[..]);
    }

    #[test]
    fn messages_split_and_errors_read() {
        let mut buf = Vec::new();
        for (kind, body) in [
            (NLMSG_ERROR, (-libc::ENOENT).to_ne_bytes()),
            (NLMSG_DONE, [0; 4]),
        ] {
            buf.extend_from_slice(&20u32.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(&body);
        }
        let got: Vec<_> = messages(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            error_of(got[0].1).and_then(|e| e.raw_os_error()),
            Some(libc::ENOENT)
        );
        assert_eq!(got[1].0, NLMSG_DONE);
        assert!(error_of(&0i32.to_ne_bytes()).is_none());
        // A length past the datagram ends the walk instead of panicking.
        buf[0] = 200;
        assert_eq!(messages(&buf).count(), 0);
    }

    /// A UDP socket a thread waits on, destroyed by inode: the wait ends
    /// with ECONNABORTED, not at its timeout.
    #[test]
    fn a_waited_on_udp_socket_is_destroyed_by_inode() {
        use std::os::unix::fs::MetadataExt;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect("127.0.0.1:9").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd()))
            .unwrap()
            .ino();
        let waiter = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let got = sock.recv(&mut [0; 8]);
            (got.map_err(|e| e.raw_os_error()), started.elapsed())
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let t = match destroy(&HashSet::from([inode])) {
            Ok(t) => t,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("SKIP: destroying sockets needs CAP_NET_ADMIN: {e}");
                return;
            }
            Err(e) => panic!("destroy: {e}"),
        };
        assert_eq!((t.destroyed, t.errors), (1, Vec::<String>::new()));
        let (got, waited) = waiter.join().unwrap();
        assert_eq!(got, Err(Some(libc::ECONNABORTED)));
        assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    }

    /// A connection in this process's namespace, destroyed by inode: the
    /// holder gets ECONNABORTED and the peer a reset.
    #[test]
    fn a_held_connection_is_destroyed_by_inode() {
        use std::io::{Read, Write};
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd()))
            .unwrap()
            .ino();
        let n = match destroy(&HashSet::from([inode])) {
            Ok(t) => t.destroyed,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("SKIP: destroying sockets needs CAP_NET_ADMIN: {e}");
                return;
            }
            Err(e) => panic!("destroy: {e}"),
        };
        assert_eq!(n, 1, "only the client's socket");
        let err = client.write_all(b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        let mut b = [0; 1];
        let got = server.read(&mut b);
        assert_eq!(
            got.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "the peer is reset"
        );
    }
}
