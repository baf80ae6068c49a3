//! Host-side file work inside a container's root, done with the container user's file-system
//! rights: a thread of its own whose fsuid/fsgid are the user's host ids. Setting a non-zero
//! fsuid drops CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER and the other file capabilities, so a
//! symlink a container user plants (say `/home/vcap/app -> /etc`) leads the backend only where
//! that user could write or read anyway.

use std::io;

/// Runs `work` on a new thread with file-system ids `uid`/`gid` and no supplementary groups.
pub fn run_as<T: Send + 'static>(
    uid: u32,
    gid: u32,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: setgroups/setfsgid/setfsuid as raw syscalls change only this thread's
        // credentials (glibc's wrappers would change every thread's for setgroups); the thread
        // ends when `work` returns, so nothing else ever runs with these ids.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
            if libc::syscall(libc::SYS_setfsuid, u32::MAX) != uid as libc::c_long {
                return Err(io::Error::other("setfsuid did not take"));
            }
        }
        Ok(work())
    })
    .join()
    .map_err(|_| io::Error::other("file worker thread panicked"))?
}
