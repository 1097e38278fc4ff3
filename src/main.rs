//! `rocm-llama`: in-process llama.cpp inference from the command line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use rocm_llama::{
    ChatMessage, ChatTemplate, Context, ContextConfig, Event, FlashAttention, GenerateOptions, GpuLayers, KvType,
    LoadConfig, Model, SamplingParams, SplitMode, Summary,
};

#[derive(Parser)]
#[command(name = "rocm-llama", version, about = "In-process llama.cpp inference on AMD (HIP), NVIDIA (CUDA) and CPU")]
struct Cli {
    /// More log output (-v: info, -vv: llama.cpp's own log, -vvv: everything). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Complete a raw prompt (no chat template) and stream the text to stdout.
    Run {
        /// The prompt; read from stdin when absent.
        prompt: Option<String>,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// Chat with the model's template: one reply to PROMPT, or a conversation (REPL) when absent.
    Chat {
        /// A single user message; without it, read messages from stdin one line at a time.
        prompt: Option<String>,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// A built-in chat template name (gemma, chatml, llama3, ...) instead of the model's.
        #[arg(long)]
        template: Option<String>,
        #[command(flatten)]
        opts: GenOpts,
    },
    /// List the models in the model folder (like `ollama list`).
    Models {
        /// The model folder (default: ROCM_MODEL_DIR, else ~/.cache/rocm-llama).
        #[arg(long, env = "ROCM_MODEL_DIR")]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show all metadata of a model (a path or a name from `models`).
    Show {
        /// A GGUF path or a model name.
        model: String,
        /// The model folder for names.
        #[arg(long, env = "ROCM_MODEL_DIR")]
        dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download a model: an http(s) URL or hf:ORG/REPO/FILE.gguf (resumes, verifies sha256).
    Pull {
        /// The source.
        source: String,
        /// The model folder to write into.
        #[arg(long, env = "ROCM_MODEL_DIR")]
        dir: Option<PathBuf>,
        /// The expected sha256 of the file.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Measure prefill, decode, time to first token and engine concurrency (llama-bench style).
    Bench {
        /// A GGUF file or a model name.
        #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
        model: Option<String>,
        /// Prompt lengths (pp and ttft).
        #[arg(short = 'p', long, value_delimiter = ',', default_value = "512,2048")]
        prompt: Vec<usize>,
        /// Generated tokens (tg).
        #[arg(short = 'n', long, default_value_t = 128)]
        gen: usize,
        /// KV depths for the first prompt length.
        #[arg(long, value_delimiter = ',', default_value = "0,4096")]
        depths: Vec<usize>,
        /// Repetitions per test.
        #[arg(short = 'r', long, default_value_t = 3)]
        repetitions: usize,
        /// Flash attention settings to compare (off, on, auto).
        #[arg(long, value_delimiter = ',', default_value = "off,on")]
        fa: Vec<String>,
        /// Concurrency levels through the engine (empty to skip).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
        concurrency: Vec<usize>,
        /// Prompt and generated tokens per sequence in the concurrency test.
        #[arg(long, default_value_t = 128)]
        concurrent_tokens: usize,
        /// KV cache type.
        #[arg(long, default_value = "f16")]
        kv_type: String,
        /// GPU layers (a number or all).
        #[arg(long, default_value = "all")]
        gpu_layers: String,
        #[command(flatten)]
        split: SplitArgs,
        /// CPU threads.
        #[arg(short, long)]
        threads: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Write an SVG plot here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Also save the JSON report to this file.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Write a synthetic model: a real architecture's shapes, random weights, quantized.
    Synth {
        /// llama3-8b, qwen3-8b, gemma3-4b, llama2-7b, gemma3-270m, tiny, tiny-qwen3,
        /// tiny-gemma3.
        #[arg(long, required_unless_present = "tokenizer_only")]
        shape: Option<String>,
        /// q4_k_m, q4_0, q8_0 or f16.
        #[arg(long = "type", default_value = "q4_k_m")]
        ty: String,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Threads for quantization (default: the cores this process may use).
        #[arg(short, long)]
        threads: Option<u32>,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Take the vocabulary, special tokens and chat template from this GGUF (a model, or
        /// a file written with --tokenizer-only) instead of making one up.
        #[arg(long)]
        tokenizer_from: Option<PathBuf>,
        /// Write only the tokenizer of --tokenizer-from (a few MB, no weights) to --output.
        #[arg(long, requires = "tokenizer_from")]
        tokenizer_only: bool,
    },
    /// List GPUs (AMD through sysfs and HIP, and every device llama.cpp can use) with free VRAM.
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show how this binary was built (backends, llama.cpp version, GPU targets, CPU features).
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How a model goes onto several GPUs (`run`, `chat`, `bench`).
#[derive(Args, Clone)]
struct SplitArgs {
    /// Several GPUs: `layer` spreads whole layers over all of them (default), `row` splits
    /// each weight's rows, `none` puts the model on --main-gpu alone.
    #[arg(long, default_value = "layer")]
    split_mode: String,
    /// The GPU for --split-mode none (an index among the GPUs llama.cpp uses).
    #[arg(long, default_value_t = 0)]
    main_gpu: u32,
}

impl SplitArgs {
    fn mode(&self) -> AnyResult<SplitMode> {
        match self.split_mode.as_str() {
            "layer" => Ok(SplitMode::Layer),
            "row" => Ok(SplitMode::Row),
            "none" => Ok(SplitMode::None),
            o => Err(format!("--split-mode must be layer, row or none, not {o:?}").into()),
        }
    }
}

#[derive(Args, Clone)]
struct GenOpts {
    /// A GGUF file, or a model name from `rocm-llama models`.
    #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
    model: Option<String>,
    /// Context length in tokens (default: what fits, up to --max-ctx and the trained length).
    #[arg(short = 'c', long)]
    ctx: Option<u32>,
    /// The largest context the automatic fit picks.
    #[arg(long, default_value_t = 8192)]
    max_ctx: u32,
    /// Layers to put on the GPU: a number or `all` (default: what fits in free VRAM).
    #[arg(long)]
    gpu_layers: Option<String>,
    /// Do not fit layers and context to free memory; use --gpu-layers/--ctx or llama.cpp's defaults.
    #[arg(long)]
    no_fit: bool,
    #[command(flatten)]
    split: SplitArgs,
    /// CPU threads (default: the cores this process may use).
    #[arg(short, long)]
    threads: Option<u32>,
    /// Flash attention: auto, on or off.
    #[arg(long, default_value = "auto")]
    flash_attn: String,
    /// KV cache type for K and V (f16, q8_0, ...).
    #[arg(long, default_value = "f16")]
    kv_type: String,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Top-k (0 disables).
    #[arg(long, default_value_t = 40)]
    top_k: i32,
    /// Top-p (1.0 disables).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0 disables).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1.0 disables).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// A GBNF grammar file that constrains the output (root rule `root`).
    #[arg(long)]
    grammar_file: Option<PathBuf>,
    /// RNG seed (default: random).
    #[arg(long)]
    seed: Option<u32>,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    max_tokens: usize,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object (text and summary) to stdout instead of streaming.
    #[arg(long)]
    json: bool,
    /// No progress bar while loading.
    #[arg(long)]
    no_progress: bool,
}

fn default_model() -> Option<PathBuf> {
    let cache = std::env::var_os("ROCM_LLAMA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rocm-llama")))?;
    Some(cache.join("gemma-3-270m-q4_k_m.gguf"))
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,llama_cpp=error",
        1 => "info,llama_cpp=warn",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Loads the model; returns it with the context length the fit chose, if it ran.
fn parse_gpu_layers(s: &str) -> AnyResult<GpuLayers> {
    match s {
        "all" | "-1" => Ok(GpuLayers::All),
        n => Ok(GpuLayers::Count(n.parse().map_err(|_| format!("--gpu-layers must be a number or `all`, not {n:?}"))?)),
    }
}

fn load_model(opts: &GenOpts) -> AnyResult<(Model, Option<u32>)> {
    let path = match &opts.model {
        Some(m) => rocm_llama::models::resolve(m, &rocm_llama::models::default_dir())?,
        None => default_model().ok_or("no model: pass --model PATH or set ROCM_LLAMA_MODEL")?,
    };
    if opts.model.is_none() && !path.exists() {
        return Err(format!(
            "no --model given and the default model is missing at {} (scripts/test-model.sh fetches it)",
            path.display()
        )
        .into());
    }
    let explicit_layers = opts.gpu_layers.as_deref().map(parse_gpu_layers).transpose()?;
    let split_mode = opts.split.mode()?;
    // Fit layers and context to free memory unless the user fixed both or opted out.
    let mut fitted_ctx = None;
    let mut gpu_layers = explicit_layers.unwrap_or_default();
    if !opts.no_fit && explicit_layers.is_none() {
        let fit_opts = rocm_llama::FitOptions {
            n_ctx: opts.ctx,
            max_ctx: opts.max_ctx,
            flash_attention: opts.flash_attn == "on",
            single_gpu: (split_mode == SplitMode::None).then_some(opts.split.main_gpu),
            ..Default::default()
        };
        let (cfg, plan) = LoadConfig::fit(&path, &fit_opts)?;
        let placement = if plan.device == "CPU" {
            "host memory".to_string()
        } else {
            format!("{} of {} layers on {}", plan.gpu_layers, plan.n_layer, plan.device)
        };
        tracing::info!(
            "fit: {placement}, context {} ({} predicted, {} free)",
            plan.n_ctx,
            rocm_llama::vram::gib(plan.estimate.total()),
            rocm_llama::vram::gib(plan.free_bytes)
        );
        gpu_layers = cfg.gpu_layers;
        fitted_ctx = Some(plan.n_ctx);
    }
    let mut config = LoadConfig { gpu_layers, split_mode, main_gpu: opts.split.main_gpu, ..Default::default() };
    let bar = (!opts.no_progress).then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {percent:>3}%")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        bar
    });
    if let Some(bar) = bar.clone() {
        config.progress = Some(Arc::new(move |p: f32| {
            bar.set_position((p * 100.0) as u64);
            true
        }));
    }
    let model = Model::load(&path, &config);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let model = model?;
    tracing::info!("loaded {} ({})", path.display(), model.description());
    Ok((model, fitted_ctx))
}

fn context_config(model: &Model, fitted_ctx: Option<u32>, opts: &GenOpts) -> AnyResult<ContextConfig> {
    let n_ctx = opts.ctx.or(fitted_ctx).unwrap_or_else(|| model.n_ctx_train().clamp(256, opts.max_ctx.max(256)));
    let kv: KvType = opts.kv_type.parse()?;
    let mut cfg = ContextConfig::default().n_ctx(n_ctx).flash_attention(opts.flash_attn.parse::<FlashAttention>()?);
    cfg.type_k = kv;
    cfg.type_v = kv;
    if let Some(t) = opts.threads {
        cfg = cfg.threads(t);
    }
    Ok(cfg)
}

fn generate_options(opts: &GenOpts) -> AnyResult<GenerateOptions> {
    let grammar = match &opts.grammar_file {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let seed = opts.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_nanos() as u32) ^ std::process::id()
    });
    let sampling = SamplingParams {
        temperature: opts.temp,
        top_k: opts.top_k,
        top_p: opts.top_p,
        min_p: opts.min_p,
        repeat_penalty: opts.repeat_penalty,
        seed,
        grammar,
        ..Default::default()
    };
    Ok(GenerateOptions { max_tokens: opts.max_tokens, stop: opts.stop.clone(), sampling, cancel: None })
}

fn summary_line(s: &Summary) -> String {
    format!(
        "prompt {} tokens ({} cached), generated {} tokens, first token {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s, stop: {:?}",
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
    })
}

/// Streams a generation to stdout (or collects it for --json); returns the text.
fn stream(gen: rocm_llama::Generation<'_, '_>, json: bool) -> AnyResult<(String, Summary)> {
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    for ev in gen {
        match ev? {
            Event::Token { text: t, .. } | Event::Text(t) => {
                if !json {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                }
                text.push_str(&t);
            }
            Event::Done(s) => return Ok((text, s)),
        }
    }
    Err("generation ended without a summary".into())
}

fn finish(text: &str, s: &Summary, json: bool) -> AnyResult<()> {
    if json {
        println!("{}", summary_json(text, s));
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

fn cmd_run(prompt: Option<String>, opts: GenOpts) -> AnyResult<()> {
    let prompt = match prompt {
        Some(p) => p,
        None => read_stdin()?,
    };
    let (model, fitted_ctx) = load_model(&opts)?;
    let mut ctx = Context::new(&model, &context_config(&model, fitted_ctx, &opts)?)?;
    if !opts.json {
        eprintln!("{}", memory_line(&model, &ctx));
    }
    let gen = ctx.generate(&prompt, &generate_options(&opts)?)?;
    let (text, s) = stream(gen, opts.json)?;
    finish(&text, &s, opts.json)
}

fn cmd_chat(prompt: Option<String>, system: Option<String>, template: Option<String>, opts: GenOpts) -> AnyResult<()> {
    let (model, fitted_ctx) = load_model(&opts)?;
    let mut ctx = Context::new(&model, &context_config(&model, fitted_ctx, &opts)?)?;
    if !opts.json {
        eprintln!("{}", memory_line(&model, &ctx));
    }
    let template = template.map(ChatTemplate::Named).unwrap_or_default();
    let gen_opts = generate_options(&opts)?;
    let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();

    if let Some(p) = prompt {
        messages.push(ChatMessage::user(p));
        let gen = ctx.chat(&messages, &template, &gen_opts)?;
        let (text, s) = stream(gen, opts.json)?;
        return finish(&text, &s, opts.json);
    }

    // The REPL: one user message per line; the conversation is kept, and each turn reuses
    // the cached prompt of the one before.
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if interactive {
        eprintln!("chatting with {} — /reset clears the conversation, /exit or Ctrl-D ends", model.description());
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
        let gen = match ctx.chat(&messages, &template, &gen_opts) {
            Ok(g) => g,
            Err(e) => {
                // A turn that cannot run (e.g. the conversation outgrew the context) is
                // reported and dropped; the session goes on.
                eprintln!("error: {e}");
                messages.pop();
                continue;
            }
        };
        let (text, s) = stream(gen, opts.json)?;
        finish(&text, &s, opts.json)?;
        messages.push(ChatMessage::assistant(text));
    }
    Ok(())
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.0}M", n as f64 / 1e6),
        n => n.to_string(),
    }
}

fn age(t: Option<std::time::SystemTime>) -> String {
    let Some(d) = t.and_then(|t| t.elapsed().ok()) else { return "-".into() };
    let s = d.as_secs();
    match s {
        s if s < 120 => "just now".into(),
        s if s < 7200 => format!("{} minutes ago", s / 60),
        s if s < 172_800 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

fn cmd_models(dir: Option<PathBuf>, json: bool) -> AnyResult<()> {
    let dir = dir.unwrap_or_else(rocm_llama::models::default_dir);
    let entries = rocm_llama::models::scan(&dir);
    if json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    match &e.info {
                        Ok(info) => {
                            o.insert("info".into(), serde_json::to_value(info).unwrap_or_default());
                        }
                        Err(err) => {
                            o.remove("info");
                            o.insert("error".into(), err.clone().into());
                        }
                    }
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("no models in {} (rocm-llama pull SOURCE fetches one)", dir.display());
        return Ok(());
    }
    println!("{:<40} {:<10} {:>7} {:<8} {:>9} {:>7}  MODIFIED", "NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "CTX");
    for e in &entries {
        match &e.info {
            Ok(i) => println!(
                "{:<40} {:<10} {:>7} {:<8} {:>9} {:>7}  {}",
                e.name,
                i.architecture,
                human_count(i.n_params),
                i.quantization(),
                rocm_llama::vram::gib(e.size_bytes),
                i.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                age(e.modified)
            ),
            Err(err) => println!("{:<40} unreadable: {err}", e.name),
        }
    }
    Ok(())
}

fn cmd_show(model: &str, dir: Option<PathBuf>, json: bool) -> AnyResult<()> {
    let dir = dir.unwrap_or_else(rocm_llama::models::default_dir);
    let path = rocm_llama::models::resolve(model, &dir)?;
    let file = rocm_llama::gguf::GgufFile::open(&path)?;
    let summary = rocm_llama::models::ModelSummary::from_gguf(&file, &[]);
    if json {
        let meta: serde_json::Map<String, serde_json::Value> =
            file.metadata.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default())).collect();
        let v = serde_json::json!({
            "path": path,
            "summary": summary,
            "gguf_version": file.version,
            "tensor_count": file.tensors.len(),
            "tensor_bytes": file.tensor_bytes(),
            "metadata": meta,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("  path            {}", path.display());
    println!("  architecture    {}", summary.architecture);
    println!("  parameters      {}", human_count(summary.n_params));
    println!("  quantization    {}", summary.quantization());
    println!("  context length  {}", summary.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()));
    println!(
        "  chat template   {}",
        summary.chat_template_family.as_deref().unwrap_or(if summary.has_chat_template { "custom" } else { "none" })
    );
    println!("  tensors         {} ({})", file.tensors.len(), rocm_llama::vram::gib(file.tensor_bytes()));
    println!("\n  metadata (GGUF v{}):", file.version);
    for (k, v) in &file.metadata {
        println!("    {k:<44} {}", v.display(100));
    }
    Ok(())
}

fn cmd_pull(source: &str, dir: Option<PathBuf>, sha256: Option<String>) -> AnyResult<()> {
    let mut opts = rocm_llama::pull::PullOptions::new(dir.unwrap_or_else(rocm_llama::models::default_dir));
    opts.sha256 = sha256;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let b = bar.clone();
    opts.progress = Some(Arc::new(move |p: &rocm_llama::pull::Progress| {
        if let Some(t) = p.total {
            b.set_length(t);
        }
        b.set_message(p.file.clone());
        b.set_position(p.done);
    }));
    let files = rocm_llama::pull::pull(source, &opts);
    bar.finish_and_clear();
    for f in files? {
        println!("{}", f.display());
    }
    Ok(())
}

fn cmd_bench(
    model: Option<String>,
    load: LoadConfig,
    cfg: rocm_llama::bench::BenchConfig,
    json: bool,
    plot: Option<PathBuf>,
    save: Option<PathBuf>,
) -> AnyResult<()> {
    let path = match model {
        Some(m) => rocm_llama::models::resolve(&m, &rocm_llama::models::default_dir())?,
        None => default_model().ok_or("no model: pass --model")?,
    };
    let model = Arc::new(Model::load(&path, &load)?);
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let sp = spinner.clone();
    let report = rocm_llama::bench::run(&model, &cfg, &move |m| sp.set_message(m.to_string()));
    spinner.finish_and_clear();
    let report = report?;
    if let Some(p) = plot {
        std::fs::write(&p, report.svg()).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("plot written to {}", p.display());
    }
    let v = serde_json::json!({
        "report": report,
        "build": rocm_llama::build_info(),
        "devices": rocm_llama::devices().backend_devices,
    });
    if let Some(p) = save {
        std::fs::write(&p, serde_json::to_string_pretty(&v)?).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

struct SynthArgs {
    shape: Option<String>,
    ty: String,
    output: PathBuf,
    threads: Option<u32>,
    seed: u64,
    tokenizer_from: Option<PathBuf>,
    tokenizer_only: bool,
}

fn cmd_synth(args: SynthArgs) -> AnyResult<()> {
    let SynthArgs { shape, ty, output, threads, seed, tokenizer_from, tokenizer_only } = args;
    let output = output.as_path();
    let tokenizer = tokenizer_from.as_deref().map(rocm_llama::synth::Tokenizer::from_gguf).transpose()?;
    if tokenizer_only {
        let tokenizer = tokenizer.ok_or("--tokenizer-only needs --tokenizer-from")?;
        tokenizer.write_to(output)?;
        let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "wrote the tokenizer ({} tokens) to {} ({})",
            tokenizer.n_tokens(),
            output.display(),
            rocm_llama::vram::gib(size)
        );
        println!("{}", output.display());
        return Ok(());
    }
    let shape = rocm_llama::synth::find_shape(shape.as_deref().ok_or("--shape is required")?)?;
    let ty: rocm_llama::synth::SynthType = ty.parse()?;
    let threads = threads.unwrap_or_else(rocm_llama::default_threads);
    let started = std::time::Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let sp = spinner.clone();
    let path = rocm_llama::synth::synth(shape, ty, output, threads, seed, tokenizer.as_ref(), &move |msg| {
        sp.set_message(msg.to_string())
    });
    spinner.finish_and_clear();
    let path = path?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({}, {} as {ty:?}) in {:.1} s",
        path.display(),
        rocm_llama::vram::gib(size),
        shape.name,
        started.elapsed().as_secs_f64()
    );
    println!("{}", path.display());
    Ok(())
}

fn cmd_devices(json: bool) -> AnyResult<()> {
    let report = rocm_llama::devices();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// One line about memory after a load: what the model and context hold, and what is free.
fn memory_line(model: &Model, ctx: &Context<'_>) -> String {
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
            format!("{} of {} on {}", rocm_llama::vram::gib(free), rocm_llama::vram::gib(d.total), d.name)
        })
        .collect();
    let free = if !gpus.is_empty() {
        format!("; VRAM free {}", gpus.join(", "))
    } else {
        match report.primary_memory() {
            Some((free, total, name)) if name == "CPU" => {
                format!("; host memory free {} of {}", rocm_llama::vram::gib(free), rocm_llama::vram::gib(total))
            }
            _ => String::new(),
        }
    };
    format!("{}{free}", m.summary())
}

fn cmd_info(json: bool) -> AnyResult<()> {
    let info = rocm_llama::build_info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("rocm-llama      {}", info.version);
    println!("backends        {}", info.backends.join(", "));
    println!("llama.cpp       {} (llama-cpp-sys-2 {})", info.llama_cpp_version, info.llama_cpp_sys_version);
    println!("linkage         {}", info.linkage);
    println!("gpu targets     {}", if info.gpu_targets.is_empty() { "-".into() } else { info.gpu_targets.join(", ") });
    if let Some(v) = info.hip_version {
        println!("hip             {v}");
    }
    println!("target          {}", info.target);
    println!("cpu features    {}", info.cpu_features);
    println!("default threads {}", rocm_llama::default_threads());
    Ok(())
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`rocm-llama show m | head`) would
    // panic; end quietly instead, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run { prompt, opts } => cmd_run(prompt, opts),
        Command::Chat { prompt, system, template, opts } => cmd_chat(prompt, system, template, opts),
        Command::Info { json } => cmd_info(json),
        Command::Devices { json } => cmd_devices(json),
        Command::Bench {
            model,
            prompt,
            gen,
            depths,
            repetitions,
            fa,
            concurrency,
            concurrent_tokens,
            kv_type,
            gpu_layers,
            split,
            threads,
            json,
            plot,
            save,
        } => (|| -> AnyResult<()> {
            let load = LoadConfig {
                gpu_layers: parse_gpu_layers(&gpu_layers)?,
                split_mode: split.mode()?,
                main_gpu: split.main_gpu,
                ..Default::default()
            };
            let cfg = rocm_llama::bench::BenchConfig {
                n_prompt: prompt,
                n_gen: gen,
                depths,
                repetitions,
                flash_attention: fa.iter().map(|f| f.parse()).collect::<Result<_, _>>()?,
                kv_type: kv_type.parse()?,
                concurrency: concurrency.into_iter().filter(|&c| c > 0).collect(),
                concurrent_prompt: concurrent_tokens,
                concurrent_gen: concurrent_tokens,
                threads,
                ..Default::default()
            };
            cmd_bench(model, load, cfg, json, plot, save)
        })(),
        Command::Synth { shape, ty, output, threads, seed, tokenizer_from, tokenizer_only } => {
            cmd_synth(SynthArgs { shape, ty, output, threads, seed, tokenizer_from, tokenizer_only })
        }
        Command::Models { dir, json } => cmd_models(dir, json),
        Command::Show { model, dir, json } => cmd_show(&model, dir, json),
        Command::Pull { source, dir, sha256 } => cmd_pull(&source, dir, sha256),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
