//! A fast 64-bit checksum for files this crate writes and reads back (saved KV state, model
//! fingerprints): it finds corruption (any change of one 8-byte word is always found; more
//! changes slip through with probability about 2^-64), it does not authenticate.

/// A running checksum: [`update`](Checksum::update) with the bytes in order, then
/// [`finish`](Checksum::finish).
#[derive(Debug, Clone)]
pub(crate) struct Checksum {
    state: u64,
    len: u64,
    /// Bytes of an unfinished 8-byte word.
    tail: [u8; 8],
    n_tail: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum { state: 0x243f_6a88_85a3_08d3, len: 0, tail: [0; 8], n_tail: 0 }
    }
}

impl Checksum {
    /// Each step is a bijection of the state for a given word, so two inputs that differ in
    /// one word end in different states.
    fn mix(&mut self, word: u64) {
        let x = (self.state ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.state = x ^ (x >> 29);
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.n_tail > 0 {
            let take = (8 - self.n_tail).min(bytes.len());
            self.tail[self.n_tail..self.n_tail + take].copy_from_slice(&bytes[..take]);
            self.n_tail += take;
            bytes = &bytes[take..];
            if self.n_tail < 8 {
                return;
            }
            let word = u64::from_le_bytes(self.tail);
            self.mix(word);
            self.n_tail = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.mix(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.n_tail = rest.len();
    }

    pub(crate) fn finish(mut self) -> u64 {
        if self.n_tail > 0 {
            let mut b = [0u8; 8];
            b[..self.n_tail].copy_from_slice(&self.tail[..self.n_tail]);
            self.mix(u64::from_le_bytes(b));
        }
        let len = self.len;
        self.mix(len);
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::Checksum;

    fn of(parts: &[&[u8]]) -> u64 {
        let mut c = Checksum::default();
        for p in parts {
            c.update(p);
        }
        c.finish()
    }

    #[test]
    fn pieces_do_not_matter_and_every_flipped_bit_shows() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = of(&[&data]);
        assert_eq!(of(&[&data[..3], &data[3..17], &data[17..]]), whole);
        assert_ne!(of(&[&data[..999]]), whole);
        for bit in (0..data.len() * 8).step_by(7) {
            let mut d = data.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(of(&[&d]), whole, "bit {bit}");
        }
    }
}
