//! Which TCP ports listen in a network namespace, asked of the kernel over a `sock_diag`
//! netlink socket made in that namespace: what a TCP connection to the port from outside
//! would find (the kernel's own lookup of the listener for it: on the wildcard address or the
//! given one, IPv4 or dual-stack IPv6), and whether its accept queue has room, without a packet
//! sent. A cell's port health check of an instance is one such question (one netlink request
//! and its answer) instead of a connection through the veth, the host's firewall chains and
//! conntrack: seven packets, and at 50 instances most of an idle cell's CPU.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` (linux/tcp_states.h).
const TCP_LISTEN: u32 = 10;
/// Bytes of `struct nlmsghdr`.
const HEADER: usize = 16;
/// Bytes of `struct inet_diag_msg` up to and with `idiag_wqueue`.
const MESSAGE_UP_TO_WQUEUE: usize = 4 + 48 + 4 + 4 + 4;
/// Room for the kernel's answers (one `struct inet_diag_msg` with its attributes, or an error
/// with the request it answers).
const ANSWER_BYTES: usize = 8 << 10;

/// A netlink `sock_diag` socket in one network namespace.
#[derive(Debug)]
pub struct Listeners {
    socket: OwnedFd,
    /// The namespace's own address: listeners bound to it count, as do wildcard ones.
    address: Ipv4Addr,
    /// Held by one question at a time (two at once on the socket would read each other's
    /// answers).
    asking: Mutex<Asking>,
}

/// What a question needs of its own.
#[derive(Debug)]
struct Asking {
    /// Room for answers.
    answers: Vec<u8>,
    /// The last request's number: its answer carries it.
    sequence: u32,
}

/// What a request asks of the kernel.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// The listener a connection would reach (a lookup).
    Listener,
    /// No socket at all (a dump of no state), to see that it answers.
    Nothing,
}

impl Listeners {
    /// A socket in the calling thread's network namespace; `address` is the namespace's own
    /// address, to which connections would come. An error where the kernel cannot answer
    /// questions about TCP sockets (the caller then connects instead).
    pub fn here(address: Ipv4Addr) -> io::Result<Listeners> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just made and is owned by nobody else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let listeners = Listeners {
            socket,
            address,
            asking: Mutex::new(Asking {
                answers: vec![0; ANSWER_BYTES],
                sequence: 0,
            }),
        };
        // Whether the kernel has the handlers is the same in every namespace: asked until it
        // said yes once, not at every instance's start.
        static ANSWERS: AtomicBool = AtomicBool::new(false);
        if !ANSWERS.load(Ordering::Relaxed) {
            listeners.check_answers()?;
            ANSWERS.store(true, Ordering::Relaxed);
        }
        Ok(listeners)
    }

    /// A socket in the network namespace of process `pid` (made on a thread of its own that
    /// enters the namespace and ends).
    pub fn of_process(pid: u32, address: Ipv4Addr) -> io::Result<Listeners> {
        let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        std::thread::scope(|scope| {
            let made = scope.spawn(|| {
                // SAFETY: setns(2) on this thread alone, with an open namespace file; the
                // thread ends right after, so no other work runs in that namespace.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Listeners::here(address)
            });
            made.join()
                .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        })
    }

    /// Whether a TCP connection to `port` at the namespace's address would be accepted now:
    /// a socket listens on it (on that address or the wildcard, IPv4 or dual-stack IPv6) with
    /// room in its accept queue. The kernel finds the listener with the lookup an incoming
    /// connection gets: one request and one answer, however many sockets the host has.
    pub fn accepts(&self, port: u16) -> io::Result<bool> {
        self.ask(port, Ask::Listener, |kind, body| {
            Some(match i32::from(kind) {
                libc::NLMSG_ERROR => match error_of(body) {
                    // No socket a connection would reach.
                    libc::ENOENT => Ok(false),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                },
                _ if kind == SOCK_DIAG_BY_FAMILY => Ok(listening(body, port)),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("sock_diag answered with message type {kind}"),
                )),
            })
        })
    }

    /// Whether the kernel answers questions about TCP sockets here: a dump of no socket (no
    /// state asked for) ends with `NLMSG_DONE` where it does, and with an error where it does
    /// not (no `inet_diag` or `tcp_diag`), which a lookup would give as ENOENT, as for a port
    /// nobody listens on.
    fn check_answers(&self) -> io::Result<()> {
        self.ask(0, Ask::Nothing, |kind, body| match i32::from(kind) {
            libc::NLMSG_DONE => Some(match body.get(..4) {
                Some(b) if i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) != 0 => {
                    Err(io::Error::from_raw_os_error(error_of(body)))
                }
                _ => Ok(()),
            }),
            libc::NLMSG_ERROR => Some(Err(io::Error::from_raw_os_error(error_of(body)))),
            _ => None,
        })
    }

    /// Sends `ask` about `port` and gives each message of its answer (type, body) to `take`
    /// until that returns the outcome. The kernel answers while taking the request: the answer
    /// is there to read. Answers to earlier requests left unread (one failed halfway) are
    /// passed over.
    fn ask<T>(
        &self,
        port: u16,
        ask: Ask,
        mut take: impl FnMut(u16, &[u8]) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        let mut asking = self.asking.lock().unwrap_or_else(PoisonError::into_inner);
        let Asking { answers, sequence } = &mut *asking;
        *sequence = sequence.wrapping_add(1);
        self.send(*sequence, port, ask)?;
        loop {
            let Some(n) = self.read(answers)? else {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from sock_diag",
                ));
            };
            let mut at = &answers[..n];
            while at.len() >= HEADER {
                let len = u32::from_ne_bytes([at[0], at[1], at[2], at[3]]) as usize;
                let kind = u16::from_ne_bytes([at[4], at[5]]);
                let seq = u32::from_ne_bytes([at[8], at[9], at[10], at[11]]);
                if len < HEADER || len > at.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a truncated sock_diag answer",
                    ));
                }
                if seq == *sequence {
                    if let Some(outcome) = take(kind, &at[HEADER..len]) {
                        return outcome;
                    }
                }
                // Messages are 4-byte aligned.
                at = &at[((len + 3) & !3).min(at.len())..];
            }
        }
    }

    /// Sends `ask`: for the TCP socket a connection to `port` at the namespace's address would
    /// reach, or for nothing.
    fn send(&self, sequence: u32, port: u16, ask: Ask) -> io::Result<()> {
        let mut request = [0u8; HEADER + 56];
        let len = request.len() as u32;
        request[0..4].copy_from_slice(&len.to_ne_bytes());
        request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        // A lookup is no dump: the one socket the kernel's lookup finds, or ENOENT.
        let (flags, states) = match ask {
            Ask::Listener => (libc::NLM_F_REQUEST, 1u32 << TCP_LISTEN),
            Ask::Nothing => (libc::NLM_F_REQUEST | libc::NLM_F_DUMP, 0),
        };
        request[6..8].copy_from_slice(&(flags as u16).to_ne_bytes());
        request[8..12].copy_from_slice(&sequence.to_ne_bytes());
        // struct inet_diag_req_v2: family, protocol, ext, pad, states, then the socket id:
        // source port and address (where the connection goes: the socket's own end),
        // destination port and address (unset: from anywhere), interface, cookie (none).
        let id = HEADER + 8;
        request[HEADER] = libc::AF_INET as u8;
        request[HEADER + 1] = libc::IPPROTO_TCP as u8;
        request[HEADER + 4..id].copy_from_slice(&states.to_ne_bytes());
        request[id..id + 2].copy_from_slice(&port.to_be_bytes());
        request[id + 4..id + 8].copy_from_slice(&self.address.octets());
        request[id + 40..id + 48].fill(0xff);
        // SAFETY: a zeroed sockaddr_nl with its family set addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                std::ptr::from_ref(&kernel).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One read of what the kernel has for this socket, without waiting: `None` when there
    /// is nothing.
    fn read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }
}

/// The errno of a netlink error message's body (a negative errno first), `EIO` if unclear.
fn error_of(body: &[u8]) -> i32 {
    body.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .and_then(i32::checked_neg)
        .filter(|errno| *errno > 0)
        .unwrap_or(libc::EIO)
}

/// Whether one `struct inet_diag_msg` is a listener on `port` with room in its accept queue.
fn listening(message: &[u8], port: u16) -> bool {
    if message.len() < MESSAGE_UP_TO_WQUEUE {
        return false;
    }
    let state = u32::from(message[1]);
    let source_port = u16::from_be_bytes([message[4], message[5]]);
    let number = |at: usize| {
        u32::from_ne_bytes([
            message[at],
            message[at + 1],
            message[at + 2],
            message[at + 3],
        ])
    };
    // For a listener: connections waiting to be accepted, and the most it holds.
    let (waiting, most) = (number(56), number(60));
    state == TCP_LISTEN && source_port == port && waiting <= most
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn a_port_is_accepted_while_it_listens_on_the_address_or_the_wildcard() {
        let here = Listeners::here(Ipv4Addr::LOCALHOST).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(here.accepts(port).unwrap());
        drop(listener);
        assert!(!here.accepts(port).unwrap());

        // On another address only: a connection to this one would be refused.
        let elsewhere = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = elsewhere.local_addr().unwrap().port();
        assert!(!here.accepts(port).unwrap());
        let on_it = Listeners::here(Ipv4Addr::new(127, 0, 0, 2)).unwrap();
        assert!(on_it.accepts(port).unwrap());

        let wildcard = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = wildcard.local_addr().unwrap().port();
        assert!(here.accepts(port).unwrap());
        assert!(on_it.accepts(port).unwrap());
        drop(wildcard);

        // A dual-stack listener takes IPv4 connections too.
        if let Ok(v6) = TcpListener::bind("[::]:0") {
            let port = v6.local_addr().unwrap().port();
            assert!(here.accepts(port).unwrap());
        }

        // An IPv6-only one does not.
        if let Some((v6only, port)) = v6_only_listener() {
            assert!(!here.accepts(port).unwrap(), "an IPv6-only listener");
            drop(v6only);
        }

        // An answer left unread by an earlier question is passed over: the one read is to
        // this question.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        here.send(u32::MAX, port, Ask::Listener).unwrap();
        drop(listener);
        assert!(!here.accepts(port).unwrap(), "the earlier answer was read");
        let unanswered = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        here.send(u32::MAX, unanswered.port(), Ask::Listener)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(here.accepts(listener.local_addr().unwrap().port()).unwrap());

        // A connected socket on that port is no listener.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_served, _) = listener.accept().unwrap();
        drop(listener);
        assert!(!here.accepts(port).unwrap());
    }

    /// A listener on `[::]` taking IPv6 alone, and its port (`None` without IPv6 here).
    fn v6_only_listener() -> Option<(OwnedFd, u16)> {
        // SAFETY: plain socket calls on a socket made here, with valid buffers and lengths.
        unsafe {
            let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let on: libc::c_int = 1;
            let set = libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                std::ptr::from_ref(&on).cast(),
                size_of::<libc::c_int>() as u32,
            );
            assert_eq!(set, 0, "IPV6_V6ONLY");
            let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
            addr.sin6_family = libc::AF_INET6 as u16;
            let len = size_of::<libc::sockaddr_in6>() as u32;
            let at = std::ptr::from_mut(&mut addr).cast();
            if libc::bind(fd.as_raw_fd(), at, len) != 0 || libc::listen(fd.as_raw_fd(), 8) != 0 {
                return None;
            }
            let mut len = len;
            assert_eq!(libc::getsockname(fd.as_raw_fd(), at, &mut len), 0);
            Some((fd, u16::from_be(addr.sin6_port)))
        }
    }
}
