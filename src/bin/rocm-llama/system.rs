//! `devices`, `info` and `synth`: what this machine and this binary offer, and synthetic
//! models to measure them with.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rocm_llama::accounting::gib;
use rocm_llama::synth::SynthType;

use crate::{AnyResult, UserError};

#[derive(Args)]
pub struct JsonArg {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The element types `synth` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SynthTypeArg {
    #[value(name = "q4_k_m")]
    Q4KM,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q8_0")]
    Q8_0,
    F16,
}

impl From<SynthTypeArg> for SynthType {
    fn from(t: SynthTypeArg) -> Self {
        match t {
            SynthTypeArg::Q4KM => SynthType::Q4KM,
            SynthTypeArg::Q4_0 => SynthType::Q4_0,
            SynthTypeArg::Q8_0 => SynthType::Q8_0,
            SynthTypeArg::F16 => SynthType::F16,
        }
    }
}

#[derive(Args)]
pub struct SynthArgs {
    /// llama3-8b, qwen3-8b, gemma3-4b, llama2-7b, gemma3-270m, tiny, tiny-qwen3, tiny-gemma3.
    #[arg(long, required_unless_present = "tokenizer_only")]
    shape: Option<String>,
    /// The weights' type.
    #[arg(long = "type", value_enum, default_value_t = SynthTypeArg::Q4KM)]
    ty: SynthTypeArg,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Threads for quantization [default: the cores this process may use].
    #[arg(short, long)]
    threads: Option<u32>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Take the vocabulary, special tokens and chat template from this GGUF (a model, or a
    /// file written with --tokenizer-only) instead of making one up.
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Write only the tokenizer of --tokenizer-from (a few MB, no weights) to --output.
    #[arg(long, requires = "tokenizer_from")]
    tokenizer_only: bool,
    /// Write a LoRA adapter for --shape instead of a model (F32, random A and B on the
    /// attention's q and v and the feed-forward's down projection of every layer).
    #[arg(long, conflicts_with_all = ["tokenizer_from", "tokenizer_only"])]
    lora: bool,
    /// The adapter's rank, with --lora.
    #[arg(long, default_value_t = 16, requires = "lora")]
    lora_rank: u64,
}

pub fn synth(args: SynthArgs) -> AnyResult<()> {
    let output = args.output.as_path();
    let tokenizer = args.tokenizer_from.as_deref().map(rocm_llama::synth::Tokenizer::from_gguf).transpose()?;
    if args.tokenizer_only {
        let tokenizer = tokenizer.ok_or_else(|| UserError::boxed("--tokenizer-only needs --tokenizer-from"))?;
        tokenizer.write_to(output)?;
        let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
        eprintln!("wrote the tokenizer ({} tokens) to {} ({})", tokenizer.n_tokens(), output.display(), gib(size));
        println!("{}", output.display());
        return Ok(());
    }
    let shape =
        rocm_llama::synth::find_shape(args.shape.as_deref().ok_or_else(|| UserError::boxed("--shape is required"))?)?;
    if args.lora {
        let spec = rocm_llama::synth::LoraSpec { rank: args.lora_rank, seed: args.seed, ..Default::default() };
        rocm_llama::synth::lora_writer(shape, &spec)?.write_to(output)?;
        let size = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "wrote a rank-{} LoRA adapter for {} to {} ({})",
            args.lora_rank,
            shape.name,
            output.display(),
            gib(size)
        );
        println!("{}", output.display());
        return Ok(());
    }
    let ty: SynthType = args.ty.into();
    let threads = args.threads.unwrap_or_else(rocm_llama::default_threads);
    let started = std::time::Instant::now();
    let spinner = crate::spinner();
    let sp = spinner.clone();
    let path = rocm_llama::synth::synth(shape, ty, output, threads, args.seed, tokenizer.as_ref(), &move |msg| {
        sp.set_message(msg.to_string())
    });
    spinner.finish_and_clear();
    let path = path?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({}, {} as {ty:?}) in {:.1} s",
        path.display(),
        gib(size),
        shape.name,
        started.elapsed().as_secs_f64()
    );
    println!("{}", path.display());
    Ok(())
}

#[derive(Args)]
pub struct DevicesArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also list the devices of these RPC servers (`rocm-llama rpc-server` or llama.cpp's).
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    rpc: Vec<String>,
}

pub fn devices(args: DevicesArgs) -> AnyResult<()> {
    // Attach the servers first: their devices then appear in the report.
    let remote = rocm_llama::rpc::devices(&args.rpc, rocm_llama::rpc::DEFAULT_TIMEOUT)?;
    let report = rocm_llama::devices();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        for d in &remote {
            let server = d.remote.as_deref().unwrap_or("?");
            println!("remote: {} on {server}: {} free of {} (with --rpc {server})", d.name, gib(d.free), gib(d.total));
        }
    }
    Ok(())
}

pub fn info(args: JsonArg) -> AnyResult<()> {
    let info = rocm_llama::build_info();
    if args.json {
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
    // The devices a model goes to here, by backend (`--device` picks others).
    let registry = rocm_llama::devices::backend_devices();
    let offload: Vec<String> = rocm_llama::devices::offload_devices(&registry)
        .iter()
        .map(|d| format!("{} ({}, {})", d.name, d.backend, d.description))
        .collect();
    println!(
        "offloads to     {}",
        if offload.is_empty() { "- (the CPU only)".to_string() } else { offload.join("; ") }
    );
    let skipped: Vec<String> = rocm_llama::devices::same_card_skipped(&registry)
        .iter()
        .map(|(s, u)| format!("{} (the card of {})", s.name, u.name))
        .collect();
    if !skipped.is_empty() {
        println!("also reachable  {} (--device)", skipped.join("; "));
    }
    println!("target          {}", info.target);
    println!("cpu features    {}", info.cpu_features);
    println!("default threads {}", rocm_llama::default_threads());
    Ok(())
}
