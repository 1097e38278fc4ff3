//! Per-sequence KV cache operations on a [`Context`] (`llama_memory_*`).
//!
//! Position ranges use Rust ranges: `seq_remove(0, 10..)` removes positions 10 and later,
//! `seq_remove(0, ..)` the whole sequence.

use std::ops::{Bound, RangeBounds};

use llama_cpp_sys_2 as sys;

use crate::batch::{Pos, SeqId};
use crate::context::Context;
use crate::error::{Error, Result};

/// `[p0, p1)` in llama.cpp's convention, where a negative bound means "open".
fn to_c_range(range: impl RangeBounds<Pos>) -> Result<(Pos, Pos)> {
    let p0 = match range.start_bound() {
        Bound::Unbounded => -1,
        Bound::Included(&p) => p,
        Bound::Excluded(&p) => {
            p.checked_add(1).ok_or_else(|| Error::invalid("position range", "range start overflows"))?
        }
    };
    let p1 = match range.end_bound() {
        Bound::Unbounded => -1,
        Bound::Excluded(&p) => p,
        Bound::Included(&p) => {
            p.checked_add(1).ok_or_else(|| Error::invalid("position range", "range end overflows"))?
        }
    };
    if p0 < -1 || p1 < -1 || (p0 >= 0 && p1 >= 0 && p1 < p0) {
        return Err(Error::invalid("position range", format!("{p0}..{p1}")));
    }
    Ok((p0, p1))
}

impl Context<'_> {
    fn mem(&self) -> sys::llama_memory_t {
        // SAFETY: live context; the memory object lives as long as the context.
        unsafe { sys::llama_get_memory(self.raw()) }
    }

    /// Empties the whole KV cache. Wraps `llama_memory_clear`.
    pub fn clear_memory(&mut self) {
        // SAFETY: valid memory handle.
        unsafe { sys::llama_memory_clear(self.mem(), true) };
    }

    /// Removes positions `range` of sequence `seq` (or of every sequence when `seq` is
    /// `None`). Returns `false` when llama.cpp cannot remove part of a sequence (recurrent
    /// models); removing a whole sequence always succeeds. Wraps `llama_memory_seq_rm`.
    pub fn seq_remove(&mut self, seq: Option<SeqId>, range: impl RangeBounds<Pos>) -> Result<bool> {
        if let Some(s) = seq {
            self.check_seq(s)?;
        }
        let (p0, p1) = to_c_range(range)?;
        // SAFETY: checked sequence id (or -1 for all), valid range.
        Ok(unsafe { sys::llama_memory_seq_rm(self.mem(), seq.unwrap_or(-1), p0, p1) })
    }

    /// Copies positions `range` of `src` into `dst` (sharing the cells). Wraps `llama_memory_seq_cp`.
    ///
    /// With a KV buffer per sequence (`kv_unified` off and several sequences) llama.cpp copies
    /// whole buffers between sequences and asserts on anything else, so there a copy between
    /// two sequences must take the whole range (`..` or `0..`).
    pub fn seq_copy(&mut self, src: SeqId, dst: SeqId, range: impl RangeBounds<Pos>) -> Result<()> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        let (p0, p1) = to_c_range(range)?;
        if !self.kv_unified && src != dst && (p0 > 0 || p1 >= 0) {
            return Err(Error::Unsupported(format!(
                "this context keeps one KV buffer per sequence (kv_unified off), where a copy between sequences \
                 takes whole sequences: use `..` instead of {p0}..{p1}"
            )));
        }
        // SAFETY: checked ids and range.
        unsafe { sys::llama_memory_seq_cp(self.mem(), src, dst, p0, p1) };
        Ok(())
    }

    /// Removes every sequence except `seq`. Wraps `llama_memory_seq_keep`.
    pub fn seq_keep(&mut self, seq: SeqId) -> Result<()> {
        self.check_seq(seq)?;
        // SAFETY: checked id.
        unsafe { sys::llama_memory_seq_keep(self.mem(), seq) };
        Ok(())
    }

    /// Adds `delta` to the positions `range` of `seq` (context shifting); cells shifted below
    /// position 0 are removed. Errors when the memory cannot shift (e.g. recurrent models) and
    /// when a shifted position would land at or past the sequence's context length
    /// ([`Error::InvalidPosition`]): positions there overflow or break later decodes.
    /// Wraps `llama_memory_seq_add`.
    pub fn seq_shift(&mut self, seq: SeqId, range: impl RangeBounds<Pos>, delta: Pos) -> Result<()> {
        self.check_seq(seq)?;
        let (p0, p1) = to_c_range(range)?;
        let n_ctx = self.n_ctx_seq();
        if delta.unsigned_abs() > n_ctx {
            return Err(Error::InvalidPosition { pos: delta, n_ctx });
        }
        if delta > 0 {
            // The highest position that moves: the sequence's last one, or the range's end.
            let top = match (self.seq_pos_max(seq)?, p1) {
                (None, _) => None,
                (Some(max), -1) => Some(max),
                (Some(max), end) => Some(max.min(end - 1)),
            };
            if let Some(top) = top.filter(|&t| t >= p0.max(0)) {
                let moved = top.saturating_add(delta);
                if moved as i64 >= n_ctx as i64 {
                    return Err(Error::InvalidPosition { pos: moved, n_ctx });
                }
            }
        }
        // Shifting re-applies RoPE to the K cache in place; ggml's CPU RoPE takes F32 and F16
        // (and quantized types through F32) but aborts the process on BF16.
        if self.type_k == crate::context::KvType::BF16 {
            return Err(Error::Unsupported("positions cannot be shifted in a BF16 K cache (use F16 or F32)".into()));
        }
        // SAFETY: valid memory handle.
        if !unsafe { sys::llama_memory_can_shift(self.mem()) } {
            return Err(Error::Unsupported("this model's memory cannot shift positions".into()));
        }
        // SAFETY: checked id and range.
        unsafe { sys::llama_memory_seq_add(self.mem(), seq, p0, p1, delta) };
        Ok(())
    }

    /// Smallest position cached for `seq`, or `None` when it is empty.
    /// Wraps `llama_memory_seq_pos_min`.
    pub fn seq_pos_min(&self, seq: SeqId) -> Result<Option<Pos>> {
        self.check_seq(seq)?;
        // SAFETY: checked id.
        let p = unsafe { sys::llama_memory_seq_pos_min(self.mem(), seq) };
        Ok((p >= 0).then_some(p))
    }

    /// Largest position cached for `seq`, or `None` when it is empty.
    /// Wraps `llama_memory_seq_pos_max`.
    pub fn seq_pos_max(&self, seq: SeqId) -> Result<Option<Pos>> {
        self.check_seq(seq)?;
        // SAFETY: checked id.
        let p = unsafe { sys::llama_memory_seq_pos_max(self.mem(), seq) };
        Ok((p >= 0).then_some(p))
    }
}

/// Whether sequence `seq`, holding positions up to `len - 1`, still holds everything that
/// position `len` attends to. A model with sliding-window layers keeps only the last window of
/// positions for those layers (llama.cpp reuses older cells), so a cut far behind the newest
/// position can leave the window before it empty: there the sequence must still reach back
/// `n_swa` positions from the cut. Any other model must hold position 0 (nothing was shifted
/// out).
pub(crate) fn prefix_intact(ctx: &Context<'_>, seq: SeqId, len: usize) -> Result<bool> {
    let Some(min) = ctx.seq_pos_min(seq)? else { return Ok(len == 0) };
    let n_swa = ctx.model().n_swa() as usize;
    let oldest_needed = if n_swa > 0 { len.saturating_sub(n_swa) } else { 0 };
    Ok(min as usize <= oldest_needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_convert() {
        assert_eq!(to_c_range(..).unwrap(), (-1, -1));
        assert_eq!(to_c_range(3..).unwrap(), (3, -1));
        assert_eq!(to_c_range(..7).unwrap(), (-1, 7));
        assert_eq!(to_c_range(2..=4).unwrap(), (2, 5));
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 5..2;
        assert!(to_c_range(backwards).is_err());
        assert!(to_c_range(-5..2).is_err());
    }
}
