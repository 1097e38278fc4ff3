//! Speculative decoding for one sequence: a guess of the next few tokens is decoded together
//! with the last sampled token, and the target model's own picks at each of those positions
//! decide how much of the guess stands. Each pick is the one the model would have made without
//! the guess (the sampler sees the same logits in the same order), so the output is the same:
//! token for token under greedy decoding, the same distribution when sampling. A wrong guess
//! costs only the extra positions of that decode.
//!
//! The guesses come from the text itself ([`Speculation::Ngram`], prompt lookup): after the
//! last few tokens, what followed their latest earlier occurrence, which pays off when the
//! reply copies from the prompt (editing a given text, extending a list, code); or from a
//! small draft model with the same vocabulary ([`Speculation::Draft`]).

use crate::batch::SeqId;
use crate::draft::{DraftModel, Drafter};
use crate::vocab::Token;

/// Speculative decoding for a generation ([`GenerateOptions::speculation`](crate::GenerateOptions::speculation)).
///
/// ```
/// use rocm_llama::{GenerateOptions, Speculation};
///
/// let options = GenerateOptions::greedy(256).speculation(Speculation::ngram());
/// assert!(matches!(options.speculation, Some(Speculation::Ngram { .. })));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Speculation {
    /// Prompt lookup (llama.cpp's n-gram speculation): the last `n` tokens, for `n` from
    /// `n_max` down to `n_min`, are looked up in the prompt and reply so far; what followed
    /// their latest earlier occurrence, up to `draft_max` tokens, is the guess.
    Ngram {
        /// The shortest run of tokens that must match (at least 1).
        n_min: usize,
        /// The longest run tried first.
        n_max: usize,
        /// The most tokens guessed per decode.
        draft_max: usize,
        /// The fewest: a shorter guess is not decoded (llama-server's `speculative.n_min`;
        /// 0 decodes any guess found).
        draft_min: usize,
    },
    /// A draft model (llama.cpp's `--model-draft`) guesses greedily, up to `draft_max` tokens,
    /// stopping early where its own probability of a pick falls below `p_min`.
    Draft {
        /// The draft model, checked against the target.
        draft: DraftModel,
        /// The most tokens guessed per decode.
        draft_max: usize,
        /// The fewest: a shorter guess is not decoded.
        draft_min: usize,
        /// The draft's least probability for a guessed token (0 to 1).
        p_min: f32,
    },
}

impl Speculation {
    /// Prompt lookup with runs of 2 to 4 tokens and guesses of up to 10.
    pub fn ngram() -> Speculation {
        Speculation::Ngram { n_min: 2, n_max: 4, draft_max: 10, draft_min: 0 }
    }

    /// Guesses by `draft` of up to 8 tokens, each at least 0.5 likely to the draft model
    /// (llama.cpp's defaults differ by version; set the fields to taste).
    pub fn draft_model(draft: DraftModel) -> Speculation {
        Speculation::Draft { draft, draft_max: 8, draft_min: 0, p_min: 0.5 }
    }

    /// The most and the fewest tokens guessed per decode.
    pub fn draft_limits(&self) -> (usize, usize) {
        match self {
            Speculation::Ngram { draft_max, draft_min, .. } | Speculation::Draft { draft_max, draft_min, .. } => {
                (*draft_max, *draft_min)
            }
        }
    }

    /// The same speculation with other draft limits (llama-server's per-request
    /// `speculative.n_max` and `speculative.n_min`).
    #[must_use]
    pub fn with_draft_limits(self, max: usize, min: usize) -> Speculation {
        match self {
            Speculation::Ngram { n_min, n_max, .. } => {
                Speculation::Ngram { n_min, n_max, draft_max: max, draft_min: min }
            }
            Speculation::Draft { draft, p_min, .. } => {
                Speculation::Draft { draft, draft_max: max, draft_min: min, p_min }
            }
        }
    }

    /// Checks the settings (what [`GenerateOptions::speculation`](crate::GenerateOptions::speculation)
    /// does before a generation starts).
    pub fn check(&self) -> crate::Result<()> {
        match self {
            Speculation::Ngram { n_min, n_max, draft_max, draft_min } => {
                if *n_min == 0 || n_min > n_max || *n_max > 64 {
                    return Err(crate::Error::invalid(
                        "speculation",
                        format!("n-gram sizes {n_min}..={n_max}: need 1 <= n_min <= n_max <= 64"),
                    ));
                }
                if *draft_max == 0 || *draft_max > 256 {
                    return Err(crate::Error::invalid(
                        "speculation",
                        format!("draft_max {draft_max}: need 1 to 256 tokens"),
                    ));
                }
                if draft_min > draft_max {
                    return Err(crate::Error::invalid(
                        "speculation",
                        format!("draft_min {draft_min} is more than draft_max {draft_max}"),
                    ));
                }
                Ok(())
            }
            Speculation::Draft { draft_max, draft_min, p_min, .. } => {
                if *draft_max == 0 || *draft_max > 256 || draft_min > draft_max {
                    return Err(crate::Error::invalid(
                        "speculation",
                        format!("draft lengths {draft_min}..={draft_max}: need 0 <= min <= max, 1 <= max <= 256"),
                    ));
                }
                if !(0.0..=1.0).contains(p_min) {
                    return Err(crate::Error::invalid("speculation", format!("p_min {p_min}: need 0 to 1")));
                }
                Ok(())
            }
        }
    }

    /// The guess after `history` for sequence `seq`, at most `limit` tokens: prompt lookup, or
    /// the draft model through `drafter` (none: no guess). A guess shorter than the least
    /// asked for is none; a draft that fails is no guess (logged), never the request's end.
    pub(crate) fn guess(
        &self,
        drafter: Option<&mut Drafter>,
        seq: SeqId,
        history: &[Token],
        limit: usize,
    ) -> Vec<Token> {
        let guess = match self {
            Speculation::Ngram { .. } => return self.draft(history, limit),
            Speculation::Draft { draft_max, p_min, .. } => {
                let Some(drafter) = drafter else { return Vec::new() };
                drafter.draft(seq, history, (*draft_max).min(limit), *p_min).unwrap_or_else(|e| {
                    tracing::warn!("the draft model failed, no guess this step: {e}");
                    Vec::new()
                })
            }
        };
        if guess.len() < self.draft_limits().1 {
            return Vec::new();
        }
        guess
    }

    /// The prompt-lookup guess after `history` (prompt and reply so far), at most `limit`
    /// tokens (none for a draft model: see [`guess`](Self::guess)).
    pub(crate) fn draft(&self, history: &[Token], limit: usize) -> Vec<Token> {
        match self {
            Speculation::Draft { .. } => Vec::new(),
            Speculation::Ngram { n_min, n_max, draft_max, draft_min } => {
                let guess = ngram_draft(history, *n_min, *n_max, (*draft_max).min(limit));
                if guess.len() < *draft_min {
                    return Vec::new();
                }
                guess.to_vec()
            }
        }
    }
}

/// Prompt lookup: for `n` from `n_max` down to `n_min`, the latest earlier place where the last
/// `n` tokens of `history` occur, and up to `max` tokens that followed it there.
pub(crate) fn ngram_draft(history: &[Token], n_min: usize, n_max: usize, max: usize) -> &[Token] {
    if max == 0 {
        return &[];
    }
    for n in (n_min.max(1)..=n_max).rev() {
        if history.len() <= n {
            continue;
        }
        let key = &history[history.len() - n..];
        // Latest occurrence that ends before the key itself starts over.
        let found = (0..history.len() - n).rev().find(|&j| &history[j..j + n] == key);
        if let Some(j) = found {
            let from = j + n;
            let to = (from + max).min(history.len());
            if to > from {
                return &history[from..to];
            }
        }
    }
    &[]
}

/// The counts a generation reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DraftCounts {
    /// Tokens guessed and decoded for checking.
    pub(crate) drafted: usize,
    /// Of those, the ones the model's own picks confirmed.
    pub(crate) accepted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_longest_match_is_continued() {
        // "1 2 3 9 9 | 1 2 3" → after "1 2 3" came "9 9 1 2 3".
        let h = [1, 2, 3, 9, 9, 1, 2, 3];
        assert_eq!(ngram_draft(&h, 1, 3, 10), &[9, 9, 1, 2, 3]);
        assert_eq!(ngram_draft(&h, 1, 3, 2), &[9, 9]);
        // The latest occurrence wins: "5 7" was followed by 8, later by 6.
        let h = [5, 7, 8, 5, 7, 6, 0, 5, 7];
        assert_eq!(ngram_draft(&h, 2, 2, 1), &[6]);
        // A longer match is preferred over a later shorter one.
        let h = [4, 5, 7, 1, 0, 5, 7, 2, 9, 4, 5, 7];
        assert_eq!(ngram_draft(&h, 1, 3, 1), &[1]);
        assert_eq!(ngram_draft(&h, 1, 2, 1), &[2]);
    }

    #[test]
    fn nothing_to_continue_is_no_guess() {
        assert!(ngram_draft(&[], 1, 4, 10).is_empty());
        assert!(ngram_draft(&[1], 1, 4, 10).is_empty());
        assert!(ngram_draft(&[1, 2, 3, 4], 1, 4, 10).is_empty());
        assert!(ngram_draft(&[1, 2, 1, 2], 2, 2, 0).is_empty());
        // A run of one token repeated: each earlier place continues it.
        assert_eq!(ngram_draft(&[7, 7, 7], 1, 1, 5), &[7]);
    }

    #[test]
    fn a_guess_shorter_than_draft_min_is_none() {
        let h = [1, 2, 3, 9, 1, 2];
        let s = |draft_min| Speculation::Ngram { n_min: 2, n_max: 2, draft_max: 8, draft_min };
        assert_eq!(s(0).draft(&h, 8), vec![3, 9, 1, 2]);
        assert_eq!(s(4).draft(&h, 8), vec![3, 9, 1, 2]);
        assert!(s(5).draft(&h, 8).is_empty());
        // The limit cuts the guess before draft_min is checked.
        assert!(s(4).draft(&h, 3).is_empty());
    }

    #[test]
    fn settings_are_checked() {
        assert!(Speculation::ngram().check().is_ok());
        for bad in [
            Speculation::Ngram { n_min: 0, n_max: 2, draft_max: 4, draft_min: 0 },
            Speculation::Ngram { n_min: 3, n_max: 2, draft_max: 4, draft_min: 0 },
            Speculation::Ngram { n_min: 1, n_max: 2, draft_max: 0, draft_min: 0 },
            Speculation::Ngram { n_min: 1, n_max: 1000, draft_max: 4, draft_min: 0 },
            Speculation::Ngram { n_min: 1, n_max: 2, draft_max: 4, draft_min: 5 },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
