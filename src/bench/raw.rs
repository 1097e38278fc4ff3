//! The raw baselines' batch: a plain `llama_batch` filled the way llama.cpp's own tools fill
//! theirs, with an owner that frees it on every way out and a decode whose return code is
//! checked. Every raw loop (`bench`'s prefill, decode and concurrency baselines, its embedding
//! baseline, and the criterion benches) uses this one type.

use crate::batch::SeqId;
use crate::error::{Error, Result};
use crate::sys;
use crate::vocab::Token;

/// A `llama_batch` from `llama_batch_init` for up to `capacity` tokens of one sequence each,
/// freed when dropped.
///
/// ```
/// use rocm_llama::bench::RawBatch;
/// let mut b = RawBatch::new(2)?;
/// assert_eq!(b.push(1, 0, 0, false)?, 0);
/// assert_eq!(b.push(2, 1, 0, true)?, 1);
/// assert!(b.push(3, 2, 0, true).is_err(), "full");
/// b.clear();
/// assert!(b.is_empty());
/// # Ok::<(), rocm_llama::Error>(())
/// ```
pub struct RawBatch {
    batch: sys::llama_batch,
    capacity: usize,
}

// SAFETY: the batch's arrays belong to this owner alone (llama.cpp keeps no pointer to them
// after a decode returns), so moving the owner to another thread moves them with it.
unsafe impl Send for RawBatch {}

impl RawBatch {
    /// A batch for `capacity` tokens (1 to `i32::MAX`).
    pub fn new(capacity: usize) -> Result<RawBatch> {
        let n = i32::try_from(capacity)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::invalid("batch size", format!("{capacity} is not in 1..={}", i32::MAX)))?;
        // SAFETY: allocates arrays for `n` tokens of one sequence id each; freed in `drop`.
        let batch = unsafe { sys::llama_batch_init(n, 0, 1) };
        if batch.token.is_null() || batch.seq_id.is_null() {
            return Err(Error::OutOfMemory(format!("a raw batch of {capacity} tokens")));
        }
        Ok(RawBatch { batch, capacity })
    }

    /// Forgets the tokens added (the arrays stay).
    pub fn clear(&mut self) {
        self.batch.n_tokens = 0;
    }

    /// Tokens added since the last [`clear`](Self::clear).
    pub fn len(&self) -> usize {
        self.batch.n_tokens as usize
    }

    /// Whether no token was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `token` at `pos` of sequence `seq`, with its logits (or pooled row) computed when
    /// `logits`. Returns its index in the batch; [`Error::BatchFull`] when it holds `capacity`.
    pub fn push(&mut self, token: Token, pos: i32, seq: SeqId, logits: bool) -> Result<i32> {
        let i = self.len();
        if i >= self.capacity {
            return Err(Error::BatchFull { capacity: self.capacity });
        }
        let b = &mut self.batch;
        // SAFETY: `i < capacity`, the size of every array `llama_batch_init` allocated, and each
        // token's sequence id array holds one entry.
        unsafe {
            *b.token.add(i) = token;
            *b.pos.add(i) = pos;
            *b.n_seq_id.add(i) = 1;
            **b.seq_id.add(i) = seq;
            *b.logits.add(i) = i8::from(logits);
        }
        b.n_tokens += 1;
        Ok(i as i32)
    }

    /// Runs `llama_decode` on the batch; its return code becomes the crate's error for it
    /// ([`Error::NoKvSlot`], [`Error::InvalidBatch`], ...).
    ///
    /// # Safety
    ///
    /// `ctx` is a live `llama_context` no other thread uses during the call, every token
    /// added is in its model's vocabulary, every sequence id is below its `n_seq_max`, and the
    /// positions continue what each sequence holds: llama.cpp aborts the process on some
    /// violations rather than returning an error, and this raw path checks none of them.
    pub unsafe fn decode(&self, ctx: *mut sys::llama_context) -> Result<()> {
        // SAFETY: the caller's contract above; the batch's arrays are live and hold `len` tokens.
        let rc = unsafe { sys::llama_decode(ctx, self.batch) };
        Error::check_decode(rc, &[])
    }
}

impl Drop for RawBatch {
    fn drop(&mut self) {
        // SAFETY: allocated by `llama_batch_init` in `new`, freed once.
        unsafe { sys::llama_batch_free(self.batch) };
    }
}
