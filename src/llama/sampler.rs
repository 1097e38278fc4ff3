//! Token sampling: [`Sampler`] (a `llama_sampler` chain) and the plain-data
//! [`SamplingParams`] that describe one.

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use crate::context::Context;
use crate::error::{c_string, Error, Result};
use crate::model::Model;
use crate::vocab::Token;

/// The longest look-back a penalty or DRY stage takes: 1,048,576 tokens (llama.cpp
/// allocates the window when the stage is made).
pub const MAX_LOOKBACK: i32 = 1 << 20;

/// A chain of samplers that turns logits into a token. Wraps a `llama_sampler` chain.
///
/// Borrows the model: grammar and DRY samplers keep pointers into its vocabulary.
/// Build one with [`Sampler::builder`] or [`SamplingParams::build`].
pub struct Sampler<'m> {
    ptr: NonNull<sys::llama_sampler>,
    /// Candidate buffer reused by `sample_logits` (one entry per vocabulary token).
    scratch: Vec<sys::llama_token_data>,
    /// The chain is a lone greedy stage: `sample_logits` can take the arg-max directly.
    greedy_only: bool,
    /// Every stage can run inside llama.cpp's decode graph (backend sampling) and the chain
    /// ends by picking a token.
    device_capable: bool,
    /// The chain starts with top-k (nothing before it looks at other tokens): `sample_logits`
    /// hands llama.cpp only the k best candidates instead of the whole vocabulary.
    prefilter_k: Option<usize>,
    /// The model's vocabulary size: every token and every logits row is checked against it.
    n_vocab: usize,
    /// Index of the grammar stage in the chain. llama.cpp's grammar throws a C++ exception
    /// (which aborts the process when it reaches Rust) when it is made to accept a token it
    /// does not allow, so every token is checked against this stage before it is accepted.
    grammar_stage: Option<i32>,
    /// Tokens never picked (sorted): their logits count as -inf before the chain sees them.
    banned: Vec<Token>,
    _model: PhantomData<&'m Model>,
}

// SAFETY: a sampler chain is plain heap state plus read-only pointers into the model's vocab
// (which is Sync); llama.cpp allows using it from any one thread at a time. Not `Sync`:
// sampling mutates it.
unsafe impl Send for Sampler<'_> {}

impl<'m> Sampler<'m> {
    /// Starts an empty chain for `model`. Wraps `llama_sampler_chain_init`.
    pub fn builder(model: &'m Model) -> SamplerBuilder<'m> {
        crate::init::init();
        // SAFETY: returns a plain struct by value.
        let mut params = unsafe { sys::llama_sampler_chain_default_params() };
        params.no_perf = true;
        // SAFETY: valid params; a null return is handled.
        let chain = unsafe { sys::llama_sampler_chain_init(params) };
        SamplerBuilder {
            chain: NonNull::new(chain).map(|ptr| Sampler {
                ptr,
                scratch: Vec::new(),
                greedy_only: false,
                device_capable: false,
                prefilter_k: None,
                n_vocab: usize::try_from(model.vocab().n_tokens()).unwrap_or(0),
                grammar_stage: None,
                banned: Vec::new(),
                _model: PhantomData,
            }),
            model,
            error: None,
            stages: Vec::new(),
            first_top_k: None,
            grammar_stage: None,
            banned: Vec::new(),
        }
    }

    /// Greedy decoding: always the most likely token.
    pub fn greedy(model: &'m Model) -> Result<Sampler<'m>> {
        Sampler::builder(model).greedy().build()
    }

    /// Samples a token from batch index `index` of the context's last decode and accepts it
    /// into the chain's state (penalties, grammar). Wraps `llama_sampler_sample`; a chain
    /// with a grammar goes through [`sample_logits`](Sampler::sample_logits) instead, so that
    /// the grammar's verdict is checked before the token is accepted.
    pub fn sample(&mut self, ctx: &Context<'m>, index: i32) -> Result<Token> {
        if !ctx.has_output(index) {
            return Err(Error::NoOutput { index });
        }
        if self.grammar_stage.is_some() || !self.banned.is_empty() {
            return self.sample_logits(ctx.logits(index)?);
        }
        // SAFETY: live sampler and context; `index` produced logits in the last decode.
        let t = unsafe { sys::llama_sampler_sample(self.ptr.as_ptr(), ctx.raw(), index) };
        ctx.model().vocab().check(t)?;
        Ok(t)
    }

    /// Samples from raw logits (e.g. a row of [`Context::logits`], possibly on another
    /// thread): one logit per vocabulary token, so `logits.len()` must be the model's
    /// vocabulary size ([`Error::InvalidArgument`] otherwise). Wraps `llama_sampler_apply`; the
    /// chosen token is accepted into the chain, as `llama_sampler_sample` does, so both give
    /// the same tokens. With a grammar, a state in which the grammar allows no token at all is
    /// [`Error::Grammar`].
    pub fn sample_logits(&mut self, logits: &[f32]) -> Result<Token> {
        if logits.len() != self.n_vocab {
            return Err(Error::invalid(
                "logits",
                format!("sample_logits takes one logit per vocabulary token ({}), got {}", self.n_vocab, logits.len()),
            ));
        }
        if self.greedy_only {
            // Greedy alone needs no candidate array: the first maximum, as llama.cpp's greedy
            // sampler picks it.
            let t = self.first_allowed_max(logits)?;
            self.accept(t)?;
            return Ok(t);
        }
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        match self.prefilter_k.filter(|&k| k + self.banned.len() < logits.len()) {
            // The first stage keeps only the k best logits anyway: find them in one pass and
            // let the chain work on k candidates instead of the whole vocabulary (k more than
            // that when some tokens are banned, which then leave).
            Some(k) => {
                top_k_into(logits, k + self.banned.len(), &mut data);
                if !self.banned.is_empty() {
                    data.retain(|d| self.banned.binary_search(&d.id).is_err());
                    data.truncate(k);
                }
            }
            None => {
                data.extend(logits.iter().enumerate().map(|(i, &logit)| sys::llama_token_data {
                    id: i as Token,
                    logit,
                    p: 0.0,
                }));
                for &b in &self.banned {
                    data[b as usize].logit = f32::NEG_INFINITY;
                }
            }
        }
        let result = self.apply_and_pick(&mut data);
        self.scratch = data;
        result
    }

    /// Greedy's pick with the banned tokens left out: the row's first maximum, or, in the rare
    /// step where that is a banned token, the first maximum of a copy without them.
    fn first_allowed_max(&self, logits: &[f32]) -> Result<Token> {
        let none = || Error::Sampling("no logits to sample from".into());
        let t = first_max(logits).ok_or_else(none)? as Token;
        if self.banned.binary_search(&t).is_err() {
            return Ok(t);
        }
        let mut row = logits.to_vec();
        for &b in &self.banned {
            row[b as usize] = f32::NEG_INFINITY;
        }
        let t = first_max(&row).ok_or_else(none)? as Token;
        if self.banned.binary_search(&t).is_ok() {
            return Err(Error::Sampling("every token with a finite logit is banned".into()));
        }
        Ok(t)
    }

    fn apply_and_pick(&mut self, data: &mut [sys::llama_token_data]) -> Result<Token> {
        if data.is_empty() {
            return Err(Error::Sampling("no logits to sample from".into()));
        }
        let mut arr =
            sys::llama_token_data_array { data: data.as_mut_ptr(), size: data.len(), selected: -1, sorted: false };
        // SAFETY: `arr` points at `data`, alive for the call.
        unsafe { sys::llama_sampler_apply(self.ptr.as_ptr(), &mut arr) };
        let sel = usize::try_from(arr.selected).ok().filter(|&s| s < arr.size).ok_or_else(|| {
            Error::Sampling("the sampler chain selected no token (end it with greedy or dist)".into())
        })?;
        // SAFETY: `sel < size`; samplers may reorder `data` in place but keep it within `size`.
        let t = unsafe { (*arr.data.add(sel)).id };
        if self.grammar_stage.is_some() && !self.grammar_allows(t)? {
            // Every candidate was rejected (the grammar wants text no token can give).
            return Err(Error::Grammar(format!(
                "the grammar allows no token at this point (the chain picked token {t}, which it rejects)"
            )));
        }
        self.accept(t)?;
        Ok(t)
    }

    /// Feeds a token into the chain's state (for tokens chosen elsewhere, e.g. a prompt).
    /// Wraps `llama_sampler_accept`.
    ///
    /// A token outside the vocabulary is [`Error::InvalidToken`]. With a grammar stage, a
    /// token the grammar does not allow here (including an end-of-generation token before
    /// the grammar can end) is [`Error::Grammar`] and leaves the chain's state unchanged:
    /// llama.cpp would throw (a process abort) or stop the process on it.
    pub fn accept(&mut self, token: Token) -> Result<()> {
        if usize::try_from(token).map_or(true, |t| t >= self.n_vocab) {
            return Err(Error::InvalidToken { token, n_vocab: self.n_vocab as i32 });
        }
        if self.grammar_stage.is_some() && !self.grammar_allows(token)? {
            return Err(Error::Grammar(format!("the grammar does not allow token {token} at this point")));
        }
        // SAFETY: live sampler; the token is in the vocabulary and (with a grammar) allowed by
        // it, so no stage throws.
        unsafe { sys::llama_sampler_accept(self.ptr.as_ptr(), token) };
        Ok(())
    }

    /// Asks the grammar stage alone whether `token` may come next: applies it to a one-token
    /// candidate list and sees whether it was masked to -inf. llama.cpp's grammar masks
    /// exactly the tokens its accept would throw on (and also empty-text tokens, which it
    /// would take without effect: refused here too, the safe side). The grammar's apply reads
    /// its state without changing it, and no other stage (no RNG) runs.
    fn grammar_allows(&mut self, token: Token) -> Result<bool> {
        let Some(stage) = self.grammar_stage else { return Ok(true) };
        // SAFETY: `stage` is an index this builder recorded when it added the grammar.
        let grammar = unsafe { sys::llama_sampler_chain_get(self.ptr.as_ptr(), stage) };
        if grammar.is_null() {
            return Err(Error::Grammar("the chain lost its grammar stage".into()));
        }
        let mut one = [sys::llama_token_data { id: token, logit: 0.0, p: 0.0 }];
        let mut arr = sys::llama_token_data_array { data: one.as_mut_ptr(), size: 1, selected: -1, sorted: false };
        // SAFETY: `arr` points at `one`, alive for the call; the token id is in the vocabulary
        // (checked by every caller), which is all the grammar's apply reads it for.
        unsafe { sys::llama_sampler_apply(grammar, &mut arr) };
        Ok(one[0].logit != f32::NEG_INFINITY)
    }

    /// Clears the chain's state. Wraps `llama_sampler_reset`.
    pub fn reset(&mut self) {
        // SAFETY: live sampler.
        unsafe { sys::llama_sampler_reset(self.ptr.as_ptr()) };
    }

    /// The raw pointer.
    ///
    /// # Safety
    /// Valid while `self` lives; do not free it.
    pub unsafe fn as_ptr(&self) -> *mut sys::llama_sampler {
        self.ptr.as_ptr()
    }
}

/// The stages llama.cpp can run inside the decode graph in the pinned version (they implement
/// its backend-sampling interface); grammar, typical, DRY and the others run on the host.
/// Penalties have a graph form too, but their token history is kept on the host, so chains
/// with them stay there.
const DEVICE_STAGES: &[&str] = &["greedy", "dist", "temperature", "top-k", "top-p", "min-p"];

impl Sampler<'_> {
    /// Whether every stage can run inside llama.cpp's decode graph, so the chain can be
    /// attached to a sequence with [`Context::set_device_sampler`]: greedy, dist,
    /// temperature, top-k, top-p and min-p, ending with greedy or dist.
    pub fn runs_on_device(&self) -> bool {
        self.device_capable
    }

    /// Records a token the device picked (stages that keep state see it). Wraps
    /// `llama_sampler_accept`; only device chains come here, which hold no grammar.
    pub(crate) fn accept_device_token(&mut self, token: Token) {
        // SAFETY: live sampler; a device chain has no grammar stage, so no token can make
        // llama.cpp throw.
        unsafe { sys::llama_sampler_accept(self.ptr.as_ptr(), token) };
    }
}

impl Drop for Sampler<'_> {
    fn drop(&mut self) {
        // SAFETY: the chain owns the samplers added to it and frees them with itself.
        unsafe { sys::llama_sampler_free(self.ptr.as_ptr()) };
    }
}

/// The index of the first largest value, compared with `>` as llama.cpp's greedy sampler does
/// (a NaN never wins, except in first place), `None` for an empty row. A plain scan: a two-pass vector version measured slower (55 vs 47 µs
/// over 128k logits on the CI machine, 2026-11-29).
pub(crate) fn first_max(row: &[f32]) -> Option<usize> {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    (!row.is_empty()).then_some(best)
}

/// Puts the `k` largest logits (first occurrences win ties) into `out`, largest first.
pub(crate) fn top_k_into(logits: &[f32], k: usize, out: &mut Vec<sys::llama_token_data>) {
    // `best` is kept sorted descending; a logit enters only if it beats the current k-th.
    // Blocks of 64 in which no logit beats it are skipped whole: once `best` is full that is
    // nearly every block, and the test compiles to vector compares (a third of the time of a
    // compare per logit over 128k logits).
    const BLOCK: usize = 64;
    let mut best: Vec<(f32, i32)> = Vec::with_capacity(k + 1);
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if best.len() == k {
            let kth = best[k - 1].0;
            let mut any = false;
            for &l in block {
                any |= l > kth;
            }
            if !any {
                continue;
            }
        }
        for (j, &l) in block.iter().enumerate() {
            if (best.len() == k && l <= best[k - 1].0) || l.is_nan() {
                continue;
            }
            let at = best.partition_point(|&(b, _)| b >= l);
            best.insert(at, (l, (b * BLOCK + j) as i32));
            best.truncate(k);
        }
    }
    out.extend(best.into_iter().map(|(logit, id)| sys::llama_token_data { id, logit, p: 0.0 }));
}

/// Builds a [`Sampler`] chain stage by stage. Stages run in the order they are added; end
/// with [`greedy`](SamplerBuilder::greedy) or [`dist`](SamplerBuilder::dist).
pub struct SamplerBuilder<'m> {
    chain: Option<Sampler<'m>>,
    model: &'m Model,
    error: Option<Error>,
    /// Names of the stages added so far.
    stages: Vec<&'static str>,
    /// The k of a top-k stage added first.
    first_top_k: Option<usize>,
    /// The chain index of the grammar stage.
    grammar_stage: Option<i32>,
    /// Tokens the chain never picks.
    banned: Vec<Token>,
}

impl<'m> SamplerBuilder<'m> {
    fn push(mut self, s: *mut sys::llama_sampler, what: &'static str) -> Self {
        self.stages.push(what);
        if self.error.is_some() {
            if !s.is_null() {
                // SAFETY: a fresh sampler nobody else owns.
                unsafe { sys::llama_sampler_free(s) };
            }
            return self;
        }
        match (&self.chain, s.is_null()) {
            (Some(chain), false) => {
                // SAFETY: the chain takes ownership of `s`.
                unsafe { sys::llama_sampler_chain_add(chain.ptr.as_ptr(), s) };
            }
            (_, true) => {
                self.error = Some(Error::Llama { call: "llama_sampler_init", reason: format!("no {what} sampler") })
            }
            (None, false) => {
                // SAFETY: as above.
                unsafe { sys::llama_sampler_free(s) };
                self.error = Some(Error::Llama { call: "llama_sampler_chain_init", reason: "no sampler chain".into() });
            }
        }
        self
    }

    fn fail(mut self, e: Error) -> Self {
        self.error.get_or_insert(e);
        self
    }

    #[allow(clippy::result_large_err)]
    fn finite(self, name: &str, v: f32) -> std::result::Result<Self, Self> {
        if v.is_finite() {
            Ok(self)
        } else {
            Err(self.fail(Error::invalid("sampling", format!("{name} must be finite, got {v}"))))
        }
    }

    /// Picks the most likely token. Wraps `llama_sampler_init_greedy`.
    pub fn greedy(self) -> Self {
        // SAFETY: plain constructor.
        let s = unsafe { sys::llama_sampler_init_greedy() };
        self.push(s, "greedy")
    }

    /// Draws from the distribution with a seeded RNG. Wraps `llama_sampler_init_dist`.
    pub fn dist(self, seed: u32) -> Self {
        // SAFETY: plain constructor.
        let s = unsafe { sys::llama_sampler_init_dist(seed) };
        self.push(s, "dist")
    }

    /// Scales logits by 1/`t`. Wraps `llama_sampler_init_temp`.
    pub fn temperature(self, t: f32) -> Self {
        match self.finite("temperature", t) {
            // SAFETY: plain constructor.
            Ok(b) => b.push(unsafe { sys::llama_sampler_init_temp(t) }, "temperature"),
            Err(b) => b,
        }
    }

    /// Keeps the `k` most likely tokens (`k <= 0` disables). Wraps `llama_sampler_init_top_k`.
    pub fn top_k(mut self, k: i32) -> Self {
        if self.stages.is_empty() && k > 0 {
            self.first_top_k = Some(k as usize);
        }
        // SAFETY: plain constructor.
        let s = unsafe { sys::llama_sampler_init_top_k(k) };
        self.push(s, "top-k")
    }

    /// Nucleus sampling. Wraps `llama_sampler_init_top_p`.
    pub fn top_p(self, p: f32, min_keep: usize) -> Self {
        match self.finite("top_p", p) {
            // SAFETY: plain constructor.
            Ok(b) => b.push(unsafe { sys::llama_sampler_init_top_p(p, min_keep) }, "top-p"),
            Err(b) => b,
        }
    }

    /// Drops tokens below `p` times the top probability. Wraps `llama_sampler_init_min_p`.
    pub fn min_p(self, p: f32, min_keep: usize) -> Self {
        match self.finite("min_p", p) {
            // SAFETY: plain constructor.
            Ok(b) => b.push(unsafe { sys::llama_sampler_init_min_p(p, min_keep) }, "min-p"),
            Err(b) => b,
        }
    }

    /// Locally typical sampling. Wraps `llama_sampler_init_typical`.
    pub fn typical(self, p: f32, min_keep: usize) -> Self {
        match self.finite("typical_p", p) {
            // SAFETY: plain constructor.
            Ok(b) => b.push(unsafe { sys::llama_sampler_init_typical(p, min_keep) }, "typical"),
            Err(b) => b,
        }
    }

    /// The look-back window of a penalty stage: `-1` means the model's training context
    /// (llama.cpp's own samplers would read -1 as 0, switching the stage off), and at most
    /// [`MAX_LOOKBACK`] tokens (llama.cpp allocates the window up front; a huge one is an
    /// allocation failure, which aborts).
    fn lookback(&self, what: &str, last_n: i32) -> Result<i32> {
        let n = if last_n == -1 { self.model.n_ctx_train().min(MAX_LOOKBACK as u32) as i32 } else { last_n };
        if !(0..=MAX_LOOKBACK).contains(&n) {
            return Err(Error::invalid(
                "look-back",
                format!("{what} look-back must be -1 (the model's context) or 0..={MAX_LOOKBACK} tokens, got {last_n}"),
            ));
        }
        Ok(n)
    }

    /// Repetition, frequency and presence penalties over the last `last_n` tokens (`-1`: the
    /// model's training context). Wraps `llama_sampler_init_penalties`.
    pub fn penalties(self, last_n: i32, repeat: f32, frequency: f32, presence: f32) -> Self {
        if !(repeat.is_finite() && repeat > 0.0) {
            return self.fail(Error::invalid("repeat_penalty", format!("must be > 0, got {repeat}")));
        }
        if !(frequency.is_finite() && presence.is_finite()) {
            return self.fail(Error::invalid("penalties", "must be finite"));
        }
        let last_n = match self.lookback("penalty", last_n) {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        let n_vocab = self.model.vocab().n_tokens();
        // SAFETY: validated values.
        let s = unsafe { sys::llama_sampler_init_penalties(n_vocab, last_n, repeat, frequency, presence) };
        self.push(s, "penalties")
    }

    /// DRY ("don't repeat yourself") penalty over the last `last_n` tokens (`-1`: the
    /// model's training context). Wraps `llama_sampler_init_dry`.
    pub fn dry(self, multiplier: f32, base: f32, allowed_length: i32, last_n: i32, breakers: &[&str]) -> Self {
        if !(multiplier.is_finite() && base.is_finite()) || allowed_length < 0 {
            return self.fail(Error::invalid("dry", "settings out of range"));
        }
        let last_n = match self.lookback("DRY", last_n) {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        let owned: Result<Vec<CString>> = breakers.iter().map(|b| c_string("DRY sequence breaker", b)).collect();
        let owned = match owned {
            Ok(v) => v,
            Err(e) => return self.fail(e),
        };
        let mut ptrs: Vec<*const std::ffi::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        let vocab = self.model.vocab().raw();
        // SAFETY: the vocab lives for 'm (the sampler borrows the model); the breaker strings
        // are copied by llama.cpp during the call.
        let s = unsafe {
            sys::llama_sampler_init_dry(vocab, multiplier, base, allowed_length, last_n, ptrs.as_mut_ptr(), ptrs.len())
        };
        self.push(s, "DRY")
    }

    /// Constrains output to a GBNF grammar starting at rule `root`. A grammar llama.cpp cannot
    /// parse is [`Error::Grammar`]. Wraps `llama_sampler_init_grammar`.
    pub fn grammar(mut self, gbnf: &str, root: &str) -> Self {
        let (g, r) = match (c_string("grammar", gbnf), c_string("grammar root", root)) {
            (Ok(g), Ok(r)) => (g, r),
            (Err(e), _) | (_, Err(e)) => return self.fail(e),
        };
        if !gbnf.lines().any(|l| l.trim_start().starts_with(root) && l.contains("::=")) {
            return self.fail(Error::Grammar(format!("no rule named {root:?}")));
        }
        if self.grammar_stage.is_some() {
            return self.fail(Error::Grammar("a chain takes one grammar".into()));
        }
        if let Err(e) = crate::gbnf::check(gbnf) {
            return self.fail(e);
        }
        let vocab = self.model.vocab().raw();
        // SAFETY: the vocab lives for 'm; the strings are valid C strings for the call.
        let (s, log) =
            crate::init::capture_log(|| unsafe { sys::llama_sampler_init_grammar(vocab, g.as_ptr(), r.as_ptr()) });
        if s.is_null() {
            // llama.cpp's parser prints where it failed on stderr, not to its log; what the log
            // has beyond "failed to parse grammar" goes to the caller.
            let why: Vec<&str> = log
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty() && !l.contains("failed to parse grammar"))
                .collect();
            let why: String = why.join("; ").chars().take(600).collect();
            return self.fail(Error::Grammar(if why.is_empty() {
                "llama.cpp's GBNF parser refused it (rules are `name ::= ...` with quoted literals, [classes] \
                 and balanced parentheses)"
                    .into()
            } else {
                format!("llama.cpp's GBNF parser refused it: {why}")
            }));
        }
        self.grammar_stage = i32::try_from(self.stages.len()).ok();
        self.push(s, "grammar")
    }

    /// Adds `bias` to each listed token's logit before the later stages (OpenAI's and
    /// llama-server's `logit_bias`; a bias of -inf is a ban, see [`ban`](Self::ban)). A token
    /// outside the vocabulary is [`Error::InvalidToken`], a NaN or +inf bias an
    /// [`Error::InvalidArgument`]. Wraps `llama_sampler_init_logit_bias`; such a chain runs on
    /// the host.
    pub fn logit_bias(self, biases: &[(Token, f32)]) -> Self {
        let n_vocab = self.model.vocab().n_tokens();
        let mut finite = Vec::new();
        let mut banned = Vec::new();
        for &(t, b) in biases {
            if !(0..n_vocab).contains(&t) {
                return self.fail(Error::InvalidToken { token: t, n_vocab });
            }
            match b {
                b if b.is_finite() => finite.push(sys::llama_logit_bias { token: t, bias: b }),
                b if b == f32::NEG_INFINITY => banned.push(t),
                b => {
                    return self.fail(Error::invalid(
                        "logit_bias",
                        format!("token {t}: a bias must be finite or -inf, not {b}"),
                    ))
                }
            }
        }
        let this = if banned.is_empty() { self } else { self.ban(&banned) };
        if finite.is_empty() {
            return this;
        }
        // SAFETY: `finite` holds `len` entries with ids in the vocabulary; llama.cpp copies them.
        let s = unsafe { sys::llama_sampler_init_logit_bias(n_vocab, finite.len() as i32, finite.as_ptr()) };
        this.push(s, "logit-bias")
    }

    /// Never picks these tokens: their logits count as -inf before any stage sees them (as a
    /// logit bias of -inf would, without giving up the top-k shortcut). A token outside the
    /// vocabulary is [`Error::InvalidToken`]. A chain with banned tokens runs on the host.
    pub fn ban(mut self, tokens: &[Token]) -> Self {
        let n_vocab = self.model.vocab().n_tokens();
        for &t in tokens {
            if !(0..n_vocab).contains(&t) {
                return self.fail(Error::InvalidToken { token: t, n_vocab });
            }
            self.banned.push(t);
        }
        self.banned.sort_unstable();
        self.banned.dedup();
        self
    }

    /// Finishes the chain, or returns the first error any stage hit.
    pub fn build(self) -> Result<Sampler<'m>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut chain = self
            .chain
            .ok_or_else(|| Error::Llama { call: "llama_sampler_chain_init", reason: "no sampler chain".into() })?;
        chain.greedy_only = self.stages == ["greedy"];
        chain.device_capable = self.stages.iter().all(|s| DEVICE_STAGES.contains(s))
            && matches!(self.stages.last(), Some(&"greedy" | &"dist"))
            && self.banned.is_empty();
        chain.prefilter_k = self.first_top_k;
        chain.grammar_stage = self.grammar_stage;
        chain.banned = self.banned;
        Ok(chain)
    }
}

/// Sampling settings as plain data (serializable, cheap to clone, one per request).
/// [`build`](SamplingParams::build) turns them into a [`Sampler`].
///
/// Order of the chain: grammar, penalties, DRY, top-k, typical, top-p, min-p, temperature,
/// then dist (or greedy when `temperature <= 0`).
///
/// ```
/// use rocm_llama::SamplingParams;
///
/// let params = SamplingParams::default().temperature(0.7).top_p(0.9).seed(42).grammar(r#"root ::= "yes" | "no""#.to_string());
/// assert!(!params.is_greedy());
/// assert!(SamplingParams::greedy().is_greedy());
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SamplingParams {
    /// Temperature; `<= 0` means greedy.
    pub temperature: f32,
    /// Top-k (`0` disables).
    pub top_k: i32,
    /// Top-p (`1.0` disables).
    pub top_p: f32,
    /// Min-p (`0.0` disables).
    pub min_p: f32,
    /// Typical-p (`1.0` disables).
    pub typical_p: f32,
    /// Repetition penalty (`1.0` disables).
    pub repeat_penalty: f32,
    /// Frequency penalty (`0.0` disables).
    pub frequency_penalty: f32,
    /// Presence penalty (`0.0` disables).
    pub presence_penalty: f32,
    /// Tokens the penalties look back over (-1: the model's training context).
    pub penalty_last_n: i32,
    /// DRY multiplier (`0.0` disables).
    pub dry_multiplier: f32,
    /// DRY base.
    pub dry_base: f32,
    /// DRY allowed length.
    pub dry_allowed_length: i32,
    /// DRY look-back (-1: whole context).
    pub dry_penalty_last_n: i32,
    /// Strings that break a DRY repetition (`None`: llama.cpp's default `\n`, `:`, `"`, `*`).
    pub dry_sequence_breakers: Option<Vec<String>>,
    /// Added to the listed tokens' logits before any other stage but the grammar (-inf bans).
    pub logit_bias: Vec<(Token, f32)>,
    /// RNG seed for `dist`.
    pub seed: u32,
    /// A GBNF grammar whose root rule is `root`.
    pub grammar: Option<String>,
    /// Where the chain runs: on the host after each decode, or inside the decode graph on the
    /// model's output device (see [`SamplerPlacement`]).
    pub placement: SamplerPlacement,
    /// Never pick an end-of-generation token, so generation runs to its token budget (or a
    /// stop string, or the context's end): for benchmarks that need a fixed length. llama-server
    /// calls it `ignore_eos`. Such a chain runs on the host.
    pub ignore_eos: bool,
}

/// Where a request's sampler chain runs.
///
/// On the device the chain is part of llama.cpp's decode graph (its experimental backend
/// sampling): only the picked token comes back instead of a row of logits per sequence, which
/// saves the copy and the host-side work for many sequences on a GPU. Only chains of greedy,
/// dist, temperature, top-k, top-p and min-p can go there; others always run on the host.
/// Greedy picks the same tokens on both; dist draws from the same distribution with the same
/// RNG, but may pick other tokens for a seed, because the device walks the candidates in
/// another order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SamplerPlacement {
    /// On the host (the default, as the faster one measured). On an H200 with a synthetic
    /// llama3-8b (2026-11-28, `scripts/gpu/compare.sh`), the engine's parallel host sampling
    /// gave 3,735 tokens/s at 64 streams against 2,560 on the device (default chain) and 3,765
    /// against 3,300 for greedy, and attaching a device chain delays the first token at one
    /// stream by 19 to 37 ms (llama.cpp plans its graph again). Not measured on AMD GPUs.
    #[default]
    Host,
    /// On the device whenever the chain can run there (also on the CPU backend).
    Device,
}

impl SamplerPlacement {
    /// Whether a chain that can run on the device ([`Sampler::runs_on_device`]) goes there.
    pub fn prefers_device(self) -> bool {
        match self {
            SamplerPlacement::Device => true,
            SamplerPlacement::Host => false,
        }
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: -1,
            dry_sequence_breakers: None,
            logit_bias: Vec::new(),
            seed: 0xFFFF_FFFF,
            grammar: None,
            placement: SamplerPlacement::Host,
            ignore_eos: false,
        }
    }
}

crate::config::setters!(SamplingParams {
    temperature: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    typical_p: f32,
    repeat_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    penalty_last_n: i32,
    dry_multiplier: f32,
    dry_base: f32,
    dry_allowed_length: i32,
    dry_penalty_last_n: i32,
    logit_bias: Vec<(Token, f32)>,
    seed: u32,
    placement: SamplerPlacement,
    ignore_eos: bool,
} optional {
    grammar: String,
    dry_sequence_breakers: Vec<String>,
});

impl SamplingParams {
    /// Greedy decoding (temperature 0), deterministic.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// Whether this picks the most likely token every time.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Builds the sampler chain for `model`.
    pub fn build<'m>(&self, model: &'m Model) -> Result<Sampler<'m>> {
        let mut b = Sampler::builder(model);
        if self.ignore_eos {
            b = b.ban(model.eog_tokens());
        }
        if let Some(g) = &self.grammar {
            b = b.grammar(g, "root");
        }
        if !self.logit_bias.is_empty() {
            b = b.logit_bias(&self.logit_bias);
        }
        if self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0 {
            b = b.penalties(self.penalty_last_n, self.repeat_penalty, self.frequency_penalty, self.presence_penalty);
        }
        if self.dry_multiplier != 0.0 {
            let breakers: Vec<&str> = match &self.dry_sequence_breakers {
                Some(v) => v.iter().map(String::as_str).collect(),
                None => vec!["\n", ":", "\"", "*"],
            };
            b = b.dry(self.dry_multiplier, self.dry_base, self.dry_allowed_length, self.dry_penalty_last_n, &breakers);
        }
        if self.is_greedy() {
            return b.greedy().build();
        }
        if self.top_k > 0 {
            b = b.top_k(self.top_k);
        }
        if self.typical_p < 1.0 {
            b = b.typical(self.typical_p, 1);
        }
        if self.top_p < 1.0 {
            b = b.top_p(self.top_p, 1);
        }
        if self.min_p > 0.0 {
            b = b.min_p(self.min_p, 1);
        }
        b.temperature(self.temperature).dist(self.seed).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_prefilter_keeps_the_k_best_first_on_ties() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0, f32::NAN, 7.0, 2.0];
        let mut out = Vec::new();
        top_k_into(&logits, 3, &mut out);
        let got: Vec<(i32, f32)> = out.iter().map(|d| (d.id, d.logit)).collect();
        assert_eq!(got, vec![(6, 7.0), (1, 3.0), (3, 3.0)]);
        out.clear();
        top_k_into(&logits, 1, &mut out);
        assert_eq!(out[0].id, 6);
    }

    #[test]
    fn first_max_is_the_first_largest_and_skips_nan() {
        assert_eq!(first_max(&[]), None);
        assert_eq!(first_max(&[1.0]), Some(0));
        assert_eq!(first_max(&[f32::NAN, f32::NAN]), Some(0));
        assert_eq!(first_max(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), Some(0));
        let mut row: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32).collect();
        row[17] = f32::NAN;
        // 100.0 first appears where (i * 37) % 101 == 100, i.e. i = 30.
        assert_eq!(first_max(&row), Some(30));
        row[999] = 500.0;
        assert_eq!(first_max(&row), Some(999), "in the tail after the last full block");
        row[3] = 500.0;
        assert_eq!(first_max(&row), Some(3), "ties: the first");
    }

    #[test]
    fn top_k_prefilter_matches_a_stable_sort_across_blocks() {
        // Few distinct values, so ties cross the 16-logit blocks; a fixed LCG for the data.
        let mut x = 12345u64;
        let logits: Vec<f32> = (0..5000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 33) % 97) as f32 / 7.0
            })
            .collect();
        for k in [1, 5, 40, 200] {
            let mut want: Vec<(i32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as i32, l)).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1));
            want.truncate(k);
            let mut out = Vec::new();
            top_k_into(&logits, k, &mut out);
            let got: Vec<(i32, f32)> = out.iter().map(|d| (d.id, d.logit)).collect();
            assert_eq!(got, want, "k = {k}");
        }
    }
}
