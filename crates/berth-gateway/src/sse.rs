//! Server-sent-event framing of upstream streams.
//!
//! [`Frames`] cuts a byte stream at event boundaries (a blank line). Upstreams write one event
//! per write, so a chunk is almost always exactly one or more whole events and passes through
//! as the same `Bytes`, uncopied; only the tail of an event split across reads waits for the
//! rest of itself.

use bytes::{Bytes, BytesMut};

/// The longest partial event held back; a longer one is passed on as it is (no replica writes
/// such events, and holding it would let one stream take unbounded memory).
pub(crate) const MAX_EVENT: usize = 1024 * 1024;

/// Re-aligns a byte stream on SSE event boundaries.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    carry: BytesMut,
}

impl Frames {
    /// Adds a chunk; returns the complete events now available (possibly empty). Never holds
    /// more than [`MAX_EVENT`] bytes.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.carry.is_empty() {
            let end = last_boundary(&chunk);
            if end == chunk.len() || chunk.len() - end > MAX_EVENT {
                return chunk;
            }
            self.carry.extend_from_slice(&chunk[end..]);
            return chunk.slice(..end);
        }
        self.carry.extend_from_slice(&chunk);
        let end = last_boundary(&self.carry);
        if self.carry.len() - end > MAX_EVENT {
            return self.carry.split().freeze();
        }
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

/// Feeds `chunks` through [`Frames`] and checks it: what comes out is what went in, in order;
/// every piece ends at an event boundary unless it is an over-long event passed on; no more
/// than [`MAX_EVENT`] is ever held; the event splitter and `data:` reader take any output. For
/// the fuzz target and the arbitrary-input test; panics on a broken invariant.
pub fn check_frames(chunks: &[&[u8]]) {
    let mut f = Frames::default();
    let mut out = Vec::new();
    for c in chunks {
        let part = f.push(Bytes::copy_from_slice(c));
        assert!(f.carry.len() <= MAX_EVENT);
        assert!(part.is_empty() || last_boundary(&part) == part.len() || part.len() > MAX_EVENT);
        out.extend_from_slice(&part);
    }
    out.extend_from_slice(&f.rest());
    assert_eq!(out, chunks.concat());
    let out = Bytes::from(out);
    let mut total = 0;
    for ev in events(&out) {
        total += ev.len();
        if let Some(d) = data(&ev) {
            assert!(d.len() <= ev.len());
        }
    }
    assert_eq!(total, out.len());
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
    fn an_event_that_never_ends_is_passed_on_not_held() {
        let mut f = Frames::default();
        let piece = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut passed = 0;
        for _ in 0..40 {
            passed += f.push(piece.clone()).len();
            assert!(f.carry.len() <= MAX_EVENT);
        }
        passed += f.rest().len();
        assert_eq!(passed, 40 * piece.len(), "nothing lost");
        let huge = Bytes::from(vec![b'y'; MAX_EVENT + 1]);
        assert_eq!(f.push(huge.clone()).len(), huge.len());
    }

    #[test]
    fn arbitrary_streams_never_break_the_framing() {
        // A deterministic sweep on top of the fuzz target (fuzz/fuzz_targets/sse_frames.rs).
        let alphabet = b"data: {}[]\"\r\n\n\n:x";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let bytes: Vec<u8> = (0..rng.usize(..200))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let mut cuts: Vec<usize> = (0..rng.usize(..6))
                .map(|_| rng.usize(..=bytes.len()))
                .collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            chunks.push(&bytes[at..]);
            check_frames(&chunks);
        }
        let long = vec![b'x'; MAX_EVENT + 10];
        check_frames(&[&long[..MAX_EVENT / 2], &long[MAX_EVENT / 2..], b"\n\n"]);
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
