//! Incremental text handling for generated tokens: UTF-8 reassembly of token pieces and
//! stop-sequence matching that never emits text which might turn out to be part of a stop string.

/// Collects token pieces (raw bytes) and releases only complete UTF-8 text.
///
/// Byte-level BPE vocabularies split multi-byte characters (emoji, CJK) across tokens; emitting
/// each piece on its own would send broken characters to the client.
#[derive(Debug, Default)]
pub struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    /// Appends `bytes` and returns the longest valid UTF-8 prefix of everything buffered so far.
    /// Bytes that can never become valid are replaced by U+FFFD so one bad token cannot stall
    /// the stream.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to `valid` is valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete sequence at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // An invalid sequence in the middle: replace it and carry on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Releases whatever is left (at the end of generation), lossily.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// What [`StopMatcher::push`] decided for a new piece of text.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is safe to send to the client now.
    pub emit: String,
    /// True when a stop sequence was found; generation must end and nothing after it is sent.
    pub stopped: bool,
}

/// Finds stop sequences in streamed text, holding back any suffix that could still grow into one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for the given (non-empty) stop strings.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Feeds new text; returns what can be emitted and whether a stop sequence was hit.
    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stops.is_empty() {
            return StopStep {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        // Earliest complete match wins.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self.partial_suffix_len();
        let split = self.held.len() - keep;
        let emit = self.held[..split].to_owned();
        self.held.drain(..split);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Releases held-back text at the end of generation (no stop sequence completed).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    fn partial_suffix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            // Candidate lengths, longest first, on char boundaries of both strings.
            let max = stop.len().saturating_sub(1).min(self.held.len());
            for len in (1..=max).rev() {
                let start = self.held.len() - len;
                if len <= best {
                    break;
                }
                if self.held.is_char_boundary(start)
                    && stop.is_char_boundary(len)
                    && stop.as_bytes()[..len] == self.held.as_bytes()[start..]
                {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_ascii_passes_through() {
        let mut b = Utf8Buffer::default();
        assert_eq!(b.push(b"Hello"), "Hello");
        assert_eq!(b.finish(), "");
    }

    #[test]
    fn utf8_split_emoji_is_held_until_complete() {
        let crab = "🦀".as_bytes(); // 4 bytes
        let mut b = Utf8Buffer::default();
        assert_eq!(b.push(b"a"), "a");
        assert_eq!(b.push(&crab[..1]), "");
        assert_eq!(b.push(&crab[1..3]), "");
        assert_eq!(b.push(&[crab[3], b'!']), "🦀!");
    }

    #[test]
    fn utf8_split_two_byte_char_with_text_before() {
        let e = "é".as_bytes();
        let mut b = Utf8Buffer::default();
        assert_eq!(b.push(&[b'c', b'a', b'f', e[0]]), "caf");
        assert_eq!(b.push(&e[1..]), "é");
    }

    #[test]
    fn utf8_invalid_bytes_are_replaced_not_stuck() {
        let mut b = Utf8Buffer::default();
        assert_eq!(b.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
    }

    #[test]
    fn utf8_incomplete_tail_is_flushed_lossily_at_finish() {
        let mut b = Utf8Buffer::default();
        assert_eq!(b.push(&"🦀".as_bytes()[..2]), "");
        assert_eq!(b.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_without_stops_emits_everything() {
        let mut m = StopMatcher::new(vec![]);
        let step = m.push("abc");
        assert_eq!(step.emit, "abc");
        assert!(!step.stopped);
    }

    #[test]
    fn stop_within_one_piece_cuts_text() {
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        let step = m.push("Paris.\n\nMore");
        assert_eq!(
            step,
            StopStep {
                emit: "Paris.".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn stop_split_across_pieces_is_held_back_then_dropped() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("foo E").emit, "foo ");
        assert_eq!(m.push("N").emit, "");
        let step = m.push("D tail");
        assert_eq!(step.emit, "");
        assert!(step.stopped);
    }

    #[test]
    fn stop_false_alarm_releases_held_text() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("E").emit, "");
        assert_eq!(m.push("N").emit, "");
        let step = m.push("X");
        assert_eq!(step.emit, "ENX");
        assert!(!step.stopped);
    }

    #[test]
    fn stop_earliest_of_several_wins() {
        let mut m = StopMatcher::new(vec!["world".into(), "lo".into()]);
        let step = m.push("hello world");
        assert_eq!(step.emit, "hel");
        assert!(step.stopped);
    }

    #[test]
    fn stop_finish_releases_partial_match() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ab ST").emit, "ab ");
        assert_eq!(m.finish(), "ST");
    }

    #[test]
    fn stop_with_multibyte_chars() {
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("café").emit, "caf");
        let step = m.push("!");
        assert_eq!(step.emit, "");
        assert!(step.stopped);
    }
}
