//! HTTP/1.1 request heads, as far as the action protocol needs them: a request line, headers,
//! a body by `Content-Length`. Chunked request bodies are refused (501): the invoker always sends
//! a length. Persistent connections follow RFC 9112 §9.3 (1.1 keeps alive unless
//! `Connection: close`, 1.0 closes unless `Connection: keep-alive`).

use alloc::format;
use alloc::string::String;
use core::ops::Range;

/// The longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest request body: OpenWhisk's limit on an action's code, 48 MiB.
pub const MAX_BODY: usize = 48 << 20;

/// A parsed request head; the ranges index the buffer it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Range<usize>,
    pub path: Range<usize>,
    /// The length of the head including the blank line: the body starts here.
    pub len: usize,
    pub content_length: usize,
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// A request the server answers with an error status and then closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not HTTP/1.x, or a malformed line or header.
    BadRequest,
    /// The head is longer than [`MAX_HEAD`].
    HeadTooLarge,
    /// `Content-Length` above [`MAX_BODY`] (or above what memory holds).
    BodyTooLarge,
    /// `Transfer-Encoding` (chunked bodies).
    NotImplemented,
}

impl Error {
    pub fn status(self) -> u16 {
        match self {
            Error::BadRequest => 400,
            Error::HeadTooLarge => 431,
            Error::BodyTooLarge => 413,
            Error::NotImplemented => 501,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Error::BadRequest => "bad request",
            Error::HeadTooLarge => "request head too large",
            Error::BodyTooLarge => "request body too large",
            Error::NotImplemented => "chunked request bodies are not supported",
        }
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&c| c.is_ascii_graphic())
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    let Some(len) = find_blank_line(&buf[..buf.len().min(MAX_HEAD + 4)]) else {
        return if buf.len() > MAX_HEAD {
            Err(Error::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if len > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let mut lines = buf[..len - 4]
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(Error::BadRequest)?;
    let mut parts = request_line.split(|&c| c == b' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::BadRequest);
    };
    if !is_token(method) || !is_token(path) {
        return Err(Error::BadRequest);
    }
    let mut keep_alive = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Err(Error::BadRequest),
    };
    let mut content_length = None;
    let mut expect_continue = false;
    for line in lines {
        let colon = line
            .iter()
            .position(|&c| c == b':')
            .ok_or(Error::BadRequest)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if !is_token(name) {
            return Err(Error::BadRequest);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = core::str::from_utf8(value).map_err(|_| Error::BadRequest)?;
            if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(Error::BadRequest);
            }
            // Too many digits to parse is too large a body anyway.
            let n: usize = v.parse().map_err(|_| Error::BodyTooLarge)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Error::BadRequest);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Error::NotImplemented);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&c| c == b',').map(<[u8]>::trim_ascii) {
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY {
        return Err(Error::BodyTooLarge);
    }
    let start = |s: &[u8]| s.as_ptr() as usize - buf.as_ptr() as usize;
    let (m, p) = (start(method), start(path));
    Ok(Some(Head {
        method: m..m + method.len(),
        path: p..p + path.len(),
        len,
        content_length,
        keep_alive,
        expect_continue,
    }))
}

/// The reason phrase of the statuses the kernel and the library answer with.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The head of a JSON response with a body of `len` bytes.
pub fn response_head(status: u16, len: usize, keep_alive: bool) -> String {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: {connection}\r\n\r\n",
        reason(status)
    )
}

/// A JSON body `{"error":"<message>"}` for a message without quotes or backslashes.
pub fn error_body(message: &str) -> String {
    format!("{{\"error\":\"{message}\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<Head>, Error> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn a_post_with_a_body() {
        let req = "POST /init HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\n{\"value\":{}}";
        let h = head(req).unwrap().unwrap();
        assert_eq!(&req[h.method.clone()], "POST");
        assert_eq!(&req[h.path.clone()], "/init");
        assert_eq!(h.content_length, 12);
        assert_eq!(&req[h.len..], "{\"value\":{}}");
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
    }

    #[test]
    fn incomplete_heads_wait() {
        assert_eq!(head(""), Ok(None));
        assert_eq!(head("POST /run HTTP/1.1\r\nContent-Le"), Ok(None));
        assert_eq!(head("POST /run HTTP/1.1\r\n\r"), Ok(None));
    }

    #[test]
    fn connection_handling() {
        let h = head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.content_length, 0);
        let h = head("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(h.unwrap().unwrap().expect_continue);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        for bad in [
            "hello\r\n\r\n",
            "GET /\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET / HTTP/1.1 x\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "\x00\x01\x02\r\n\r\n",
        ] {
            assert_eq!(head(bad), Err(Error::BadRequest), "{bad:?}");
        }
    }

    #[test]
    fn limits() {
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(head(&big), Err(Error::BodyTooLarge));
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(head(huge), Err(Error::BodyTooLarge));
        let ok = format!("POST / HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        assert_eq!(head(&ok).unwrap().unwrap().content_length, MAX_BODY);
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&long), Err(Error::HeadTooLarge));
        assert_eq!(head(&long[..MAX_HEAD + 1]), Err(Error::HeadTooLarge));
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(chunked), Err(Error::NotImplemented));
        assert_eq!(Error::BodyTooLarge.status(), 413);
    }

    #[test]
    fn responses() {
        assert_eq!(
            response_head(404, 17, true),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(error_body("bad request"), "{\"error\":\"bad request\"}");
    }
}
