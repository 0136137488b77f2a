//! Watching a pause process for its exit without waiting on it: a pidfd (Linux ≥ 5.3), which
//! becomes readable when the process exits and cannot be confused with a later process that
//! reuses the pid.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A process, watched for its exit.
#[derive(Debug)]
pub(crate) enum Watch {
    /// A pidfd of the process.
    PidFd(OwnedFd),
    /// The kernel has no `pidfd_open` (before 5.3): the pid alone, asked with signal 0. A pid
    /// reused by a new process reads as alive; the release checks still catch that one.
    Pid(libc::pid_t),
}

impl Watch {
    /// Watches the process `pid`; an error if there is no such process.
    pub(crate) fn open(pid: u32) -> io::Result<Self> {
        let pid =
            libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
            // SAFETY: the kernel just returned this fd to us and nothing else owns it.
            return Ok(Self::PidFd(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        let watch = Self::Pid(pid);
        if watch.exited() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(watch)
    }

    /// Whether the process has exited. Never blocks: a poll with a zero timeout, or a signal 0.
    pub(crate) fn exited(&self) -> bool {
        match self {
            Self::PidFd(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the length given; a zero timeout never blocks.
                let ready = unsafe { libc::poll(&raw mut pfd, 1, 0) };
                // A failed poll (only EINTR or ENOMEM here) says nothing about the process.
                ready > 0
            }
            Self::Pid(pid) => {
                // SAFETY: signal 0 only checks that the process exists and may be signalled.
                let sent = unsafe { libc::kill(*pid, 0) };
                sent == -1 && errno() == libc::ESRCH
            }
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_reads_alive_until_it_exits_and_a_missing_pid_cannot_be_watched() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let watch = Watch::open(child.id()).unwrap();
        assert!(matches!(watch, Watch::PidFd(_)), "{watch:?}");
        assert!(!watch.exited());
        child.kill().unwrap();
        // Reaped: the exit happened before wait returned.
        child.wait().unwrap();
        assert!(watch.exited());
        let gone = Watch::open(child.id());
        assert!(gone.is_err(), "{gone:?}");
    }
}
