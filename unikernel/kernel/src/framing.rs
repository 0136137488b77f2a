//! The console's line framing, as the invoker reads it: `out| `/`err| ` tagged action lines,
//! untagged kernel lines, every console line at most [`MAX_LINE`] bytes.
//!
//! The action writes arbitrary bytes to its two streams; [`Framer`] cuts them into lines, each
//! emitted with its tag, and splits a line that would exceed the bound into several tagged lines.
//! A partial line is kept until its newline, [`Framer::flush`] or the bound.

use alloc::vec::Vec;

/// The longest console line, tag and newline included.
pub const MAX_LINE: usize = 16 * 1024;

/// One stream's framing state.
#[derive(Debug)]
pub struct Framer {
    tag: &'static [u8],
    pending: Vec<u8>,
}

impl Framer {
    /// A framer whose lines start with `tag` (e.g. `b"out| "`).
    pub fn new(tag: &'static [u8]) -> Self {
        Self {
            tag,
            pending: Vec::new(),
        }
    }

    /// The most payload bytes one console line carries.
    fn payload_max(&self) -> usize {
        MAX_LINE - self.tag.len() - 1
    }

    /// Takes `bytes`; every finished line goes to `emit` as one complete console line (tag,
    /// payload, `\n`).
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !bytes.is_empty() {
            let room = self.payload_max() - self.pending.len();
            match bytes.iter().take(room + 1).position(|&c| c == b'\n') {
                Some(i) => {
                    self.pending.extend_from_slice(&bytes[..i]);
                    self.emit_pending(emit);
                    bytes = &bytes[i + 1..];
                }
                None if bytes.len() > room => {
                    self.pending.extend_from_slice(&bytes[..room]);
                    self.emit_pending(emit);
                    bytes = &bytes[room..];
                }
                None => {
                    self.pending.extend_from_slice(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Ends a partial line, so that what follows on the console cannot be mistaken for its rest.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.pending.is_empty() {
            self.emit_pending(emit);
        }
    }

    fn emit_pending(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let mut line = Vec::with_capacity(self.tag.len() + self.pending.len() + 1);
        line.extend_from_slice(self.tag);
        line.append(&mut self.pending);
        line.push(b'\n');
        emit(&line);
    }
}

/// Kernel lines must not look like action lines: a message that starts with a tag gets a prefix.
pub fn is_tagged(line: &[u8]) -> bool {
    line.starts_with(b"out| ") || line.starts_with(b"err| ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut Framer, input: &[&[u8]], flush: bool) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for i in input {
            f.push(i, &mut |l| lines.push(l.to_vec()));
        }
        if flush {
            f.flush(&mut |l| lines.push(l.to_vec()));
        }
        lines
    }

    #[test]
    fn lines_are_tagged_and_joined_across_writes() {
        let mut f = Framer::new(b"out| ");
        let lines = run(&mut f, &[b"hel", b"lo\nwor", b"ld\n\n"], false);
        assert_eq!(
            lines,
            [
                b"out| hello\n".to_vec(),
                b"out| world\n".to_vec(),
                b"out| \n".to_vec()
            ]
        );
        assert!(run(&mut f, &[b"part"], false).is_empty());
        assert_eq!(run(&mut f, &[], true), [b"out| part\n".to_vec()]);
        assert!(run(&mut f, &[], true).is_empty());
    }

    #[test]
    fn long_lines_are_split_at_the_bound() {
        let mut f = Framer::new(b"err| ");
        let payload = MAX_LINE - 6;
        let mut input = vec![b'a'; payload * 2 + 10];
        input.push(b'\n');
        let lines = run(&mut f, &[&input], false);
        assert_eq!(lines.len(), 3);
        assert!(
            lines
                .iter()
                .all(|l| l.len() <= MAX_LINE && l.starts_with(b"err| "))
        );
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[2], [b"err| ".as_slice(), &[b'a'; 10], b"\n"].concat());
        // Exactly the bound: one line, no empty follower.
        let mut exact = vec![b'b'; payload];
        exact.push(b'\n');
        assert_eq!(run(&mut f, &[&exact], true).len(), 1);
    }

    #[test]
    fn tags() {
        assert!(is_tagged(b"out| x"));
        assert!(is_tagged(b"err| "));
        assert!(!is_tagged(b"uk: out| x"));
    }
}
