//! [`Batch`]: the tokens of one `llama_decode` call.

use llama_cpp_sys_2 as sys;

use crate::error::{Error, Result};
use crate::vocab::Token;

/// A sequence id: which of a context's `n_seq_max` sequences a token belongs to.
pub type SeqId = i32;

/// A position within a sequence.
pub type Pos = i32;

/// Tokens for one decode, each with its position, its sequences and whether it produces
/// logits. Fills a `llama_batch` whose arrays this struct owns.
///
/// Capacity and the number of sequences per token are fixed at creation and checked on
/// every [`add`](Batch::add): adding past them is an error, never an out-of-bounds write.
/// The arrays are allocated here (fallibly), not by `llama_batch_init`, which does not check
/// its allocations: a size that cannot be allocated is an error, not a crash.
pub struct Batch {
    raw: sys::llama_batch,
    tokens: Vec<Token>,
    pos: Vec<Pos>,
    n_seq_id: Vec<i32>,
    /// `capacity * n_seq_max` ids; `seq_ptrs[i]` points at token `i`'s slice of it.
    seq_storage: Vec<SeqId>,
    seq_ptrs: Vec<*mut SeqId>,
    logits: Vec<i8>,
    capacity: usize,
    n_seq_max: usize,
}

// SAFETY: the batch owns its arrays exclusively (the raw pointers point into its own Vecs);
// llama.cpp keeps no reference to them after `llama_decode` returns, so moving the owner to
// another thread is fine. Not `Sync`: `add` mutates the arrays.
unsafe impl Send for Batch {}

/// The most memory one batch's arrays may take: 1 GiB, enough for 65,536 tokens that each
/// belong to all 256 sequences llama.cpp allows, or 40 million tokens of one sequence.
pub const MAX_BATCH_BYTES: usize = 1 << 30;

/// Makes a vector of `n` copies of `value`, or an error when the memory is not there.
fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory(format!("a batch {what} array of {n} entries")))?;
    v.resize(n, value);
    Ok(v)
}

impl Batch {
    /// A batch for up to `capacity` tokens, each in at most `n_seq_max` sequences.
    ///
    /// `n_seq_max` is at most llama.cpp's sequence limit (`llama_max_parallel_sequences`,
    /// 256); `capacity * n_seq_max` sequence ids must fit in memory. Either failing is
    /// [`Error::InvalidArgument`].
    pub fn new(capacity: usize, n_seq_max: usize) -> Result<Batch> {
        if capacity == 0 || n_seq_max == 0 {
            return Err(Error::invalid("batch size", "capacity and n_seq_max must be at least 1"));
        }
        if i32::try_from(capacity).is_err() {
            return Err(Error::invalid("batch size", format!("capacity {capacity} too large (at most {})", i32::MAX)));
        }
        // SAFETY: a pure query.
        let max_seq = unsafe { sys::llama_max_parallel_sequences() };
        if n_seq_max > max_seq {
            return Err(Error::invalid(
                "batch size",
                format!("a token can belong to at most {max_seq} sequences (llama.cpp's limit), not {n_seq_max}"),
            ));
        }
        // Token, position, sequence count, sequence pointer and output flag per token, plus
        // `n_seq_max` sequence ids per token.
        let per_token = 4 + 4 + 4 + std::mem::size_of::<*mut SeqId>() + 1;
        let bytes = capacity
            .checked_mul(n_seq_max)
            .and_then(|ids| ids.checked_mul(4)?.checked_add(capacity.checked_mul(per_token)?));
        let ids = match bytes {
            Some(b) if b <= MAX_BATCH_BYTES => capacity * n_seq_max,
            _ => {
                return Err(Error::invalid(
                    "batch size",
                    format!(
                    "a batch of {capacity} tokens in up to {n_seq_max} sequences each needs more than {} MiB of arrays \
                     (the limit here); use fewer tokens per batch or fewer sequences per token",
                    MAX_BATCH_BYTES >> 20
                ),
                ))
            }
        };
        let tokens = try_filled(capacity, 0, "token")?;
        let pos = try_filled(capacity, 0, "position")?;
        let n_seq_id = try_filled(capacity, 0, "sequence count")?;
        let mut seq_storage = try_filled(ids, 0, "sequence id")?;
        let mut seq_ptrs = try_filled(capacity, std::ptr::null_mut(), "sequence pointer")?;
        for (i, p) in seq_ptrs.iter_mut().enumerate() {
            // SAFETY: `i * n_seq_max < capacity * n_seq_max`, inside `seq_storage`.
            *p = unsafe { seq_storage.as_mut_ptr().add(i * n_seq_max) };
        }
        let logits = try_filled(capacity, 0, "output flag")?;
        let mut b = Batch {
            // SAFETY: an all-zero `llama_batch` (null pointers, no tokens) is valid; the
            // pointers are set just below.
            raw: unsafe { std::mem::zeroed() },
            tokens,
            pos,
            n_seq_id,
            seq_storage,
            seq_ptrs,
            logits,
            capacity,
            n_seq_max,
        };
        b.raw.token = b.tokens.as_mut_ptr();
        b.raw.pos = b.pos.as_mut_ptr();
        b.raw.n_seq_id = b.n_seq_id.as_mut_ptr();
        b.raw.seq_id = b.seq_ptrs.as_mut_ptr();
        b.raw.logits = b.logits.as_mut_ptr();
        Ok(b)
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
            return Err(Error::invalid(
                "batch size",
                format!("a token needs 1..={} sequence ids, got {}", self.n_seq_max, seq_ids.len()),
            ));
        }
        if let Some(&bad) = seq_ids.iter().find(|&&s| s < 0) {
            return Err(Error::InvalidSeqId { seq_id: bad, n_seq_max: self.n_seq_max as u32 });
        }
        if pos < 0 {
            return Err(Error::InvalidPosition { pos, n_ctx: 0 });
        }
        self.tokens[i] = token;
        self.pos[i] = pos;
        self.n_seq_id[i] = seq_ids.len() as i32;
        let at = i * self.n_seq_max;
        self.seq_storage[at..at + seq_ids.len()].copy_from_slice(seq_ids);
        self.logits[i] = logits as i8;
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
        &self.tokens[..self.len()]
    }

    /// Positions of the tokens added so far.
    pub fn positions(&self) -> &[Pos] {
        &self.pos[..self.len()]
    }

    /// Which tokens ask for output.
    pub fn output_flags(&self) -> &[i8] {
        &self.logits[..self.len()]
    }

    /// The sequence ids of token `i`.
    pub fn seq_ids(&self, i: usize) -> Option<&[SeqId]> {
        if i >= self.len() {
            return None;
        }
        let at = i * self.n_seq_max;
        Some(&self.seq_storage[at..at + self.n_seq_id[i] as usize])
    }

    pub(crate) fn raw(&self) -> sys::llama_batch {
        self.raw
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

    #[test]
    fn sizes_that_cannot_be_allocated_are_errors() {
        // llama_batch_init would return unchecked null arrays (a segfault on `add`) or loop for
        // minutes on these.
        assert!(matches!(Batch::new(100_000, 1 << 30), Err(Error::InvalidArgument { .. })));
        assert!(matches!(Batch::new(1 << 30, 1 << 30), Err(Error::InvalidArgument { .. })));
        assert!(matches!(Batch::new(usize::MAX, 1), Err(Error::InvalidArgument { .. })));
        assert!(matches!(Batch::new(i32::MAX as usize, 256), Err(Error::InvalidArgument { .. })));
        let mut b = Batch::new(4, 256).unwrap();
        let all: Vec<SeqId> = (0..256).collect();
        b.add(7, 0, &all, true).unwrap();
        b.add(8, 1, &[3], false).unwrap();
        assert_eq!(b.seq_ids(0).unwrap().len(), 256);
        assert_eq!(b.seq_ids(1), Some(&[3][..]));
    }
}
