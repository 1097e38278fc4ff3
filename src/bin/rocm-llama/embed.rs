//! `embed`, `rerank` and `classify`: texts in (lines or JSONL, from files or standard input),
//! JSONL out, a progress bar on standard error for long inputs.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Args;
use rocm_llama::{Classifier, ClassifyConfig, EmbedConfig, Embedder, Pooling};

use crate::options::{load_model, ModelArgs};
use crate::{AnyResult, UserError};

/// Where the texts come from.
#[derive(Args)]
pub struct InputArgs {
    /// Files of texts, one per line [default: standard input].
    files: Vec<PathBuf>,
    /// Each line is JSON: a string, or an object whose "text" field is the text.
    #[arg(long)]
    jsonl: bool,
}

/// Batch sizes shared by the three commands.
#[derive(Args)]
pub struct BatchArgs {
    /// Tokens per decode, also the longest text.
    #[arg(short = 'b', long, default_value_t = 2048)]
    batch_size: u32,
    /// Sequences per decode.
    #[arg(long, default_value_t = 64)]
    parallel: u32,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// Pooling: model (the model's own), none (one vector per token), mean, cls, last, rank.
    #[arg(long, default_value = "model")]
    pooling: Pooling,
    /// Leave vectors unscaled (default: unit length).
    #[arg(long)]
    no_normalize: bool,
    /// Cut texts longer than --batch-size tokens instead of failing.
    #[arg(long)]
    truncate: bool,
}

#[derive(Args)]
pub struct RerankArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    batch: BatchArgs,
    /// The query the documents (the input texts) are scored against.
    #[arg(short, long)]
    query: String,
    /// Cut documents longer than --batch-size tokens instead of failing.
    #[arg(long)]
    truncate: bool,
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    /// The labels, comma-separated.
    #[arg(short, long, value_delimiter = ',', required = true)]
    labels: Vec<String>,
    /// A file with the prompt: `{text}` where the text goes, `{labels}` for the label list
    /// [default: "{text}\nCategory ({labels}):"].
    #[arg(long)]
    template: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template (instruction-tuned models).
    #[arg(long)]
    chat: bool,
    /// Tokens per decode, also the longest prompt.
    #[arg(short = 'b', long, default_value_t = 2048)]
    batch_size: u32,
    /// Sequences per decode (each text takes one per label).
    #[arg(long, default_value_t = 256)]
    parallel: u32,
}

/// Reads the texts: every line of every file (or standard input), as text or JSONL.
fn read_texts(input: &InputArgs) -> AnyResult<Vec<String>> {
    let mut texts = Vec::new();
    let mut read = |name: &str, reader: &mut dyn BufRead| -> AnyResult<()> {
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| UserError::boxed(format!("{name}: reading line {}: {e}", n + 1)))?;
            if !input.jsonl {
                texts.push(line);
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| UserError::boxed(format!("{name}: line {}: not JSON: {e}", n + 1)))?;
            let text = match &value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => {
                    o.get("text").and_then(|t| t.as_str()).map(str::to_string).ok_or_else(|| {
                        UserError::boxed(format!("{name}: line {}: an object without a \"text\" string", n + 1))
                    })?
                }
                _ => return Err(UserError::boxed(format!("{name}: line {}: neither a string nor an object", n + 1))),
            };
            texts.push(text);
        }
        Ok(())
    };
    if input.files.is_empty() {
        read("standard input", &mut std::io::stdin().lock())?;
    } else {
        for f in &input.files {
            let file = std::fs::File::open(f).map_err(|e| UserError::boxed(format!("{}: {e}", f.display())))?;
            read(&f.display().to_string(), &mut std::io::BufReader::new(file))?;
        }
    }
    Ok(texts)
}

/// A progress bar for `total` texts when there are enough to wait for.
/// Runs `work` with a progress bar over `total` texts (drawn from 64 texts on, unless
/// turned off); `work` reports the texts done through the callback it is given.
fn with_texts_bar<T>(
    total: usize,
    no_progress: bool,
    message: &'static str,
    work: impl FnOnce(&mut dyn FnMut(usize, usize)) -> T,
) -> T {
    let bar = crate::progress_bar(
        total as u64,
        "{msg} [{bar:30}] {pos}/{len} texts, {per_sec}, eta {eta}",
        !no_progress && total >= 64,
    );
    if let Some(b) = &bar {
        b.set_message(message);
    }
    let result = work(&mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    result
}

fn write_lines(lines: impl Iterator<Item = serde_json::Value>) -> AnyResult<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in lines {
        writeln!(out, "{line}").map_err(|e| UserError::boxed(format!("writing: {e}")))?;
    }
    out.flush().map_err(|e| UserError::boxed(format!("writing: {e}")))?;
    Ok(())
}

pub fn embed(args: EmbedArgs) -> AnyResult<()> {
    let texts = read_texts(&args.input)?;
    let (model, _) = load_model(&args.model, None)?;
    let config = EmbedConfig::default()
        .pooling(args.pooling)
        .normalize(!args.no_normalize)
        .truncate(args.truncate)
        .n_batch(args.batch.batch_size)
        .n_seq_max(args.batch.parallel)
        .threads(args.model.threads);
    let mut embedder = Embedder::new(&model, &config)?;
    if embedder.pooling() == Pooling::None {
        if args.pooling == Pooling::Model {
            return Err(UserError::boxed(
                "this model declares no pooling (it is not an embedding model): pick one with --pooling mean|cls|last, \
                 or --pooling none for one vector per token",
            ));
        }
        let rows = embedder.token_embeddings(&texts)?;
        return write_lines(
            rows.into_iter().enumerate().map(|(i, r)| serde_json::json!({"index": i, "token_embeddings": r})),
        );
    }
    let vectors = with_texts_bar(texts.len(), args.model.no_progress, "embedding", |progress| {
        embedder.embed_with_progress(&texts, progress)
    });
    write_lines(vectors?.into_iter().enumerate().map(|(i, v)| serde_json::json!({"index": i, "embedding": v})))
}

pub fn rerank(args: RerankArgs) -> AnyResult<()> {
    let texts = read_texts(&args.input)?;
    let (model, _) = load_model(&args.model, None)?;
    let config = EmbedConfig::default()
        .pooling(Pooling::Rank)
        .truncate(args.truncate)
        .n_batch(args.batch.batch_size)
        .n_seq_max(args.batch.parallel)
        .threads(args.model.threads);
    let mut ranker = Embedder::new(&model, &config)?;
    let scores = ranker.rerank(&args.query, &texts)?;
    write_lines(scores.into_iter().enumerate().map(|(i, s)| serde_json::json!({"index": i, "score": s})))
}

pub fn classify(args: ClassifyArgs) -> AnyResult<()> {
    let texts = read_texts(&args.input)?;
    let mut config = ClassifyConfig::default()
        .chat(args.chat)
        .n_batch(args.batch_size)
        .n_seq_max(args.parallel)
        .threads(args.model.threads);
    if let Some(path) = &args.template {
        let template =
            std::fs::read_to_string(path).map_err(|e| UserError::boxed(format!("{}: {e}", path.display())))?;
        config = config.template(template.trim_end_matches('\n'));
    }
    let (model, _) = load_model(&args.model, None)?;
    let mut classifier = Classifier::new(&model, &args.labels, &config)?;
    let results = with_texts_bar(texts.len(), args.model.no_progress, "classifying", |progress| {
        classifier.classify_with_progress(&texts, progress)
    });
    let labels = classifier.labels().to_vec();
    write_lines(results?.into_iter().enumerate().map(|(i, r)| {
        let probs: serde_json::Map<String, serde_json::Value> =
            labels.iter().cloned().zip(r.probs.iter().map(|&p| serde_json::json!(p))).collect();
        serde_json::json!({"index": i, "label": labels[r.label], "probs": probs})
    }))
}
