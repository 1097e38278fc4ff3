//! Draft-model speculation: a small model with the target's vocabulary guesses the next few
//! tokens, greedily, in a context of its own that follows each sequence's tokens.

use std::sync::Arc;

use crate::batch::{Batch, SeqId};
use crate::context::{Context, ContextConfig};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::vocab::Token;

/// A draft model checked against the target it drafts for ([`Speculation::Draft`]).
///
/// The draft must tokenize exactly as the target: the same kind of vocabulary, the same
/// beginning and end tokens, and the same text for every token id both have (sizes may differ
/// by up to 128 padding ids, as llama.cpp allows; a guess stops at an id the target lacks).
/// Typically a smaller model of the same family, or a lower quantization of the target.
///
/// [`Speculation::Draft`]: crate::Speculation::Draft
#[derive(Clone)]
pub struct DraftModel {
    model: Arc<Model>,
    /// The target's model pointer, as an identity (never dereferenced).
    target: usize,
    target_n_vocab: i32,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel").field("model", &self.model.path()).finish()
    }
}

impl PartialEq for DraftModel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model) && self.target == other.target
    }
}

/// Ids whose text may differ between draft and target vocabularies that otherwise match
/// (llama.cpp's check skips the first few, which some conversions leave different).
const FIRST_COMPARED_ID: i32 = 5;
/// The most the two vocabularies' sizes may differ (padding ids).
const MAX_VOCAB_SIZE_GAP: i32 = 128;

impl DraftModel {
    /// Checks that `draft` can draft for `target`; an error names the first difference.
    pub fn new(target: &Model, draft: Arc<Model>) -> Result<DraftModel> {
        let bad = |why: String| Err(Error::invalid("draft model", why));
        if draft.is_vocab_only() {
            return bad("the draft model was loaded with vocab_only: it cannot decode".into());
        }
        if draft.is_recurrent() {
            return bad("a recurrent or hybrid draft model cannot be cut back after a wrong guess".into());
        }
        let (t, d) = (target.vocab(), draft.vocab());
        // SAFETY: both vocab pointers are valid while their models live.
        let (tt, dt) = unsafe { (crate::sys::llama_vocab_type(t.raw()), crate::sys::llama_vocab_type(d.raw())) };
        if tt != dt {
            return bad(format!("its vocabulary is of another kind ({dt} against the target's {tt})"));
        }
        if (t.bos(), t.add_bos()) != (d.bos(), d.add_bos()) || t.eos() != d.eos() {
            return bad(format!(
                "its beginning or end tokens differ (bos {:?} add {}, eos {:?} against the target's {:?} {} {:?})",
                d.bos(),
                d.add_bos(),
                d.eos(),
                t.bos(),
                t.add_bos(),
                t.eos()
            ));
        }
        let (nt, nd) = (t.n_tokens(), d.n_tokens());
        if (nt - nd).abs() > MAX_VOCAB_SIZE_GAP {
            return bad(format!("its vocabulary has {nd} tokens, the target's {nt}"));
        }
        for id in FIRST_COMPARED_ID..nt.min(nd) {
            if t.token_to_bytes(id, true)? != d.token_to_bytes(id, true)? {
                return bad(format!(
                    "token {id} is {:?} in the draft and {:?} in the target",
                    String::from_utf8_lossy(&d.token_to_bytes(id, true)?),
                    String::from_utf8_lossy(&t.token_to_bytes(id, true)?)
                ));
            }
        }
        Ok(DraftModel { model: draft, target: target.raw() as usize, target_n_vocab: nt })
    }

    /// The draft model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Whether this draft was checked for `target`.
    pub(crate) fn drafts_for(&self, target: &Model) -> bool {
        self.target == target.raw() as usize
    }
}

/// A context of the draft model with one sequence per target sequence, each following the
/// tokens of its target sequence, and the greedy drafting loop.
pub(crate) struct Drafter {
    // Declared before `_model`: the context is freed before the model it borrows.
    ctx: Context<'static>,
    /// The tokens each sequence's cells hold, in order.
    caches: Vec<Vec<Token>>,
    batch: Batch,
    target_n_vocab: i32,
    n_ctx_seq: usize,
    /// The draft this context is of (for reuse by a session's next turn).
    draft: DraftModel,
    _model: Arc<Model>,
}

impl Drafter {
    /// A draft context for `n_seq` sequences of `n_ctx_seq` tokens each, with the target
    /// context's batch size and threads.
    pub(crate) fn new(draft: &DraftModel, n_seq: u32, n_ctx_seq: u32, n_batch: u32, threads: u32) -> Result<Drafter> {
        let model = draft.model.clone();
        // SAFETY: the model lives on the heap behind the Arc that `_model` holds for as long as
        // the context exists; the context is dropped first (field order), and the reference
        // never leaves this struct with a longer lifetime than the struct's own.
        let model_ref: &'static Model = unsafe { &*Arc::as_ptr(&model) };
        let config = ContextConfig::default()
            .n_ctx(n_ctx_seq.saturating_mul(n_seq))
            .n_seq_max(n_seq)
            .n_batch(n_batch)
            .threads(threads);
        let ctx = Context::new(model_ref, &config)?;
        Ok(Drafter {
            batch: Batch::new(n_batch as usize, 1)?,
            caches: vec![Vec::new(); n_seq as usize],
            target_n_vocab: draft.target_n_vocab,
            n_ctx_seq: ctx.n_ctx_seq() as usize,
            ctx,
            draft: draft.clone(),
            _model: model,
        })
    }

    /// Runs the draft model once before its first guess ([`Context::warm_up`]).
    pub(crate) fn warm_up(&mut self) -> Result<()> {
        self.ctx.warm_up()
    }

    /// Whether this context drafts with `draft` for one sequence of at least `n_ctx_seq` tokens.
    pub(crate) fn fits(&self, draft: &DraftModel, n_ctx_seq: u32) -> bool {
        self.draft == *draft && self.caches.len() == 1 && self.n_ctx_seq >= n_ctx_seq as usize
    }

    /// Up to `max` tokens the draft model expects after `history` in sequence `seq`, greedily;
    /// the guess ends early where the draft's own probability of its pick falls below `p_min`,
    /// at an end-of-generation token, or at an id the target does not have. The sequence's
    /// cells are first brought to `history` (what they share is kept).
    pub(crate) fn draft(&mut self, seq: SeqId, history: &[Token], max: usize, p_min: f32) -> Result<Vec<Token>> {
        let Some(cache) = self.caches.get_mut(seq as usize) else { return Ok(Vec::new()) };
        let max = max.min(self.n_ctx_seq.saturating_sub(history.len() + 1));
        if max == 0 || history.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = &mut self.ctx;
        // Keep what the cells share with `history` (never its last token, whose logits are
        // needed), or start over where the sequence cannot be cut.
        let shared = cache.iter().zip(history).take_while(|(a, b)| a == b).count().min(history.len() - 1);
        let common = if ctx.seq_remove(Some(seq), shared as i32..)? {
            shared
        } else {
            ctx.seq_remove(Some(seq), ..)?;
            0
        };
        cache.truncate(common);
        let n_batch = ctx.n_batch() as usize;
        let rest = &history[common..];
        // A token of the target's that the draft's (smaller) vocabulary lacks: nothing to
        // draft from.
        let n_draft_vocab = ctx.model().vocab().n_tokens();
        if rest.iter().any(|&t| t >= n_draft_vocab) {
            return Ok(Vec::new());
        }
        let mut pos = common as i32;
        for (k, chunk) in rest.chunks(n_batch).enumerate() {
            self.batch.clear();
            let last = (k + 1) * n_batch >= rest.len();
            self.batch.add_sequence(chunk, pos, seq, last)?;
            ctx.decode(&self.batch)?;
            cache.extend_from_slice(chunk);
            pos += chunk.len() as i32;
        }
        let vocab = ctx.model().vocab();
        let mut index = self.batch.len() as i32 - 1;
        let mut guess = Vec::with_capacity(max);
        loop {
            let (id, p) = greedy_pick(ctx.logits(index)?);
            if p < p_min || id >= self.target_n_vocab || vocab.is_eog(id) {
                break;
            }
            guess.push(id);
            if guess.len() == max {
                break;
            }
            self.batch.clear();
            self.batch.add(id, pos, &[seq], true)?;
            ctx.decode(&self.batch)?;
            cache.push(id);
            pos += 1;
            index = 0;
        }
        Ok(guess)
    }
}

/// The most likely token of a logits row and its probability.
fn greedy_pick(row: &[f32]) -> (Token, f32) {
    let (best, max) =
        row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &l)| if l > b.1 { (i, l) } else { b });
    let z: f32 = row.iter().map(|&l| (l - max).exp()).sum();
    (best as Token, if z > 0.0 { 1.0 / z } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::greedy_pick;

    #[test]
    fn the_greedy_pick_and_its_probability() {
        let (id, p) = greedy_pick(&[0.0, 2.0, 0.0]);
        assert_eq!(id, 1);
        let e2 = 2f32.exp();
        assert!((p - e2 / (e2 + 2.0)).abs() < 1e-6);
        assert_eq!(greedy_pick(&[1.0, 1.0]).0, 0);
    }
}
