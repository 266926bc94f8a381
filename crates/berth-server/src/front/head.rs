//! The short lane's request-head parser: which requests it serves, and where their headers are.

use crate::auth;
use crate::extract::BODY_LIMIT;
use crate::request_id;
use crate::routes::inference::{native, CHAT_PATH, NATIVE_PATH};

/// Longest request head the short lane reads; a longer one goes to hyper (which answers 431).
pub(super) const MAX_HEAD: usize = 16 * 1024;
/// Headers the short lane parses; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;

/// Which short-lane route a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Chat,
    Native,
}

/// Where a header value lies in the request bytes.
pub(super) type Span = Option<(usize, usize)>;

/// A request head the short lane serves.
#[derive(Debug)]
pub(super) struct Head {
    pub route: Route,
    /// Length of the head, blank line included.
    pub len: usize,
    pub body_len: usize,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub authorization: Span,
    pub workspace: Span,
    pub request_id: Span,
    pub sse: Span,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request for the short lane.
    Short(Head),
    /// Anything else: hyper and the router take the connection.
    Other,
}

pub(super) fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    if req.method != Some("POST") || req.version != Some(1) {
        return Parsed::Other;
    }
    let path = req.path.unwrap_or_default();
    let route = match path.split_once('?').map_or(path, |(p, _)| p) {
        CHAT_PATH => Route::Chat,
        NATIVE_PATH => Route::Native,
        _ => return Parsed::Other,
    };
    let span = |v: &[u8]| {
        let at = v.as_ptr() as usize - buf.as_ptr() as usize;
        Some((at, at + v.len()))
    };
    let mut head = Head {
        route,
        len,
        body_len: 0,
        keep_alive: true,
        expect_continue: false,
        authorization: None,
        workspace: None,
        request_id: None,
        sse: None,
    };
    let mut length = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_length(h.value) else {
                return Parsed::Other;
            };
            if length.replace(n).is_some() {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Parsed::Other;
            }
            head.expect_continue = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
            }
        } else if name.eq_ignore_ascii_case(b"authorization") {
            head.authorization = head.authorization.or_else(|| span(h.value));
        } else if name.eq_ignore_ascii_case(auth::WORKSPACE_HEADER.as_bytes()) {
            head.workspace = head.workspace.or_else(|| span(h.value));
        } else if name.eq_ignore_ascii_case(request_id::HEADER.as_bytes()) {
            head.request_id = head.request_id.or_else(|| span(h.value));
        } else if name.eq_ignore_ascii_case(native::SSE_HEADER.as_bytes()) {
            head.sse = head.sse.or_else(|| span(h.value));
        }
    }
    head.body_len = length.unwrap_or(0);
    if head.body_len > BODY_LIMIT {
        // The router answers this with the documented error.
        return Parsed::Other;
    }
    Parsed::Short(head)
}

/// A `Content-Length` value: digits only.
pub(super) fn parse_length(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parses `buf` as the short lane does and checks what it found against the bytes: every
/// header span lies inside the head, the head inside `buf`, the body within the limit. For the
/// fuzz target and the arbitrary-input test; panics on a broken invariant.
#[doc(hidden)]
pub fn check_parse(buf: &[u8]) {
    match parse(buf) {
        Parsed::Partial => assert!(buf.len() <= MAX_HEAD),
        Parsed::Other => {}
        Parsed::Short(head) => {
            assert!(head.len <= buf.len() && head.body_len <= BODY_LIMIT);
            assert!(buf[..head.len].ends_with(b"\n"));
            for (a, b) in [
                head.authorization,
                head.workspace,
                head.request_id,
                head.sse,
            ]
            .into_iter()
            .flatten()
            {
                assert!(a <= b && b <= head.len, "span {a}..{b} outside the head");
            }
        }
    }
}
