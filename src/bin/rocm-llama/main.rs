//! `rocm-llama`: in-process llama.cpp inference from the command line.
//!
//! One file per group of subcommands that share options: `generate` (run, chat), `inventory`
//! (models, show, pull), `bench`, `system` (devices, info, synth, completions); `options`
//! holds the flags they share.

mod bench;
mod embed;
mod generate;
mod inventory;
mod options;
mod rpc;
mod serve;
mod signals;
mod system;
mod tokenize;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Any failure a subcommand reports: printed as `error: ...` on stderr, exit code 1.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A failure described in words for the user.
#[derive(Debug)]
pub struct UserError(String);

impl UserError {
    pub fn boxed(msg: impl Into<String>) -> Box<dyn std::error::Error> {
        Box::new(UserError(msg.into()))
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

#[derive(Parser)]
#[command(
    name = "rocm-llama",
    version,
    about = "In-process llama.cpp inference on AMD (HIP), NVIDIA (CUDA) and CPU",
    after_help = "llama.cpp's multi-letter flags work too: -ngl, -fa, -ctk, -ctv, -ub, -sm, -mg, -kvu, -nr, -hf, \
                  -ot; for run and chat also -sys, -r, -e, -no-cnv, -cnv. A flag given twice takes its last value."
)]
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
    Run(generate::RunArgs),
    /// Chat with the model's template: one reply to PROMPT, or a conversation (REPL) when absent.
    Chat(generate::ChatArgs),
    /// Serve the OpenAI API (chat, completions, embeddings) on the engine over HTTP.
    Serve(serve::ServeArgs),
    /// One vector per text (lines or JSONL from files or stdin), JSONL out.
    Embed(embed::EmbedArgs),
    /// Score documents (lines or JSONL) against a query with a reranker model, JSONL out.
    Rerank(embed::RerankArgs),
    /// Score labels for each text (lines or JSONL) by likelihood, JSONL out.
    Classify(embed::ClassifyArgs),
    /// Split text into tokens with a model's vocabulary (no weights loaded): ids and pieces.
    Tokenize(tokenize::TokenizeArgs),
    /// Print the exact prompt a conversation (messages as JSON) renders to under a chat
    /// template (no weights loaded).
    Template(generate::TemplateArgs),
    /// List the models in the model folder (like `ollama list`).
    Models(inventory::ModelsArgs),
    /// Show all metadata of a model (a path or a name from `models`).
    Show(inventory::ShowArgs),
    /// Download a model: an http(s) URL, hf:ORG/REPO/FILE.gguf or hf:ORG/REPO[:QUANT].
    Pull(inventory::PullArgs),
    /// Offer this machine's GPU (or CPU) to other machines' `--rpc` (llama.cpp's RPC protocol:
    /// no authentication, loopback unless --host says otherwise).
    RpcServer(rpc::RpcServerArgs),
    /// Measure prefill, decode, time to first token and engine concurrency (llama-bench style).
    Bench(bench::BenchArgs),
    /// Measure embeddings (texts/s by batch, against a raw-FFI loop) and shared-prefix
    /// classification (against each label its own prompt).
    BenchEmbed(bench::BenchEmbedArgs),
    /// Write a synthetic model: a real architecture's shapes, random weights, quantized.
    Synth(system::SynthArgs),
    /// List GPUs (AMD through sysfs and HIP, and every device llama.cpp can use) with free VRAM.
    Devices(system::DevicesArgs),
    /// Show how this binary was built (backends, llama.cpp version, GPU targets, CPU features).
    Info(system::JsonArg),
    /// Print a shell completion script (e.g. `rocm-llama completions bash > ~/.local/share/bash-completion/completions/rocm-llama`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Whether colour may be used on stderr: a terminal, and `NO_COLOR` unset or empty.
pub fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Whether progress bars may be drawn: stderr is a terminal.
fn progress_allowed() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// A progress bar of `len` steps drawn on stderr with `template`, unless the user turned it
/// off or stderr is no terminal.
pub fn progress_bar(len: u64, template: &str, wanted: bool) -> Option<indicatif::ProgressBar> {
    (wanted && progress_allowed()).then(|| {
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
        indicatif::ProgressBar::new(len).with_style(style)
    })
}

/// A spinner with a message and the time so far, drawn only when stderr is a terminal (it
/// still takes messages otherwise).
pub fn spinner() -> indicatif::ProgressBar {
    if !progress_allowed() {
        return indicatif::ProgressBar::hidden();
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner
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
        .with_ansi(color_allowed())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    // `rpc-server` runs ggml for each client in a worker: this program run again, which
    // becomes the worker here and never returns.
    rocm_llama::rpc::worker_init();
    // Rust ignores SIGPIPE, so printing into a closed pipe (`rocm-llama show m | head`) would
    // panic; end quietly instead, as other command-line tools do.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Ctrl-C and SIGTERM go to one thread of their own for every command (before any other
    // thread starts, so all of them leave the signals to it).
    signals::start();
    // A flag given twice takes its last value, as in llama.cpp's tools.
    let mut command = Cli::command().args_override_self(true);
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        command = command.mut_subcommand(name, |s| s.args_override_self(true));
    }
    let matches = command.get_matches_from(options::rewrite_llama_flags(std::env::args_os()));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => generate::run(args),
        Command::Chat(args) => generate::chat(args),
        Command::Serve(args) => serve::serve(args),
        Command::Embed(args) => embed::embed(args),
        Command::Rerank(args) => embed::rerank(args),
        Command::Classify(args) => embed::classify(args),
        Command::Tokenize(args) => tokenize::tokenize(args),
        Command::Template(args) => generate::template(args),
        Command::Models(args) => inventory::models(args),
        Command::Show(args) => inventory::show(args),
        Command::Pull(args) => inventory::pull(args),
        Command::RpcServer(args) => rpc::rpc_server(args),
        Command::Bench(args) => bench::bench(args),
        Command::BenchEmbed(args) => bench::bench_embed(args),
        Command::Synth(args) => system::synth(args),
        Command::Devices(args) => system::devices(args),
        Command::Info(args) => system::info(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "rocm-llama", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
