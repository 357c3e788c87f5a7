//! Masking secret values in a stream of log output.
//!
//! Output reaches the master in pieces of any size (one process write, one
//! gRPC message, a chunk cut at an arbitrary byte), so a secret can arrive
//! split across two of them. A [`Masker`] is a streaming matcher for one log
//! stream: it passes on at once every byte that cannot be the start of a
//! secret, and holds back only a tail that is a proper prefix of some
//! secret (so at most the longest secret's length minus one byte) until
//! what follows decides it. Every complete occurrence becomes [`MASK`].
//! [`Masker::finish`] releases the held tail when the stream ends.

/// What a secret's value is replaced with.
pub const MASK: &[u8] = b"***";

/// A streaming masker for one log stream.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    /// The values to hide, longest first (so the longest match wins).
    patterns: Vec<Vec<u8>>,
    /// Which bytes start some pattern (a quick reject for the rest).
    starts: Vec<bool>,
    /// Bytes received but not yet passed on: a proper prefix of a pattern.
    held: Vec<u8>,
}

impl Masker {
    /// A masker hiding each of `values` (empty ones are ignored).
    pub fn new<I, V>(values: I) -> Masker
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let mut m = Masker {
            starts: vec![false; 256],
            ..Masker::default()
        };
        for v in values {
            m.add(v.as_ref());
        }
        m
    }

    /// Hide `value` too, from the next byte on.
    pub fn add(&mut self, value: &[u8]) {
        if value.is_empty() || self.patterns.iter().any(|p| p == value) {
            return;
        }
        if self.starts.is_empty() {
            self.starts = vec![false; 256];
        }
        self.starts[usize::from(value[0])] = true;
        self.patterns.push(value.to_vec());
        self.patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
    }

    /// Whether there is anything to hide.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest value hidden, in bytes.
    pub fn longest(&self) -> usize {
        self.patterns.first().map_or(0, Vec::len)
    }

    /// Bytes held back now, waiting for what follows.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes the next piece of the stream; returns what may be passed on.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let (out, keep) = self.scan(&buf, false);
        self.held = buf[keep..].to_vec();
        out
    }

    /// The end of the stream: what was held back, masked where it matches.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.held);
        self.scan(&buf, true).0
    }

    /// Masks `buf`; returns the output and where the held tail starts
    /// (`buf.len()` when nothing is held or at the end of the stream).
    fn scan(&self, buf: &[u8], end: bool) -> (Vec<u8>, usize) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            if !self.starts[usize::from(buf[i])] {
                out.push(buf[i]);
                i += 1;
                continue;
            }
            let rest = &buf[i..];
            // A longer value that `rest` may still turn into wins over a
            // shorter one complete now: wait for more.
            if !end
                && self
                    .patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            {
                return (out, i);
            }
            match self.patterns.iter().find(|p| rest.starts_with(p)) {
                Some(p) => {
                    out.extend_from_slice(MASK);
                    i += p.len();
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        (out, buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after the other and returns the whole output.
    fn run(m: &mut Masker, pieces: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for p in pieces {
            out.extend(m.push(p));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_occurrence_in_one_piece_is_masked() {
        let mut m = Masker::new(["hunter2"]);
        assert_eq!(
            run(&mut m, &[b"a hunter2 b hunter2hunter2 c\n"]),
            "a *** b ****** c\n"
        );
    }

    #[test]
    fn a_secret_split_across_two_pieces_is_masked() {
        let secret = b"s3cr3t-VALUE";
        for cut in 1..secret.len() {
            let mut m = Masker::new([secret]);
            let mut first = b"before ".to_vec();
            first.extend_from_slice(&secret[..cut]);
            let mut second = secret[cut..].to_vec();
            second.extend_from_slice(b" after\n");
            assert_eq!(
                run(&mut m, &[&first, &second]),
                "before *** after\n",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_secret_split_into_single_bytes_is_masked() {
        let mut m = Masker::new(["abcdef"]);
        let text = b"xxabcdefyy";
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(run(&mut m, &pieces), "xx***yy");
    }

    #[test]
    fn only_a_possible_prefix_is_held_back() {
        let mut m = Masker::new(["secret"]);
        assert_eq!(m.push(b"plain text sec"), b"plain text ");
        assert_eq!(m.held(), 3);
        // Not the secret after all: the held bytes come out.
        assert_eq!(m.push(b"ond"), b"second");
        assert_eq!(m.held(), 0);
        // Never more than the longest value less one byte.
        assert_eq!(m.push(b"secre"), b"");
        assert_eq!(m.held(), m.longest() - 1);
    }

    #[test]
    fn the_held_tail_is_released_at_the_end() {
        let mut m = Masker::new(["secret"]);
        assert_eq!(m.push(b"ends with secre"), b"ends with ");
        assert_eq!(m.finish(), b"secre");
        let mut m = Masker::new(["secret"]);
        assert_eq!(run(&mut m, &[b"x secre", b"t"]), "x ***");
    }

    #[test]
    fn overlapping_and_nested_values() {
        // The longer value wins where both match.
        let mut m = Masker::new(["token", "token-long"]);
        assert_eq!(
            run(&mut m, &[b"a token-lo", b"ng b token c"]),
            "a *** b *** c"
        );
        // A false start inside a match's overlap: "aab" in "aaab".
        let mut m = Masker::new(["aab"]);
        assert_eq!(run(&mut m, &[b"aa", b"a", b"b!"]), "a***!");
    }

    #[test]
    fn a_value_added_later_is_masked_from_then_on() {
        let mut m = Masker::new(Vec::<&[u8]>::new());
        assert_eq!(m.push(b"one two"), b"one two");
        m.add(b"two");
        assert_eq!(run(&mut m, &[b"one tw", b"o"]), "one ***");
    }

    #[test]
    fn no_secrets_pass_everything_through() {
        let mut m = Masker::new(Vec::<&[u8]>::new());
        assert!(m.is_empty());
        assert_eq!(m.push(b"abc"), b"abc");
        assert_eq!(m.finish(), b"");
    }
}
