//! The backend's side of the channel to a container's `kiln-init` (see `init/init.c`): a
//! SOCK_SEQPACKET socketpair whose other end is init's stdin.
//!
//! Starting a process this way is a fork and exec inside the container, with the process's
//! stdio passed as fds; `runc exec` would re-enter every namespace and rebuild the seccomp
//! filter each time (tens of milliseconds). The process inherits init's seccomp filter,
//! `no_new_privs` and capability bounding set, so it is confined exactly as a `runc exec`'d one.
//! Everything init sends is treated as untrusted input.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// The largest request init reads (its buffer is 256 KiB; the socket's send buffer is smaller).
const MAX_REQUEST: usize = 192 * 1024;
/// How long init may take to answer a request or to make room for one.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What init answers to a `run`.
#[derive(Debug)]
pub enum Started {
    Running {
        pid: i32,
    },
    /// The process could not be started; `what` names the step (fork, exec, ...).
    Failed {
        errno: i32,
        what: String,
    },
}

#[derive(Debug, Default)]
struct Pending {
    started: HashMap<String, oneshot::Sender<Started>>,
    exited: HashMap<String, oneshot::Sender<i32>>,
}

/// One container's channel to its init.
#[derive(Debug)]
pub struct InitChannel {
    socket: AsyncFd<OwnedFd>,
    pending: Mutex<Pending>,
}

/// A process request.
#[derive(Debug)]
pub struct RunRequest<'a> {
    pub id: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub cwd: &'a str,
    pub args: &'a [String],
    pub env: &'a [String],
    /// (resource number, soft, hard)
    pub rlimits: &'a [(i32, u64, u64)],
}

/// A socketpair: the backend's end and the end to give init as its stdin.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl InitChannel {
    /// Wraps the backend's end and starts reading init's replies. Must be called in a tokio
    /// runtime.
    pub fn start(fd: OwnedFd) -> io::Result<Arc<InitChannel>> {
        set_nonblocking(&fd)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it for its whole life, so
        // the fd stays open and refers to the same socket.
        let socket = unsafe { AsyncFd::register(fd) }?;
        let channel = Arc::new(InitChannel {
            socket,
            pending: Mutex::new(Pending::default()),
        });
        // The reader keeps the channel alive as long as init keeps its end open: the channel
        // ends when the container does.
        let reader = channel.clone();
        tokio::spawn(async move { while reader.read_one().await {} });
        Ok(channel)
    }

    /// Asks init to start a process with `stdio` (stdin, stdout, stderr) and returns what it
    /// answers, and a receiver of the process's wait status.
    pub async fn run(
        &self,
        req: &RunRequest<'_>,
        stdio: [&OwnedFd; 3],
    ) -> io::Result<(Started, oneshot::Receiver<i32>)> {
        let mut fields: Vec<String> = vec![
            "run".into(),
            req.id.into(),
            req.uid.to_string(),
            req.gid.to_string(),
            req.cwd.into(),
            req.args.len().to_string(),
        ];
        fields.extend(req.args.iter().cloned());
        fields.push(req.env.len().to_string());
        fields.extend(req.env.iter().cloned());
        fields.push(req.rlimits.len().to_string());
        for (res, soft, hard) in req.rlimits {
            fields.extend([res.to_string(), soft.to_string(), hard.to_string()]);
        }
        if fields.iter().any(|f| f.contains('\0')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "arguments and environment may not contain NUL",
            ));
        }
        let payload = encode(&fields);
        if payload.len() > MAX_REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "arguments and environment take {} bytes, over the {MAX_REQUEST} a process may be given",
                    payload.len()
                ),
            ));
        }
        let (started_tx, started_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        {
            let mut pending = self.lock();
            pending.started.insert(req.id.to_string(), started_tx);
            pending.exited.insert(req.id.to_string(), exited_tx);
        }
        let fds = [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ];
        if let Err(e) = self.send(&payload, &fds).await {
            let mut pending = self.lock();
            pending.started.remove(req.id);
            pending.exited.remove(req.id);
            return Err(e);
        }
        let started = started_rx.await.map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the container's init went away")
        })?;
        Ok((started, exited_rx))
    }

    /// Asks init to send `signal` to process `id`.
    pub async fn kill(&self, id: &str, signal: i32) -> io::Result<()> {
        let fields = ["kill".to_string(), id.to_string(), signal.to_string()];
        self.send(&encode(&fields), &[]).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        tokio::time::timeout(REPLY_TIMEOUT, self.send_now(payload, fds))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the container's init is not reading",
                )
            })?
    }

    async fn send_now(&self, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            let mut guard = self.socket.writable().await?;
            match guard.try_io(|s| sendmsg(s.get_ref().as_raw_fd(), payload, fds)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads and dispatches one reply; false when the channel is closed.
    async fn read_one(&self) -> bool {
        let mut buf = vec![0u8; 4096];
        let len = loop {
            let Ok(mut guard) = self.socket.readable().await else {
                return self.closed();
            };
            match guard.try_io(|s| {
                // SAFETY: `buf` is valid for `buf.len()` bytes for the duration of the call.
                let n = unsafe {
                    libc::recv(
                        s.get_ref().as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => break n,
                Ok(Err(_)) => return self.closed(),
                Err(_would_block) => continue,
            }
        };
        if len == 0 {
            return self.closed();
        }
        let fields: Vec<String> = buf[..len]
            .split(|b| *b == 0)
            .map(|f| String::from_utf8_lossy(f).to_string())
            .collect();
        let field = |i: usize| fields.get(i).map(String::as_str).unwrap_or("");
        let number = |i: usize| field(i).parse::<i64>().unwrap_or(-1);
        let id = field(1).to_string();
        let mut pending = self.lock();
        match field(0) {
            "started" => {
                if let Some(tx) = pending.started.remove(&id) {
                    let _ = tx.send(Started::Running {
                        pid: number(2) as i32,
                    });
                }
            }
            "failed" => {
                pending.exited.remove(&id);
                if let Some(tx) = pending.started.remove(&id) {
                    let _ = tx.send(Started::Failed {
                        errno: number(2) as i32,
                        what: field(3).to_string(),
                    });
                }
            }
            "exited" => {
                if let Some(tx) = pending.exited.remove(&id) {
                    let _ = tx.send(number(2) as i32);
                }
            }
            _ => {} // unknown or garbled: ignored
        }
        true
    }

    /// Init is gone (the container stopped): its processes were killed with it.
    fn closed(&self) -> bool {
        let mut pending = self.lock();
        pending.started.clear();
        for (_, tx) in pending.exited.drain() {
            let _ = tx.send(libc::SIGKILL);
        }
        false
    }
}

fn encode(fields: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out
}

fn sendmsg(socket: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr is a valid starting value; every pointer set below points into
    // buffers (`iov`, `control`) that outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `space` bytes, enough for one header with the fds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                std::mem::size_of_val(fds),
            );
        }
    }
    // SAFETY: `msg` is fully initialised above.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else if n as usize != payload.len() {
        Err(io::Error::other("short write to the container's init"))
    } else {
        Ok(())
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
