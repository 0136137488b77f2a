//! The proxy's stdout and stderr, multiplexed line by line onto the one serial console.
//!
//! The host reads the console as the action's log and needs to know which stream each line
//! came from (activation logs record it, and the sentinel must be seen on both), so every line
//! the proxy writes goes out as one `write(2)` of a tag and the line:
//!
//! ```text
//! out| <a line the proxy wrote on stdout>
//! err| <a line the proxy wrote on stderr>
//! ```
//!
//! Every other console line is the kernel's (`[    1.234567] …`) or this init's
//! (`guest-init: …`). A line longer than [`MAX_LINE`] bytes is cut into several tagged lines,
//! as Docker's `json-file` log cuts at 16 KiB, so one endless line cannot hold the log back;
//! a last line without a newline is sent when its stream ends.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::Arc;

use parking_lot::Mutex;

/// The longest line sent in one piece.
pub const MAX_LINE: usize = 16 * 1024;

/// The console tag of stdout lines.
pub const STDOUT_TAG: &[u8] = b"out| ";
/// The console tag of stderr lines.
pub const STDERR_TAG: &[u8] = b"err| ";

/// Cuts a byte stream into tagged console lines.
#[derive(Debug)]
pub struct Framer {
    tag: &'static [u8],
    pending: Vec<u8>,
}

impl Framer {
    pub fn new(tag: &'static [u8]) -> Self {
        Self {
            tag,
            pending: Vec::new(),
        }
    }

    /// The tagged lines that `bytes` completes, each ending in `\n`.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(self.take());
            } else {
                self.pending.push(b);
                if self.pending.len() == MAX_LINE {
                    lines.push(self.take());
                }
            }
        }
        lines
    }

    /// The unterminated rest, if any, when the stream has ended.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.tag.len() + self.pending.len() + 1);
        line.extend_from_slice(self.tag);
        line.append(&mut self.pending);
        line.push(b'\n');
        line
    }
}

/// The serial console, shared by the stream copiers so that lines never interleave.
pub type Console = Arc<Mutex<File>>;

/// Copies `from` to the console as tagged lines until it ends.
pub fn copy(mut from: impl Read, tag: &'static [u8], console: &Console) {
    let mut framer = Framer::new(tag);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for line in framer.push(&buf[..n]) {
            write_line(console, &line);
        }
    }
    if let Some(line) = framer.finish() {
        write_line(console, &line);
    }
}

/// Writes one whole line; a console that fails to take it loses it (there is nowhere else
/// to report that).
pub fn write_line(console: &Console, line: &[u8]) {
    let _ = console.lock().write_all(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged_across_reads() {
        let mut f = Framer::new(STDOUT_TAG);
        assert!(f.push(b"hel").is_empty());
        assert_eq!(f.push(b"lo\nwor"), [b"out| hello\n".to_vec()]);
        assert_eq!(
            f.push(b"ld\n\n"),
            [b"out| world\n".to_vec(), b"out| \n".to_vec()]
        );
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn an_unterminated_last_line_is_sent_at_the_end() {
        let mut f = Framer::new(STDERR_TAG);
        assert!(f.push(b"no newline").is_empty());
        assert_eq!(f.finish(), Some(b"err| no newline\n".to_vec()));
    }

    #[test]
    fn long_lines_are_cut() {
        let mut f = Framer::new(STDOUT_TAG);
        let lines = f.push(&vec![b'x'; 2 * MAX_LINE + 3]);
        assert_eq!(lines.len(), 2);
        assert!(
            lines
                .iter()
                .all(|l| l.len() == STDOUT_TAG.len() + MAX_LINE + 1)
        );
        assert_eq!(f.finish(), Some(b"out| xxx\n".to_vec()));
    }

    #[test]
    fn copy_writes_whole_lines_to_the_console() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let console: Console = Arc::new(Mutex::new(file.reopen().unwrap()));
        copy(&b"a\nb"[..], STDERR_TAG, &console);
        assert_eq!(std::fs::read(file.path()).unwrap(), b"err| a\nerr| b\n");
    }
}
