//! Log-probabilities of generated tokens: the model's own distribution (a softmax over the raw
//! logits, before any sampling stage), the chosen token's and the top alternatives'.

use crate::error::Result;
use crate::vocab::{Token, Vocab};

/// The log-probabilities of one generated token ([`Event::Token`](crate::Event::Token)'s
/// `logprobs`, when [`GenerateOptions::n_probs`](crate::GenerateOptions::n_probs) asks for them).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprobs {
    /// Natural log of the chosen token's probability.
    pub logprob: f32,
    /// The most probable tokens at this step, most probable first (ties: lower id first).
    pub top: Vec<TopLogprob>,
}

/// One of the most probable tokens at a step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopLogprob {
    /// The token id.
    pub id: Token,
    /// Its text (control tokens as their text; a piece of a UTF-8 character as U+FFFD).
    pub text: String,
    /// Natural log of its probability.
    pub logprob: f32,
}

/// The log-probabilities of `chosen` and of the `n` most probable tokens under `logits`
/// (a full row, one logit per vocabulary token).
pub(crate) fn logprobs(vocab: &Vocab<'_>, logits: &[f32], chosen: Token, n: usize) -> Result<TokenLogprobs> {
    vocab.check(chosen)?;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |x: f32| (f64::from(x) - log_z) as f32;
    let mut best = Vec::with_capacity(n);
    crate::sampler::top_k_into(logits, n.min(logits.len()), &mut best);
    let top = best
        .iter()
        .map(|d| {
            let text = vocab.token_to_bytes(d.id, true).map(|b| String::from_utf8_lossy(&b).into_owned())?;
            Ok(TopLogprob { id: d.id, text, logprob: lp(d.logit) })
        })
        .collect::<Result<_>>()?;
    Ok(TokenLogprobs { logprob: lp(logits[chosen as usize]), top })
}
