//! `run` and `chat`: one model, one context, text streamed to stdout. Ctrl-C stops the
//! reply being written (the conversation goes on); a second Ctrl-C, or one while no reply is
//! being written, exits with status 130.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use clap::Args;
use rocm_llama::{
    CancelToken, ChatMessage, ChatOptions, ChatTemplate, Context, Event, Generation, Model, Session, Summary,
};

use crate::options::{
    context_config, generate_options, load_model, AdapterArgs, ContextArgs, ModelArgs, SamplingArgs, SpeculationArgs,
};
use crate::signals::{self, Action, Signal};
use crate::{AnyResult, UserError};

/// Where the prompt comes from, and everything a generation needs (`run` and `chat`).
#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt (for `chat`, a single user message). Without it, --prompt or --file, `run`
    /// reads the prompt from stdin and `chat` reads one message per line (a conversation).
    #[arg(conflicts_with_all = ["prompt", "file"])]
    text: Option<String>,
    /// The prompt.
    #[arg(short, long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(short, long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    adapters: AdapterArgs,
    #[command(flatten)]
    speculation: SpeculationArgs,
    /// Print one JSON object per reply (text and summary) to stdout instead of streaming.
    #[arg(long)]
    json: bool,
    /// With --json, list every token with its log-probability and the N most probable
    /// tokens at its step (the model's distribution before sampling).
    #[arg(long, value_name = "N", requires = "json")]
    logprobs: Option<usize>,
    /// Keep the KV state in this file (as llama-cli's --prompt-cache): loaded before the
    /// prompt, when the file exists, so a prompt that starts the same way computes only what
    /// is new; written after each reply. A file of another model is an error.
    #[arg(long, value_name = "FILE")]
    prompt_cache: Option<PathBuf>,
    /// With --prompt-cache: load the file but never write it.
    #[arg(long, requires = "prompt_cache")]
    prompt_cache_ro: bool,
    /// Turn \n, \t, \\, \" and \' in the prompt into the characters they name (-e, as llama-cli).
    #[arg(long, overrides_with = "no_escape")]
    escape: bool,
    /// Take the prompt as written (the default here).
    #[arg(long, hide = true)]
    no_escape: bool,
    /// llama-cli's -no-cnv: `run` completes raw text already; for `chat` an error.
    #[arg(long, hide = true)]
    no_cnv: bool,
    /// llama-cli's -cnv: `chat` converses already; for `run` an error.
    #[arg(long, hide = true)]
    conversation: bool,
    /// llama-cli's --keep (tokens kept when the context shifts): accepted with a note; the
    /// context never shifts here (generation stops at its end).
    #[arg(long, hide = true, allow_negative_numbers = true)]
    keep: Option<i64>,
}

/// `\n`, `\t`, `\r`, `\\`, `\"` and `\'` as the characters they name; any other backslash stays.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

impl GenerateArgs {
    /// llama-cli's flags that mean nothing here (a note) or the other subcommand (an error).
    fn check_compat(&self, chat: bool) -> AnyResult<()> {
        if chat && self.no_cnv {
            return Err(UserError::boxed(
                "-no-cnv: `chat` always converses; use `rocm-llama run` for a raw completion",
            ));
        }
        if !chat && self.conversation {
            return Err(UserError::boxed("-cnv: `run` completes raw text; use `rocm-llama chat` to converse"));
        }
        if self.keep.is_some() {
            eprintln!("note: --keep has no effect: the context never shifts here; generation stops at its end");
        }
        Ok(())
    }

    /// Loads --lora and --control-vector: the control vector is set on the session's context
    /// (before anything is computed in it), the adapters are returned for the options.
    fn apply_adapters(
        &self,
        model: &std::sync::Arc<Model>,
        session: &mut Session<'_>,
    ) -> AnyResult<Option<Vec<(rocm_llama::LoraAdapter, f32)>>> {
        if !self.adapters.any() {
            return Ok(None);
        }
        let (lora, vector) = self.adapters.load(model)?;
        if let Some((v, layers)) = &vector {
            session.context_mut().set_control_vector(Some((v, layers.clone())))?;
        }
        Ok((!lora.is_empty()).then_some(lora))
    }

    /// Loads --prompt-cache into the session, when given and present.
    fn load_prompt_cache(&self, session: &mut Session<'_>) -> AnyResult<()> {
        let Some(path) = self.prompt_cache.as_deref().filter(|p| p.exists()) else { return Ok(()) };
        let n = session.load(path).map_err(|e| {
            UserError::boxed(format!("--prompt-cache: {e} (delete the file or name another to start over)"))
        })?;
        if !self.json {
            eprintln!("prompt cache: {n} tokens from {}", path.display());
        }
        Ok(())
    }

    /// Writes the session's state to --prompt-cache, unless read-only.
    fn save_prompt_cache(&self, session: &Session<'_>) -> AnyResult<()> {
        match self.prompt_cache.as_deref() {
            Some(path) if !self.prompt_cache_ro => {
                session.save(path).map_err(|e| UserError::boxed(format!("--prompt-cache: {e}")))?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The prompt from the positional argument, --prompt or --file.
    fn given_prompt(&mut self) -> AnyResult<Option<String>> {
        let prompt = match (self.text.take().or(self.prompt.take()), &self.file) {
            (Some(p), _) => Some(p),
            (None, Some(f)) => {
                Some(std::fs::read_to_string(f).map_err(|e| UserError::boxed(format!("{}: {e}", f.display())))?)
            }
            (None, None) => None,
        };
        Ok(prompt.map(|p| if self.escape { unescape(&p) } else { p }))
    }
}

/// `template`: the exact prompt a conversation renders to.
#[derive(Args)]
pub struct TemplateArgs {
    /// A GGUF file (the vocabulary is enough: no weights are read, a truncated file works) or a
    /// model name from `rocm-llama models`.
    #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
    model: Option<String>,
    /// The conversation as JSON (`[{"role": "user", "content": "Hi"}]`), or a file holding it
    /// [default: standard input].
    #[arg(value_name = "JSON|FILE")]
    messages: Option<String>,
    /// A Jinja chat template file, or one of llama.cpp's built-in formats by name [default:
    /// the model's own].
    #[arg(long = "chat-template", visible_alias = "template", value_name = "FILE|NAME")]
    template: Option<String>,
    /// Template variables as a JSON object.
    #[arg(long, value_name = "JSON")]
    chat_template_kwargs: Option<String>,
    /// Tools (OpenAI's list of `{"type": "function", ...}`) as JSON, or a file.
    #[arg(long, value_name = "JSON|FILE")]
    tools: Option<String>,
    /// End without opening the assistant's turn.
    #[arg(long)]
    no_generation_prompt: bool,
    /// Print the prompt's token ids too (after the text, as `tokenize --ids` prints them).
    #[arg(long)]
    tokens: bool,
}

/// A JSON argument given inline or as a file.
fn json_arg(what: &str, arg: &str) -> AnyResult<serde_json::Value> {
    let path = std::path::Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| UserError::boxed(format!("{what} {arg}: {e}")))?
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text).map_err(|e| UserError::boxed(format!("{what}: neither a file nor JSON ({e})")))
}

pub fn template(args: TemplateArgs) -> AnyResult<()> {
    let messages = match &args.messages {
        Some(m) => json_arg("messages", m)?,
        None => serde_json::from_str(&read_stdin()?)
            .map_err(|e| UserError::boxed(format!("the messages on standard input are not JSON ({e})")))?,
    };
    let messages: Vec<ChatMessage> = serde_json::from_value(messages).map_err(|e| {
        UserError::boxed(format!("messages: expected a list of {{\"role\", \"content\"}} objects ({e})"))
    })?;
    let template = chat_template(args.template)?;
    let mut options = chat_options(args.chat_template_kwargs.as_deref())?;
    if let Some(t) = &args.tools {
        options = options.tools(Some(json_arg("--tools", t)?));
    }
    options = options.add_generation_prompt(!args.no_generation_prompt);
    let path = crate::options::model_path(args.model.as_deref())?;
    let model = Model::load(&path, &rocm_llama::LoadConfig::default().vocab_only(true))?;
    if let Some(note) = base_model_note(&model, &template) {
        eprintln!("{note}");
    }
    let prompt = template.prompt_with(&model, &messages, &options)?;
    print!("{prompt}");
    if args.tokens {
        let ids = template.tokens(&model, &messages, &options)?;
        println!("\n[{}]", ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    args: GenerateArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
    /// A Jinja chat template file, or one of llama.cpp's built-in formats by name (gemma,
    /// chatml, llama3, ...), instead of the model's own template.
    #[arg(long = "chat-template", visible_alias = "template", value_name = "FILE|NAME")]
    template: Option<String>,
    /// Variables for the model's template, as a JSON object (e.g. '{"enable_thinking": false}').
    #[arg(long, value_name = "JSON")]
    chat_template_kwargs: Option<String>,
    #[command(flatten)]
    args: GenerateArgs,
}

/// `--chat-template`: a file holds a Jinja template; otherwise a built-in format's name.
pub(crate) fn chat_template(arg: Option<String>) -> AnyResult<ChatTemplate> {
    let Some(arg) = arg else { return Ok(ChatTemplate::Model) };
    let path = std::path::Path::new(&arg);
    if path.is_file() {
        let source =
            std::fs::read_to_string(path).map_err(|e| UserError::boxed(format!("--chat-template {arg}: {e}")))?;
        rocm_llama::check_jinja(&source).map_err(|e| UserError::boxed(format!("--chat-template {arg}: {e}")))?;
        return Ok(ChatTemplate::Jinja(source));
    }
    if rocm_llama::builtin_templates().contains(&arg) {
        return Ok(ChatTemplate::Builtin(arg));
    }
    Err(UserError::boxed(format!(
        "--chat-template {arg}: neither a file nor a built-in format ({})",
        rocm_llama::builtin_templates().join(", ")
    )))
}

/// `--chat-template-kwargs`: a JSON object of template variables.
pub(crate) fn chat_options(kwargs: Option<&str>) -> AnyResult<ChatOptions> {
    let mut options = ChatOptions::default();
    if let Some(text) = kwargs {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| UserError::boxed(format!("--chat-template-kwargs: not JSON ({e})")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(UserError::boxed(
                "--chat-template-kwargs: give a JSON object, e.g. '{\"enable_thinking\": false}'",
            ));
        };
        options.kwargs = map;
    }
    Ok(options)
}

/// The reply being written, which the first Ctrl-C cancels.
static REPLY: Mutex<Option<CancelToken>> = Mutex::new(None);

/// Ctrl-C while a reply is being written stops that reply (the conversation goes on); a second
/// press, a press outside a reply, or SIGTERM ends the program.
fn install_interrupt_handler() {
    signals::on_signal(|signal| {
        let reply = REPLY.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match (signal, reply) {
            (Signal::Interrupt, Some(cancel)) => {
                cancel.cancel();
                Action::Handled
            }
            (signal, _) => signals::default_exit(signal),
        }
    });
}

/// Marks a reply as being written, cancelled through `cancel` by Ctrl-C, for as long as it
/// lives.
struct Reply;

impl Reply {
    fn start(cancel: &CancelToken) -> Reply {
        *REPLY.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cancel.clone());
        Reply
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        *REPLY.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

fn summary_line(s: &Summary) -> String {
    let drafts = if s.draft_tokens > 0 {
        format!(", guessed {} tokens ({} confirmed)", s.draft_tokens, s.draft_tokens_accepted)
    } else {
        String::new()
    };
    format!(
        "prompt {} tokens ({} cached), generated {} tokens, first token {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s{drafts}, stop: {:?}",
        s.prompt_tokens,
        s.cached_prompt_tokens,
        s.generated_tokens,
        s.time_to_first_token.as_secs_f64() * 1000.0,
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.stop_reason
    )
}

fn summary_json(text: &str, s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "text": text,
        "stop_reason": s.stop_reason,
        "prompt_tokens": s.prompt_tokens,
        "cached_prompt_tokens": s.cached_prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "time_to_first_token_ms": s.time_to_first_token.as_secs_f64() * 1000.0,
        "prefill_tokens_per_s": s.prefill_tokens_per_s,
        "decode_tokens_per_s": s.decode_tokens_per_s,
        "total_ms": s.total_time.as_secs_f64() * 1000.0,
        "draft_tokens": s.draft_tokens,
        "draft_tokens_accepted": s.draft_tokens_accepted,
    })
}

/// Streams a generation to stdout (or collects it for --json); Ctrl-C cancels it through
/// `cancel`. Returns the text and the summary.
fn stream(gen: Generation<'_, '_>, cancel: &CancelToken, json: bool) -> AnyResult<Answer> {
    let _reply = Reply::start(cancel);
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    let mut tokens = Vec::new();
    for ev in gen {
        let ev = ev?;
        if let Event::Token { id, text: t, logprobs: Some(lp) } = &ev {
            tokens.push(serde_json::json!({"id": id, "text": t, "logprob": lp.logprob, "top_logprobs": lp.top}));
        }
        match ev {
            Event::Token { text: t, .. } | Event::Text(t) => {
                if !json {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                }
                text.push_str(&t);
            }
            Event::Done(summary) => return Ok(Answer { text, summary, tokens }),
        }
    }
    Err(UserError::boxed("generation ended without a summary"))
}

/// What one reply gave: its text, its summary, and its tokens' log-probabilities when asked.
struct Answer {
    text: String,
    summary: Summary,
    tokens: Vec<serde_json::Value>,
}

fn finish(reply: &Answer, json: bool) -> AnyResult<()> {
    let (text, s) = (&reply.text, &reply.summary);
    if json {
        let mut v = summary_json(text, s);
        if !reply.tokens.is_empty() {
            v["tokens"] = serde_json::Value::Array(reply.tokens.clone());
        }
        println!("{v}");
    } else {
        println!();
        eprintln!("{}", summary_line(s));
    }
    Ok(())
}

fn read_stdin() -> AnyResult<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
    Ok(s)
}

pub fn run(RunArgs { mut args }: RunArgs) -> AnyResult<()> {
    args.check_compat(false)?;
    let prompt = match args.given_prompt()? {
        Some(p) => p,
        None => read_stdin()?,
    };
    let (model, fitted_ctx) = load_model(&args.model, Some(args.context.plan()))?;
    let model = std::sync::Arc::new(model);
    let mut session = Session::new(&model, &context_config(&model, fitted_ctx, &args.model, &args.context))?;
    if !args.json {
        eprintln!("{}", memory_line(&model, session.context()));
    }
    let lora = args.apply_adapters(&model, &mut session)?;
    args.load_prompt_cache(&mut session)?;
    install_interrupt_handler();
    let cancel = CancelToken::new();
    let mut opts = generate_options(&args.sampling)?.cancel(cancel.clone()).n_probs(args.logprobs.unwrap_or(0));
    opts.lora = lora;
    opts.speculation = args.speculation.speculation(&model)?;
    let gen = session.generate(&prompt, &opts)?;
    let answer = stream(gen, &cancel, args.json)?;
    args.save_prompt_cache(&session)?;
    finish(&answer, args.json)
}

pub fn chat(ChatArgs { system, template, chat_template_kwargs, mut args }: ChatArgs) -> AnyResult<()> {
    args.check_compat(true)?;
    let template = chat_template(template)?;
    let chat = chat_options(chat_template_kwargs.as_deref())?;
    let prompt = args.given_prompt()?;
    let (model, fitted_ctx) = load_model(&args.model, Some(args.context.plan()))?;
    let model = std::sync::Arc::new(model);
    let mut session = Session::new(&model, &context_config(&model, fitted_ctx, &args.model, &args.context))?;
    if !args.json {
        eprintln!("{}", memory_line(&model, session.context()));
    }
    let lora = args.apply_adapters(&model, &mut session)?;
    args.load_prompt_cache(&mut session)?;
    if let Some(note) = base_model_note(&model, &template) {
        eprintln!("{note}");
    }
    install_interrupt_handler();
    let mut gen_opts = generate_options(&args.sampling)?.chat(chat).n_probs(args.logprobs.unwrap_or(0));
    gen_opts.lora = lora;
    gen_opts.speculation = args.speculation.speculation(&model)?;
    let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();

    if let Some(p) = prompt {
        messages.push(ChatMessage::user(p));
        let cancel = CancelToken::new();
        let gen = session.chat(&messages, &template, &gen_opts.clone().cancel(cancel.clone()))?;
        let answer = stream(gen, &cancel, args.json)?;
        args.save_prompt_cache(&session)?;
        return finish(&answer, args.json);
    }

    // The REPL: one user message per line; the conversation is kept, and each turn reuses
    // the cached prompt of the one before.
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if interactive {
        eprintln!(
            "chatting with {} — /reset clears the conversation, /exit or Ctrl-D ends; Ctrl-C stops a reply",
            model.description()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(line));
        let cancel = CancelToken::new();
        let gen = match session.chat(&messages, &template, &gen_opts.clone().cancel(cancel.clone())) {
            Ok(g) => g,
            Err(e) => {
                // A turn that cannot run (e.g. the conversation outgrew the context) is
                // reported and dropped; the session goes on.
                eprintln!("error: {e}");
                messages.pop();
                continue;
            }
        };
        let answer = stream(gen, &cancel, args.json)?;
        args.save_prompt_cache(&session)?;
        finish(&answer, args.json)?;
        // A reply cut short by Ctrl-C stays in the conversation as far as it got.
        messages.push(ChatMessage::assistant(answer.text));
    }
    Ok(())
}

/// For a model without a chat template of its own (usually a base model, which continues text
/// rather than answering), one line saying so and what `chat` formats with instead.
fn base_model_note(model: &Model, template: &ChatTemplate) -> Option<String> {
    if *template != ChatTemplate::Model || model.chat_template().is_some() {
        return None;
    }
    let file = model.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fallback = match template.source(model) {
        Ok(rocm_llama::TemplateSource::Builtin(name)) => {
            format!("formatting with llama.cpp's built-in {name:?} format")
        }
        _ => "and no built-in format fits its architecture".to_string(),
    };
    Some(format!(
        "note: {file} has no chat template, so it is likely a base model, which continues text rather than \
         answering; {fallback}. For answers use an instruction-tuned model (-it, -instruct), or `run` to continue a text"
    ))
}

/// One line about memory after a load: what the model and context hold, and what is free.
fn memory_line(model: &Model, ctx: &Context<'_>) -> String {
    use rocm_llama::accounting::gib;
    let mut m = model.memory().clone();
    m.merge(ctx.memory_usage());
    let report = rocm_llama::devices();
    // Free memory of each GPU the model and context hold buffers on, else of the host.
    let used = |name: &str| m.weights.iter().chain(&m.kv).chain(&m.compute).any(|b| b.name == name);
    let split = report.split_gpus();
    let gpus: Vec<String> = report
        .backend_devices
        .iter()
        .filter(|d| d.kind != rocm_llama::devices::DeviceKind::Cpu && used(&d.name))
        .map(|d| {
            let free = split.iter().find(|(n, _)| *n == d.name).map_or(d.free, |(_, f)| *f);
            format!("{} of {} on {}", gib(free), gib(d.total), d.name)
        })
        .collect();
    let free = if !gpus.is_empty() {
        format!("; VRAM free {}", gpus.join(", "))
    } else {
        match report.primary_memory() {
            Some((free, total, name)) if name == "CPU" => format!("; host memory free {} of {}", gib(free), gib(total)),
            _ => String::new(),
        }
    };
    format!("{}{free}", m.summary())
}
