//! `tokenize`: text to token ids and pieces with a model's vocabulary alone (no weights are
//! loaded).

use std::io::Read;

use clap::Args;
use rocm_llama::{LoadConfig, Model};

use crate::options::model_path;
use crate::{AnyResult, UserError};

#[derive(Args)]
pub struct TokenizeArgs {
    /// A GGUF file or a model name from `rocm-llama models`.
    #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
    model: Option<String>,
    /// The text [default: standard input].
    #[arg(conflicts_with_all = ["prompt", "file"])]
    text: Option<String>,
    /// The text (as llama-tokenize's -p).
    #[arg(short, long, conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the text from this file (as llama-tokenize's -f).
    #[arg(short, long)]
    file: Option<std::path::PathBuf>,
    /// Add no BOS/EOS even where the model wants them (llama-tokenize's --no-bos).
    #[arg(long, visible_alias = "no-bos")]
    no_special: bool,
    /// Treat control-token text (`<start_of_turn>`) as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// Print only the ids, as llama-tokenize does: `[2, 9259, 1902]`.
    #[arg(long, conflicts_with = "json")]
    ids: bool,
    /// Also print the number of tokens (`Total number of tokens: N`).
    #[arg(long)]
    show_count: bool,
    /// One JSON object: the ids, the pieces and the count.
    #[arg(long)]
    json: bool,
}

pub fn tokenize(args: TokenizeArgs) -> AnyResult<()> {
    let text = match (args.text.or(args.prompt), &args.file) {
        (Some(t), _) => t,
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| UserError::boxed(format!("{}: {e}", f.display())))?,
        (None, None) => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| UserError::boxed(format!("reading standard input: {e}")))?;
            t
        }
    };
    let path = model_path(args.model.as_deref())?;
    let model = Model::load(&path, &LoadConfig::default().vocab_only(true))?;
    let vocab = model.vocab();
    let ids = vocab.tokenize(&text, !args.no_special, !args.no_parse_special)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&t| vocab.token_to_bytes(t, true).map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect::<rocm_llama::Result<_>>()?;
    if args.ids {
        println!("[{}]", ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "));
    } else if args.json {
        let tokens: Vec<serde_json::Value> =
            ids.iter().zip(&pieces).map(|(id, piece)| serde_json::json!({"id": id, "piece": piece})).collect();
        println!("{}", serde_json::json!({"count": ids.len(), "tokens": tokens}));
    } else {
        // As llama-tokenize prints them.
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>6} -> '{piece}'");
        }
    }
    if args.show_count {
        println!("Total number of tokens: {}", ids.len());
    }
    Ok(())
}
