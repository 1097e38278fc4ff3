//! [`Batch`]: the tokens of one `llama_decode` call.

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};
use crate::vocab::Token;

/// A sequence id: which of a context's `n_seq_max` sequences a token belongs to.
pub type SeqId = i32;

/// A position within a sequence.
pub type Pos = i32;

/// Tokens for one decode, each with its position, its sequences and whether it produces
/// logits. Wraps `llama_batch` (allocated by `llama_batch_init`).
///
/// Capacity and the number of sequences per token are fixed at creation and checked on
/// every [`add`](Batch::add): adding past them is an error, never an out-of-bounds write.
pub struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
    n_seq_max: usize,
}

// SAFETY: the batch owns its heap arrays exclusively; llama.cpp keeps no reference to them
// after `llama_decode` returns, so moving the owner to another thread is fine. Not `Sync`:
// `add` mutates through shared arrays.
unsafe impl Send for Batch {}

impl Batch {
    /// A batch for up to `capacity` tokens, each in at most `n_seq_max` sequences.
    /// Wraps `llama_batch_init`.
    pub fn new(capacity: usize, n_seq_max: usize) -> Result<Batch> {
        if capacity == 0 || n_seq_max == 0 {
            return Err(Error::InvalidConfig("batch capacity and n_seq_max must be at least 1".into()));
        }
        let cap = i32::try_from(capacity)
            .map_err(|_| Error::InvalidConfig(format!("batch capacity {capacity} too large")))?;
        let seqs =
            i32::try_from(n_seq_max).map_err(|_| Error::InvalidConfig(format!("n_seq_max {n_seq_max} too large")))?;
        // SAFETY: positive sizes; `embd == 0` allocates token ids.
        let raw = unsafe { sys::llama_batch_init(cap, 0, seqs) };
        if raw.token.is_null()
            || raw.pos.is_null()
            || raw.n_seq_id.is_null()
            || raw.seq_id.is_null()
            || raw.logits.is_null()
        {
            // SAFETY: `llama_batch_free` accepts partially allocated batches (it checks each array).
            unsafe { sys::llama_batch_free(raw) };
            return Err(Error::InvalidConfig("llama_batch_init failed to allocate".into()));
        }
        Ok(Batch { raw, capacity, n_seq_max })
    }

    /// Tokens the batch can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequences one token may belong to.
    pub fn n_seq_max(&self) -> usize {
        self.n_seq_max
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    /// Whether the batch holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.raw.n_tokens == 0
    }

    /// Empties the batch (keeps its allocation).
    pub fn clear(&mut self) {
        self.raw.n_tokens = 0;
    }

    /// Appends a token at `pos` in each of `seq_ids`; `logits` asks for its output.
    /// Returns the token's index in the batch (what [`Context::logits`](crate::Context::logits) takes).
    pub fn add(&mut self, token: Token, pos: Pos, seq_ids: &[SeqId], logits: bool) -> Result<i32> {
        let i = self.len();
        if i >= self.capacity {
            return Err(Error::BatchFull { capacity: self.capacity });
        }
        if seq_ids.is_empty() || seq_ids.len() > self.n_seq_max {
            return Err(Error::InvalidConfig(format!(
                "a token needs 1..={} sequence ids, got {}",
                self.n_seq_max,
                seq_ids.len()
            )));
        }
        if let Some(&bad) = seq_ids.iter().find(|&&s| s < 0) {
            return Err(Error::InvalidSeqId { seq_id: bad, n_seq_max: self.n_seq_max as u32 });
        }
        if pos < 0 {
            return Err(Error::InvalidPosition { pos, n_ctx: 0 });
        }
        // SAFETY: `i < capacity`, the size every array was allocated with, and each
        // `seq_id[i]` has room for `n_seq_max >= seq_ids.len()` ids.
        unsafe {
            *self.raw.token.add(i) = token;
            *self.raw.pos.add(i) = pos;
            *self.raw.n_seq_id.add(i) = seq_ids.len() as i32;
            let dst = *self.raw.seq_id.add(i);
            std::ptr::copy_nonoverlapping(seq_ids.as_ptr(), dst, seq_ids.len());
            *self.raw.logits.add(i) = logits as i8;
        }
        self.raw.n_tokens += 1;
        Ok(i as i32)
    }

    /// Appends `tokens` of one sequence at positions `start..`, asking for logits on the last
    /// one when `logits_last` is set.
    pub fn add_sequence(&mut self, tokens: &[Token], start: Pos, seq_id: SeqId, logits_last: bool) -> Result<()> {
        if self.len() + tokens.len() > self.capacity {
            return Err(Error::BatchFull { capacity: self.capacity });
        }
        let last = tokens.len().saturating_sub(1);
        for (k, &t) in tokens.iter().enumerate() {
            let pos = start.checked_add(k as i32).ok_or(Error::InvalidPosition { pos: i32::MAX, n_ctx: 0 })?;
            self.add(t, pos, &[seq_id], logits_last && k == last)?;
        }
        Ok(())
    }

    /// The tokens added so far.
    pub fn tokens(&self) -> &[Token] {
        // SAFETY: the first `n_tokens` entries were written by `add`.
        unsafe { std::slice::from_raw_parts(self.raw.token, self.len()) }
    }

    /// Positions of the tokens added so far.
    pub fn positions(&self) -> &[Pos] {
        // SAFETY: as for `tokens`.
        unsafe { std::slice::from_raw_parts(self.raw.pos, self.len()) }
    }

    /// Which tokens ask for output.
    pub fn output_flags(&self) -> &[i8] {
        // SAFETY: as for `tokens`.
        unsafe { std::slice::from_raw_parts(self.raw.logits, self.len()) }
    }

    /// The sequence ids of token `i`.
    pub fn seq_ids(&self, i: usize) -> Option<&[SeqId]> {
        if i >= self.len() {
            return None;
        }
        // SAFETY: `i < n_tokens`; `n_seq_id[i]` ids were written at `seq_id[i]`.
        unsafe {
            let n = *self.raw.n_seq_id.add(i) as usize;
            Some(std::slice::from_raw_parts(*self.raw.seq_id.add(i), n))
        }
    }

    pub(crate) fn raw(&self) -> sys::llama_batch {
        self.raw
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by `llama_batch_init` and freed once. `llama_batch_free` frees the
        // arrays by pointer, so the current `n_tokens` does not matter.
        unsafe { sys::llama_batch_free(self.raw) };
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("len", &self.len()).field("capacity", &self.capacity).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_seq_limits_are_errors() {
        let mut b = Batch::new(2, 2).unwrap();
        assert_eq!(b.add(1, 0, &[0], false).unwrap(), 0);
        assert_eq!(b.add(2, 1, &[0, 1], true).unwrap(), 1);
        assert!(matches!(b.add(3, 2, &[0], false), Err(Error::BatchFull { capacity: 2 })));
        b.clear();
        assert!(b.add(3, 0, &[0, 1, 2], false).is_err());
        assert!(b.add(3, 0, &[], false).is_err());
        assert!(matches!(b.add(3, 0, &[-1], false), Err(Error::InvalidSeqId { .. })));
        assert!(b.add(3, -1, &[0], false).is_err());
        assert!(b.is_empty());
        assert!(matches!(b.add_sequence(&[1, 2, 3], 0, 0, true), Err(Error::BatchFull { .. })));
        b.add_sequence(&[5, 6], 10, 1, true).unwrap();
        assert_eq!(b.tokens(), &[5, 6]);
        assert_eq!(b.positions(), &[10, 11]);
        assert_eq!(b.output_flags(), &[0, 1]);
        assert_eq!(b.seq_ids(1), Some(&[1][..]));
        assert_eq!(b.seq_ids(2), None);
        assert!(Batch::new(0, 1).is_err());
    }
}
