//! Stream a completion from a GGUF model, token by token.
//!
//!   cargo run --release --example generate -- MODEL.gguf "The capital of France is"

use std::io::Write;

use rocm_llama::{Context, ContextConfig, Event, GenerateOptions, LoadConfig, Model, SamplingParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: generate MODEL.gguf [PROMPT]")?;
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".to_string());

    let model = Model::load(&path, &LoadConfig::default())?;
    println!("{} — {} layers, trained context {}", model.description(), model.n_layer(), model.n_ctx_train());
    let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(2048))?;
    let opts =
        GenerateOptions::default().max_tokens(64).sampling(SamplingParams::default().temperature(0.7).seed(1234));
    print!("{prompt}");
    for event in ctx.generate(&prompt, &opts)? {
        match event? {
            Event::Token { text, .. } | Event::Text(text) => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            Event::Done(s) => {
                eprintln!(
                    "\n\n{} tokens, {:.1} tokens/s, stop: {:?}",
                    s.generated_tokens, s.decode_tokens_per_s, s.stop_reason
                )
            }
        }
    }
    Ok(())
}
