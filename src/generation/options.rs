//! What a generation is asked for and what it reports: [`GenerateOptions`], the [`Event`]s and
//! the [`Summary`], a [`CancelToken`], and the stop-string matcher. Shared by
//! [`Generation`](crate::Generation) and the engine's slots (both run `request`'s state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::chat::ChatOptions;
use crate::logprobs::TokenLogprobs;
use crate::sampler::SamplingParams;
use crate::vocab::Token;

/// Lets another thread stop a generation; the iterator then ends with
/// [`StopReason::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Settings for one generation.
///
/// ```
/// use rocm_llama::{CancelToken, GenerateOptions, SamplingParams};
///
/// let cancel = CancelToken::new();
/// let options = GenerateOptions::default()
///     .max_tokens(128)
///     .stop("\n\n")
///     .sampling(SamplingParams::default().temperature(0.2))
///     .cancel(cancel.clone());
/// assert_eq!(options.stop, ["\n\n"]);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// Most tokens to generate (default 256).
    pub max_tokens: usize,
    /// Strings that end generation; they never appear in the output.
    pub stop: Vec<String>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Stops the generation from another thread.
    pub cancel: Option<CancelToken>,
    /// How `chat` renders the conversation (tools, template variables such as
    /// `enable_thinking`); unused by plain prompts.
    pub chat: ChatOptions,
    /// With each token, its log-probability and the `n_probs` most probable tokens (default
    /// 0: none). Computed on the host from the raw logits, so a request that asks for them
    /// samples on the host.
    pub n_probs: usize,
    /// Output that is JSON valid under this JSON Schema: turned into a grammar
    /// ([`schema::to_grammar`](crate::schema::to_grammar)) when the request starts; a schema
    /// it cannot handle is [`Error::JsonSchema`](crate::Error::JsonSchema). Not together with a grammar of the
    /// caller's in `sampling`.
    pub json_schema: Option<serde_json::Value>,
    /// LoRA adapters with their scales to generate under (`None`, the default: a context's
    /// adapters as they are set, none in the engine). A [`Session`](crate::Session) computes
    /// again what its cache holds under another set.
    pub lora: Option<Vec<(crate::adapter::LoraAdapter, f32)>>,
    /// Speculative decoding (default none): several tokens per decode when a guess of the
    /// next ones is right, with the same output as without. Used by [`Context::generate`](crate::Context::generate)
    /// and [`Session`](crate::Session); such a generation samples on the host.
    pub speculation: Option<crate::speculative::Speculation>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            stop: Vec::new(),
            sampling: SamplingParams::default(),
            cancel: None,
            chat: ChatOptions::default(),
            n_probs: 0,
            json_schema: None,
            lora: None,
            speculation: None,
        }
    }
}

crate::config::setters!(GenerateOptions {
    max_tokens: usize,
    sampling: SamplingParams,
    chat: ChatOptions,
    n_probs: usize,
} optional {
    cancel: CancelToken,
    json_schema: serde_json::Value,
    lora: Vec<(crate::adapter::LoraAdapter, f32)>,
    speculation: crate::speculative::Speculation,
});

impl GenerateOptions {
    /// Greedy decoding of at most `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() }
    }
    /// Adds a stop string to [`stop`](Self::stop).
    #[must_use]
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }
    /// Adds stop strings to [`stop`](Self::stop).
    #[must_use]
    pub fn stops(mut self, stops: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.stop.extend(stops.into_iter().map(Into::into));
        self
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// `max_tokens` were generated.
    MaxTokens,
    /// This stop string appeared (it is not part of the output).
    StopString(String),
    /// The [`CancelToken`] fired.
    Cancelled,
    /// The sequence reached the end of the context.
    ContextFull,
}

/// Counts and timings of a finished generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens not computed for this request: reused from what its sequence held (an
    /// earlier generation's cells) or, in an [`Engine`](crate::Engine), copied from another
    /// slot that holds or just computed the same prefix. The rest, `prompt_tokens -
    /// cached_prompt_tokens`, were computed.
    pub cached_prompt_tokens: usize,
    /// Of `cached_prompt_tokens`, those copied from another of the engine's slots (0 outside
    /// an engine); the others came from the request's own slot.
    pub shared_prompt_tokens: usize,
    /// Tokens generated (an end-of-generation token is not counted).
    pub generated_tokens: usize,
    /// From the first `next()` to the first generated token.
    pub time_to_first_token: Duration,
    /// Prompt tokens computed per second.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
    /// Wall time of the whole generation.
    pub total_time: Duration,
    /// Tokens guessed by [speculative decoding](GenerateOptions::speculation) and decoded
    /// for checking (llama-server's `draft_n`); 0 without it.
    pub draft_tokens: usize,
    /// Of those, the ones the model's own picks confirmed (`draft_n_accepted`): each saved a
    /// decode.
    pub draft_tokens_accepted: usize,
}

/// One step of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it released. Text may be empty (a character split over
    /// tokens, or text held back while it could still start a stop string) or longer than
    /// the token (held text released).
    Token {
        /// The token id.
        id: Token,
        /// Text released at this step.
        text: String,
        /// Its log-probability and the most probable alternatives, when
        /// [`GenerateOptions::n_probs`] asks for them.
        logprobs: Option<TokenLogprobs>,
    },
    /// Held-back text released at the end, with no new token.
    Text(String),
    /// The last event.
    Done(Summary),
}

/// Holds back text that could still turn into a stop string.
#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub(crate) fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds text. Returns the text safe to emit, and the stop string if one matched (all
    /// text from the match on is dropped).
    pub(crate) fn push(&mut self, text: &str) -> (String, Option<String>) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), None);
        }
        let hit =
            self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s))).min_by_key(|(at, _)| *at);
        if let Some((at, s)) = hit {
            let s = s.clone();
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, Some(s));
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep_from = self.held.len();
        for (i, _) in self.held.char_indices() {
            let tail = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        let out = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        (out, None)
    }

    /// Releases whatever is held (the generation ended for another reason).
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out.push_str(&t);
            if hit.is_some() {
                return (out, hit);
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn stop_string_across_pieces_is_removed() {
        assert_eq!(run(&["END"], &["hello E", "N", "D tail"]), ("hello ".into(), Some("END".into())));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), Some("\n\n".into())));
    }

    #[test]
    fn partial_match_is_released_when_it_fails() {
        assert_eq!(run(&["END"], &["hello E", "N", "x"]), ("hello ENx".into(), None));
        assert_eq!(run(&["END"], &["EN"]), ("EN".into(), None));
    }

    #[test]
    fn held_text_is_never_emitted_early() {
        let stops = vec!["STOP".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("abcST").0, "abc");
        assert_eq!(m.push("O").0, "");
        let (t, hit) = m.push("P!");
        assert_eq!((t.as_str(), hit.as_deref()), ("", Some("STOP")));
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        assert_eq!(run(&["b", "a"], &["xaby"]), ("x".into(), Some("a".into())));
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), None));
        assert_eq!(run(&[], &["plain"]), ("plain".into(), None));
    }
}
