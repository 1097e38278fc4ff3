//! `models`, `show` and `pull`: the model folder (`--dir`, else ROCM_MODEL_DIR, else the
//! cache folder).

use std::path::PathBuf;

use clap::Args;
use rocm_llama::accounting::gib;
use rocm_llama::inventory;

use crate::{AnyResult, UserError};

#[derive(Args)]
pub struct ModelsArgs {
    /// The model folder [default: ROCM_MODEL_DIR, else ~/.cache/rocm-llama].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// A GGUF path or a model name.
    model: String,
    /// The model folder for names.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// An http(s) URL, hf:ORG/REPO/FILE.gguf, or hf:ORG/REPO[:QUANT] (the repository's file
    /// of that quantization, Q4_K_M by default). `hf:` uses HF_ENDPOINT, else Hugging Face,
    /// and sends HF_TOKEN when set.
    source: String,
    /// The model folder to write into.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The expected sha256 of the file.
    #[arg(long)]
    sha256: Option<String>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// `--dir`, else the model folder; a folder that is not there is an error.
fn folder(dir: Option<PathBuf>) -> AnyResult<PathBuf> {
    let dir = dir.unwrap_or_else(inventory::model_dir);
    if !dir.is_dir() {
        return Err(UserError::boxed(format!("{} is not a folder", dir.display())));
    }
    Ok(dir)
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
    match d.as_secs() {
        s if s < 120 => "just now".into(),
        s if s < 7200 => format!("{} minutes ago", s / 60),
        s if s < 172_800 => format!("{} hours ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

pub fn models(args: ModelsArgs) -> AnyResult<()> {
    let dir = folder(args.dir)?;
    let entries = inventory::scan(&dir);
    if args.json {
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
                gib(e.size_bytes),
                i.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                age(e.modified)
            ),
            Err(err) => println!("{:<40} unreadable: {err}", e.name),
        }
    }
    Ok(())
}

pub fn show(args: ShowArgs) -> AnyResult<()> {
    let dir = args.dir.unwrap_or_else(inventory::model_dir);
    let path = inventory::resolve(&args.model, &dir)?;
    // A file cut short still has a header worth showing; say what is missing.
    let file = match rocm_llama::gguf::GgufFile::open(&path) {
        Ok(file) => file,
        Err(whole) => {
            match rocm_llama::gguf::GgufFile::open_with(&path, rocm_llama::gguf::ReadOptions::header_only()) {
                Ok(file) => {
                    eprintln!("warning: {whole}; the header alone is shown");
                    file
                }
                Err(_) => return Err(whole.into()),
            }
        }
    };
    let summary = inventory::ModelSummary::from_gguf(&file, &[]);
    if args.json {
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
    let template = match summary.chat_template_renders {
        None => "none (llama.cpp's built-in format for the architecture is used)".to_string(),
        Some(renders) => format!(
            "{} (Jinja): {}",
            summary
                .chat_template_family
                .as_deref()
                .map(|f| format!("{f} family"))
                .unwrap_or_else(|| "own format".into()),
            if renders {
                "renders".to_string()
            } else {
                format!("does not render: {}", summary.chat_template_error.as_deref().unwrap_or("?"))
            }
        ),
    };
    println!("  chat template   {template}");
    println!("  tensors         {} ({})", file.tensors.len(), gib(file.tensor_bytes()));
    println!("\n  metadata (GGUF v{}):", file.version);
    for (k, v) in &file.metadata {
        println!("    {k:<44} {}", v.display(100));
    }
    Ok(())
}

pub fn pull(args: PullArgs) -> AnyResult<()> {
    let opts = rocm_llama::pull::PullOptions::new(args.dir.unwrap_or_else(inventory::model_dir)).sha256(args.sha256);
    let files = crate::options::pull_with_progress(&args.source, opts, !args.no_progress);
    for f in files? {
        println!("{}", f.display());
    }
    Ok(())
}
