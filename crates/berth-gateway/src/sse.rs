//! Server-sent-event framing of upstream streams.
//!
//! [`Frames`] cuts a byte stream at event boundaries (a blank line). Upstreams write one event
//! per write, so a chunk is almost always exactly one or more whole events and passes through
//! as the same `Bytes`, uncopied; only the tail of an event split across reads waits for the
//! rest of itself.

use bytes::{Bytes, BytesMut};

/// Re-aligns a byte stream on SSE event boundaries.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    carry: BytesMut,
}

impl Frames {
    /// Adds a chunk; returns the complete events now available (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.carry.is_empty() {
            let end = last_boundary(&chunk);
            if end == chunk.len() {
                return chunk;
            }
            self.carry.extend_from_slice(&chunk[end..]);
            return chunk.slice(..end);
        }
        self.carry.extend_from_slice(&chunk);
        let end = last_boundary(&self.carry);
        self.carry.split_to(end).freeze()
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn rest(&mut self) -> Bytes {
        self.carry.split().freeze()
    }
}

/// The end of the last complete event in `buf` (0 if none). An event ends with a blank line:
/// `\n\n` or `\n\r\n`. One backward pass over the newlines.
pub(crate) fn last_boundary(buf: &[u8]) -> usize {
    memchr::memrchr_iter(b'\n', buf)
        .find(|&i| {
            (i >= 1 && buf[i - 1] == b'\n')
                || (i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n')
        })
        .map_or(0, |i| i + 1)
}

/// The end of the first complete event in `buf`. One forward pass over the newlines.
pub(crate) fn first_boundary(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match buf.get(i + 1) {
        Some(b'\n') => Some(i + 2),
        Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// Splits complete events into single events (with their terminating blank line).
pub(crate) fn events(buf: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= buf.len() {
            return None;
        }
        let end = first_boundary(&buf[at..]).map_or(buf.len(), |e| at + e);
        let ev = buf.slice(at..end);
        at = end;
        Some(ev)
    })
}

/// The payload of an event's `data:` line (the first one; OpenAI events have one).
pub(crate) fn data(event: &[u8]) -> Option<&[u8]> {
    event.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let rest = line.strip_prefix(b"data:")?;
        Some(rest.strip_prefix(b" ").unwrap_or(rest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_events_pass_uncopied_and_split_ones_are_joined() {
        let mut f = Frames::default();
        let whole = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let out = f.push(whole.clone());
        assert_eq!(out.as_ptr(), whole.as_ptr(), "no copy");
        assert_eq!(out, whole);

        assert_eq!(
            f.push(Bytes::from_static(b"data: c\n\ndata: d")),
            "data: c\n\n"
        );
        assert_eq!(f.push(Bytes::from_static(b"ef\n")), "");
        assert_eq!(
            f.push(Bytes::from_static(b"\ndata: g\r\n\r\n")),
            "data: def\n\ndata: g\r\n\r\n"
        );
        assert_eq!(f.rest(), "");
        assert_eq!(f.push(Bytes::from_static(b"data: tail")), "");
        assert_eq!(f.rest(), "data: tail");
    }

    #[test]
    fn boundaries_are_blank_lines_of_either_kind() {
        assert_eq!(last_boundary(b""), 0);
        assert_eq!(last_boundary(b"data: a\n"), 0);
        assert_eq!(last_boundary(b"data: a\n\ndata: b\n"), 9);
        assert_eq!(last_boundary(b"data: a\r\n\r\ndata: b"), 11);
        assert_eq!(last_boundary(b"\n\n"), 2);
        assert_eq!(first_boundary(b"data: a\ndata: b\n\nx\n\n"), Some(17));
        assert_eq!(first_boundary(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(first_boundary(b"data: a\r\n"), None);
        assert_eq!(first_boundary(b"data: a\n"), None);
    }

    #[test]
    fn events_and_data() {
        let b = Bytes::from_static(b"data: {\"a\":1}\n\n: comment\ndata:[DONE]\r\n\r\n");
        let evs: Vec<_> = events(&b).collect();
        assert_eq!(evs.len(), 2);
        assert_eq!(data(&evs[0]), Some(&b"{\"a\":1}"[..]));
        assert_eq!(data(&evs[1]), Some(&b"[DONE]"[..]));
    }
}
