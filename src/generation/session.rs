//! A conversation on one context: [`Session`] remembers which tokens its generations left in
//! the KV cache, so the next prompt that starts the same way (the conversation so far plus a
//! new message) computes only what is new.

use crate::chat::{ChatMessage, ChatTemplate};
use crate::context::{Context, ContextConfig};
use crate::error::Result;
use crate::generate::SessionCache;
use crate::generate::{GenerateOptions, Generation};
use crate::model::Model;
use crate::vocab::Token;

/// A [`Context`] plus the record of what its sequence 0 holds, for prompt-prefix reuse across
/// generations.
///
/// The record lives here, not in the context, and only generations started here keep it:
/// [`context_mut`](Session::context_mut) (anything that could change the KV cache) forgets
/// it, so a stale record is never trusted.
///
/// ```
/// # fn main() -> rocm_llama::Result<()> {
/// # let path = rocm_llama::synth::tiny_model()?;
/// use rocm_llama::{ChatMessage, ChatTemplate, ContextConfig, GenerateOptions, LoadConfig, Model, Session};
///
/// let model = Model::load(&path, &LoadConfig::default())?;
/// let mut session = Session::new(&model, &ContextConfig::default().n_ctx(512))?;
/// let mut messages = vec![ChatMessage::user("Hello")];
/// let (reply, first) = session.chat(&messages, &ChatTemplate::Model, &GenerateOptions::greedy(8))?.collect_text()?;
/// messages.push(ChatMessage::assistant(reply));
/// messages.push(ChatMessage::user("And then?"));
/// let (_, second) = session.chat(&messages, &ChatTemplate::Model, &GenerateOptions::greedy(8))?.collect_text()?;
/// // The second turn computes only what the first did not leave in the cache.
/// assert!(second.cached_prompt_tokens > 0);
/// assert_eq!(first.cached_prompt_tokens, 0);
/// # Ok(())
/// # }
/// ```
pub struct Session<'m> {
    ctx: Context<'m>,
    cache: SessionCache,
}

impl<'m> Session<'m> {
    /// Creates a context for the session. Wraps `llama_init_from_model`.
    pub fn new(model: &'m Model, config: &ContextConfig) -> Result<Self> {
        Ok(Self::from_context(Context::new(model, config)?))
    }

    /// Takes over a context. Nothing of what it holds is reused: the first generation
    /// empties sequence 0.
    pub fn from_context(ctx: Context<'m>) -> Self {
        Session { ctx, cache: SessionCache::default() }
    }

    /// The context, to read from.
    pub fn context(&self) -> &Context<'m> {
        &self.ctx
    }

    /// The context, to change. The session forgets what sequence 0 holds, since the caller
    /// may change it; the next generation computes its whole prompt.
    pub fn context_mut(&mut self) -> &mut Context<'m> {
        self.cache.tokens.clear();
        &mut self.ctx
    }

    /// Gives the context back.
    pub fn into_context(self) -> Context<'m> {
        self.ctx
    }

    /// The tokens sequence 0 holds, as far as this session knows.
    pub fn cached_tokens(&self) -> &[Token] {
        self.cache.tokens.tokens()
    }

    /// Generates from a text prompt (tokenized with BOS as the model wants and with control
    /// tokens parsed), reusing the longest prefix it shares with what sequence 0 holds.
    pub fn generate(&mut self, prompt: &str, opts: &GenerateOptions) -> Result<Generation<'_, 'm>> {
        Generation::from_text(&mut self.ctx, Some(&mut self.cache), prompt, opts)
    }

    /// Formats `messages` with a chat template and generates the assistant's reply, reusing
    /// the cached conversation.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        template: &ChatTemplate,
        opts: &GenerateOptions,
    ) -> Result<Generation<'_, 'm>> {
        Generation::from_chat(&mut self.ctx, Some(&mut self.cache), messages, template, opts)
    }

    /// Saves what sequence 0 holds (its KV cells and the tokens they came from) to `path`, to
    /// [`load`](Session::load) later, in this process or another, on a context of the same
    /// model (its [fingerprint](Model::fingerprint)), llama.cpp and KV layout. Written to a
    /// temporary file first and renamed, so an interrupted save leaves an earlier file whole.
    /// Returns the bytes written.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// # let path = rocm_llama::synth::tiny_model()?;
    /// use rocm_llama::{ContextConfig, GenerateOptions, LoadConfig, Model, Session};
    ///
    /// let model = Model::load(&path, &LoadConfig::default())?;
    /// let file = std::env::temp_dir().join(format!("session-doc-{}.kv", std::process::id()));
    /// let mut session = Session::new(&model, &ContextConfig::default().n_ctx(512))?;
    /// session.generate("t1 t2 t3 t4", &GenerateOptions::greedy(4))?.collect_text()?;
    /// session.save(&file)?;
    ///
    /// let mut later = Session::new(&model, &ContextConfig::default().n_ctx(512))?;
    /// later.load(&file)?;
    /// let (_, summary) = later.generate("t1 t2 t3 t4 t5", &GenerateOptions::greedy(4))?.collect_text()?;
    /// assert!(summary.cached_prompt_tokens >= 4);
    /// # std::fs::remove_file(&file).ok();
    /// # Ok(())
    /// # }
    /// ```
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<u64> {
        crate::seq_state::save(&self.ctx, 0, self.cache.tokens.tokens(), path.as_ref())
    }

    /// Replaces what sequence 0 holds with a file written by [`save`](Session::save); the
    /// next generation reuses it like its own cache. A file of another model or llama.cpp, a
    /// truncated or changed file is an [`Error::StateFile`](crate::Error::StateFile) (nothing
    /// loaded, sequence 0 empty). Returns how many tokens it holds now.
    pub fn load(&mut self, path: impl AsRef<std::path::Path>) -> Result<usize> {
        self.cache.tokens.clear();
        let tokens = crate::seq_state::load(&mut self.ctx, 0, path.as_ref())?;
        self.cache.tokens.extend(&tokens);
        Ok(tokens.len())
    }

    /// Generates from prompt tokens, reusing the cached prefix.
    pub fn generate_tokens(&mut self, prompt: Vec<Token>, opts: &GenerateOptions) -> Result<Generation<'_, 'm>> {
        Generation::new(&mut self.ctx, Some(&mut self.cache), prompt, opts)
    }
}
