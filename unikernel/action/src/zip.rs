//! A small reader of zip archives: the central directory, stored and deflate entries.
//!
//! `wsk action create f f.zip --kind wasm:0.1` sends the archive as it is, so the module has to
//! be found inside it. Only what such archives use is supported: one disk, no zip64, no
//! encryption. Every offset and size read from the archive is checked, so a malformed archive is
//! an error, never a panic.

use alloc::string::String;
use alloc::vec::Vec;

const EOCD_SIGNATURE: u32 = 0x0605_4b50;
const CENTRAL_SIGNATURE: u32 = 0x0201_4b50;
const LOCAL_SIGNATURE: u32 = 0x0403_4b50;
const EOCD_LEN: usize = 22;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
/// The end-of-central-directory record may be followed by a comment of at most this many bytes.
const MAX_COMMENT: usize = 0xffff;

/// Why an archive could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    #[error("no end of central directory record: not a zip archive")]
    NotZip,
    #[error("the archive spans several disks or uses zip64, which is not supported")]
    Unsupported,
    #[error("the archive is truncated or its directory is inconsistent")]
    Malformed,
    #[error("entry {name:?} is encrypted")]
    Encrypted { name: String },
    #[error(
        "entry {name:?} uses compression method {method} (only stored and deflate are supported)"
    )]
    Method { name: String, method: u16 },
    #[error("entry {name:?} is {size} bytes uncompressed, over the limit of {cap} bytes")]
    TooLarge { name: String, size: u64, cap: u64 },
    #[error("entry {name:?} does not inflate to its declared size")]
    Inflate { name: String },
    #[error("entry {name:?} fails its CRC-32 check")]
    Crc { name: String },
}

/// One file of the central directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

/// An archive whose central directory has been read.
#[derive(Debug)]
pub struct Archive<'a> {
    bytes: &'a [u8],
    entries: Vec<Entry>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> Archive<'a> {
    /// Reads the central directory.
    pub fn new(bytes: &'a [u8]) -> Result<Self, ZipError> {
        let eocd = find_eocd(bytes).ok_or(ZipError::NotZip)?;
        let m = |v: Option<u16>| v.ok_or(ZipError::Malformed);
        let disk = m(u16_at(bytes, eocd + 4))?;
        let cd_disk = m(u16_at(bytes, eocd + 6))?;
        let count = m(u16_at(bytes, eocd + 10))?;
        let cd_size = u32_at(bytes, eocd + 12).ok_or(ZipError::Malformed)?;
        let cd_offset = u32_at(bytes, eocd + 16).ok_or(ZipError::Malformed)?;
        if disk != 0 || cd_disk != 0 || count == 0xffff || cd_offset == u32::MAX {
            return Err(ZipError::Unsupported);
        }
        let start = usize::try_from(cd_offset).map_err(|_| ZipError::Malformed)?;
        let len = usize::try_from(cd_size).map_err(|_| ZipError::Malformed)?;
        let dir = bytes
            .get(start..start.checked_add(len).ok_or(ZipError::Malformed)?)
            .ok_or(ZipError::Malformed)?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for _ in 0..count {
            if u32_at(dir, at) != Some(CENTRAL_SIGNATURE) {
                return Err(ZipError::Malformed);
            }
            let field16 = |off: usize| u16_at(dir, at + off).ok_or(ZipError::Malformed);
            let field32 = |off: usize| u32_at(dir, at + off).ok_or(ZipError::Malformed);
            let flags = field16(8)?;
            let method = field16(10)?;
            let crc = field32(16)?;
            let compressed = field32(20)?;
            let size = field32(24)?;
            let name_len = usize::from(field16(28)?);
            let extra_len = usize::from(field16(30)?);
            let comment_len = usize::from(field16(32)?);
            let local_offset = field32(42)?;
            if compressed == u32::MAX || size == u32::MAX || local_offset == u32::MAX {
                return Err(ZipError::Unsupported);
            }
            let name_start = at + CENTRAL_LEN;
            let name = dir
                .get(name_start..name_start + name_len)
                .ok_or(ZipError::Malformed)?;
            entries.push(Entry {
                name: String::from_utf8_lossy(name).into_owned(),
                method,
                flags,
                crc,
                compressed: u64::from(compressed),
                size: u64::from(size),
                local_offset: u64::from(local_offset),
            });
            at = name_start + name_len + extra_len + comment_len;
        }
        Ok(Self { bytes, entries })
    }

    /// The archive's files, in directory order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The uncompressed contents of `entry`, refused if it is larger than `cap` bytes.
    pub fn read(&self, entry: &Entry, cap: u64) -> Result<Vec<u8>, ZipError> {
        let name = || entry.name.clone();
        if entry.flags & 1 != 0 {
            return Err(ZipError::Encrypted { name: name() });
        }
        if entry.size > cap {
            return Err(ZipError::TooLarge {
                name: name(),
                size: entry.size,
                cap,
            });
        }
        let local = usize::try_from(entry.local_offset).map_err(|_| ZipError::Malformed)?;
        if u32_at(self.bytes, local) != Some(LOCAL_SIGNATURE) {
            return Err(ZipError::Malformed);
        }
        let name_len = usize::from(u16_at(self.bytes, local + 26).ok_or(ZipError::Malformed)?);
        let extra_len = usize::from(u16_at(self.bytes, local + 28).ok_or(ZipError::Malformed)?);
        let data_start = local + LOCAL_LEN + name_len + extra_len;
        let compressed = usize::try_from(entry.compressed).map_err(|_| ZipError::Malformed)?;
        let data = self
            .bytes
            .get(
                data_start
                    ..data_start
                        .checked_add(compressed)
                        .ok_or(ZipError::Malformed)?,
            )
            .ok_or(ZipError::Malformed)?;
        // `size <= cap` was checked above, and `cap` fits the address space of the caller.
        let size = usize::try_from(entry.size).map_err(|_| ZipError::Malformed)?;
        let out = match entry.method {
            0 if data.len() == size => data.to_vec(),
            0 => return Err(ZipError::Malformed),
            8 => {
                let out = miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
                    .map_err(|_| ZipError::Inflate { name: name() })?;
                if out.len() != size {
                    return Err(ZipError::Inflate { name: name() });
                }
                out
            }
            method => {
                return Err(ZipError::Method {
                    name: name(),
                    method,
                });
            }
        };
        if crc32(&out) != entry.crc {
            return Err(ZipError::Crc { name: name() });
        }
        Ok(out)
    }
}

/// The offset of the end-of-central-directory record, searched backwards over the comment.
fn find_eocd(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().checked_sub(EOCD_LEN)?;
    let first = last.saturating_sub(MAX_COMMENT);
    (first..=last)
        .rev()
        .find(|&at| u32_at(bytes, at) == Some(EOCD_SIGNATURE))
}

/// CRC-32 (IEEE 802.3, reflected), bit by bit: archives are small and read once per init.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn archive(files: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data, deflate) in files {
            let method = if *deflate {
                ::zip::CompressionMethod::Deflated
            } else {
                ::zip::CompressionMethod::Stored
            };
            let opts = ::zip::write::SimpleFileOptions::default().compression_method(method);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_stored_and_deflated_entries() {
        let big = [7u8; 5000];
        let bytes = archive(&[("a.txt", b"hello", false), ("dir/b.bin", &big, true)]);
        let a = Archive::new(&bytes).unwrap();
        let names: Vec<_> = a.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "dir/b.bin"]);
        assert_eq!(a.read(&a.entries()[0], 100).unwrap(), b"hello");
        assert_eq!(a.read(&a.entries()[1], 5000).unwrap(), big);
        assert!(matches!(
            a.read(&a.entries()[1], 4999),
            Err(ZipError::TooLarge { size: 5000, .. })
        ));
    }

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn malformed_archives_are_errors() {
        assert_eq!(Archive::new(b"").unwrap_err(), ZipError::NotZip);
        assert_eq!(
            Archive::new(b"PK\x03\x04junk").unwrap_err(),
            ZipError::NotZip
        );
        let good = archive(&[("main.wasm", b"\0asm\x01\0\0\0", true)]);
        // Every truncation and every single corrupted byte is an error or a clean read.
        for cut in 0..good.len() {
            if let Ok(a) = Archive::new(&good[..cut]) {
                for e in a.entries() {
                    let _ = a.read(e, 1 << 20);
                }
            }
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            if let Ok(a) = Archive::new(&bad) {
                for e in a.entries() {
                    let _ = a.read(e, 1 << 20);
                }
            }
        }
        let mut corrupt = good;
        // The central directory's entry count (EOCD offset 10) pointing past the directory.
        let eocd = find_eocd(&corrupt).unwrap();
        corrupt[eocd + 10] = 5;
        assert_eq!(Archive::new(&corrupt).unwrap_err(), ZipError::Malformed);
    }
}
