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
    text: Option<String>,
    /// Add no BOS/EOS even where the model wants them.
    #[arg(long)]
    no_special: bool,
    /// Treat control-token text (`<start_of_turn>`) as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// Print only the ids, one line, separated by spaces.
    #[arg(long, conflicts_with = "json")]
    ids: bool,
    /// One JSON object: the ids, the pieces and the count.
    #[arg(long)]
    json: bool,
}

pub fn tokenize(args: TokenizeArgs) -> AnyResult<()> {
    let text = match args.text {
        Some(t) => t,
        None => {
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
        println!("{}", ids.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" "));
    } else if args.json {
        let tokens: Vec<serde_json::Value> =
            ids.iter().zip(&pieces).map(|(id, piece)| serde_json::json!({"id": id, "piece": piece})).collect();
        println!("{}", serde_json::json!({"count": ids.len(), "tokens": tokens}));
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>8}  {piece:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}
