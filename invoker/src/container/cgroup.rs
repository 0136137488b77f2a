//! Removing a container's or a VM's cgroup when the kernel still calls it busy, and saying
//! what holds it: shared by the runc and VM backends.

use std::path::Path;
use std::time::Duration;

/// Pauses between attempts to remove a cgroup the kernel calls busy: about 2 s in all. A
/// cgroup stays busy for a moment after `runc delete` while its last process is still exiting
/// (seen under load: 15 of 600 cgroups left on every v1 hierarchy by a burst of cold starts).
pub(crate) const CGROUP_BUSY_PAUSES: [Duration; 9] = [
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
    Duration::from_millis(500),
    Duration::from_millis(500),
    Duration::from_millis(500),
];

/// Runs `rmdir` until it succeeds or finds nothing, retrying on `EBUSY` after each of
/// `pauses` (`pause` waits); any other error, or `EBUSY` after the last pause, is the answer.
pub(crate) fn rmdir_retrying_busy(
    mut rmdir: impl FnMut() -> std::io::Result<()>,
    pauses: &[Duration],
    mut pause: impl FnMut(Duration),
) -> std::io::Result<()> {
    let mut pauses = pauses.iter();
    loop {
        match rmdir() {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => match pauses.next() {
                Some(&d) => pause(d),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// What keeps the cgroup `path` busy: each process in it (pid, name, state and, when frozen,
/// the freezer's state) and each child cgroup. For the error that reports it.
pub(crate) fn cgroup_holders(path: &Path) -> String {
    let mut out = Vec::new();
    let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace() {
        // `pid (comm) S ...`: the name and the state letter.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let (name, state) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
            .map_or(("?", "?"), |(name, rest)| {
                (name, rest.get(..1).unwrap_or("?"))
            });
        out.push(format!("process {pid} ({name}) state {state}"));
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(format!("child cgroup {}", e.file_name().to_string_lossy()));
            }
        }
    }
    if let Ok(freezer) = std::fs::read_to_string(path.join("freezer.state")) {
        out.push(format!("freezer {}", freezer.trim()));
    }
    if out.is_empty() {
        "nothing visible (no process, no child cgroup)".to_owned()
    } else {
        out.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> std::io::Error {
        std::io::Error::from_raw_os_error(nix::libc::EBUSY)
    }

    /// A cgroup busy for a moment is removed once it is free; one busy for longer than the
    /// bound, or failing otherwise, is the error; one already gone is not.
    #[test]
    fn a_busy_cgroup_is_retried_within_a_bound() {
        let pauses = [
            Duration::from_millis(1),
            Duration::from_millis(2),
            Duration::from_millis(3),
        ];
        let mut waited = Vec::new();
        let mut answers = vec![Err(busy()), Err(busy()), Ok(())].into_iter();
        rmdir_retrying_busy(|| answers.next().unwrap(), &pauses, |d| waited.push(d)).unwrap();
        assert_eq!(waited, pauses[..2]);
        waited.clear();
        let mut calls = 0;
        let e = rmdir_retrying_busy(
            || {
                calls += 1;
                Err(busy())
            },
            &pauses,
            |d| waited.push(d),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EBUSY));
        assert_eq!((calls, waited.len()), (4, 3), "one try, then one per pause");
        let gone = rmdir_retrying_busy(
            || Err(std::io::Error::from_raw_os_error(nix::libc::ENOENT)),
            &pauses,
            |_| panic!("no pause for a cgroup that is gone"),
        );
        assert!(gone.is_ok());
        let e = rmdir_retrying_busy(
            || Err(std::io::Error::from_raw_os_error(nix::libc::EACCES)),
            &pauses,
            |_| panic!("no pause for an error other than busy"),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EACCES));
        // The whole bound is about 2 s.
        let total: Duration = CGROUP_BUSY_PAUSES.iter().sum();
        assert!(total >= Duration::from_secs(2) && total < Duration::from_secs(3));
    }

    /// A cgroup still busy is reported with what holds it: its processes with their state, its
    /// child cgroups, a freezer's state.
    #[test]
    fn a_busy_cgroup_names_what_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        std::fs::write(dir.path().join("cgroup.procs"), format!("{me}\n")).unwrap();
        std::fs::write(dir.path().join("freezer.state"), "FROZEN\n").unwrap();
        std::fs::create_dir(dir.path().join("leftover")).unwrap();
        let holders = cgroup_holders(dir.path());
        assert!(holders.contains(&format!("process {me} (")), "{holders}");
        let state = holders
            .split(") state ")
            .nth(1)
            .and_then(|r| r.chars().next());
        assert!(state.is_some_and(|c| c.is_ascii_uppercase()), "{holders}");
        assert!(holders.contains("child cgroup leftover"), "{holders}");
        assert!(holders.contains("freezer FROZEN"), "{holders}");
        let empty = tempfile::tempdir().unwrap();
        assert!(cgroup_holders(empty.path()).starts_with("nothing visible"));
    }
}
