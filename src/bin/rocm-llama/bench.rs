//! `bench`: prefill, decode, time to first token and engine concurrency, printed as a table,
//! or as llama-bench prints its results (`-o md|csv|json|jsonl`, its column names).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use rocm_llama::bench::{BenchConfig, BenchReport, Measurement};
use rocm_llama::{FlashAttention, LoadConfig, Model};

use crate::options::{model_path, parse_ngl, FaArg, KvArg, NglArg, SplitArg};
use crate::{AnyResult, UserError};

/// Where sampling runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// On the host (the default: it measured faster; see the library's `SamplerPlacement`).
    Host,
    /// Inside the decode graph whenever the chain can run there.
    Device,
}

impl From<PlacementArg> for rocm_llama::SamplerPlacement {
    fn from(p: PlacementArg) -> Self {
        match p {
            PlacementArg::Host => rocm_llama::SamplerPlacement::Host,
            PlacementArg::Device => rocm_llama::SamplerPlacement::Device,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// rocm-llama's table, with the engine and the raw baselines.
    Table,
    /// A Markdown table with llama-bench's columns.
    Md,
    /// One CSV row per test, llama-bench's field names.
    Csv,
    /// A JSON array of those rows.
    Json,
    /// One JSON object per line.
    Jsonl,
}

#[derive(Args)]
pub struct BenchArgs {
    /// A GGUF file or a model name.
    #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
    model: Option<String>,
    /// Prompt lengths (pp and ttft; 0 skips them).
    #[arg(short = 'p', long = "n-prompt", visible_alias = "prompt", value_delimiter = ',', default_value = "512")]
    n_prompt: Vec<usize>,
    /// Generated tokens (tg; 0 skips it).
    #[arg(short = 'n', long = "n-gen", visible_alias = "gen", default_value_t = 128)]
    n_gen: usize,
    /// KV depths at which the first prompt length and the generation are measured (-d).
    #[arg(short = 'd', long = "n-depth", visible_alias = "depths", value_delimiter = ',', default_value = "0")]
    depths: Vec<usize>,
    /// Repetitions per test.
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// Flash attention settings to compare (-fa off,on).
    #[arg(long = "flash-attn", visible_alias = "fa", value_enum, value_delimiter = ',', default_value = "auto")]
    flash_attn: Vec<FaArg>,
    /// Concurrency levels through the engine against a raw batched loop, e.g. 1,8,64 [default:
    /// none].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Prompt and generated tokens per sequence in the concurrency test.
    #[arg(long, default_value_t = 128)]
    concurrent_tokens: usize,
    /// KV cache type (-ctk; V uses the same).
    #[arg(long = "cache-type-k", visible_alias = "kv-type", value_enum, default_value_t = KvArg::F16)]
    kv_type: KvArg,
    /// Layers on the GPU: a number or `all` (-ngl).
    #[arg(long = "n-gpu-layers", visible_alias = "gpu-layers", value_parser = parse_ngl, default_value = "all")]
    ngl: NglArg,
    /// Several GPUs (-sm).
    #[arg(long, value_enum, default_value_t = SplitArg::Layer)]
    split_mode: SplitArg,
    /// The GPU for --split-mode none (-mg).
    #[arg(long, default_value_t = 0)]
    main_gpu: u32,
    /// RPC servers whose devices take part in the layer split (-rpc).
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    rpc: Vec<String>,
    /// The GPUs to offload to, by the names `rocm-llama devices` lists (`Vulkan0`), or
    /// `none` [default: llama.cpp's choice] (-dev).
    #[arg(long = "device", value_name = "DEV[,DEV...]", value_delimiter = ',')]
    devices: Vec<String>,
    /// Keep CPU weights in their file's layout instead of llama.cpp's repacked one (-nr).
    #[arg(long)]
    no_repack: bool,
    /// CPU threads.
    #[arg(short, long)]
    threads: Option<u32>,
    /// Logical batch size.
    #[arg(short = 'b', long, default_value_t = 2048)]
    batch_size: u32,
    /// One KV buffer for all sequences in the concurrency test (-kvu, as llama-batched-bench;
    /// default: one per sequence).
    #[arg(long)]
    kv_unified: bool,
    /// Where the engine's requests sample in the concurrency test.
    #[arg(long, value_enum, default_value_t = PlacementArg::Host)]
    sampling: PlacementArg,
    /// Greedy requests in the concurrency test (default: the default sampling chain).
    #[arg(long)]
    greedy: bool,
    /// The engine in its reproducible mode in the concurrency test (each sequence decoded in
    /// a batch of its own): what output independent of other requests costs.
    #[arg(long)]
    reproducible: bool,
    /// One prompt for every sequence of the concurrency test, as llama-batched-bench's
    /// `-pps`: the raw loop computes it once and copies it; the engine shares it its own way.
    #[arg(long = "prompt-shared", visible_alias = "pps")]
    prompt_shared: bool,
    /// A LoRA adapter for the concurrency test's engine requests, FILE or FILE:SCALE
    /// (repeatable): each is a set of its own and requests take them in turn, so two measure
    /// what mixing sets costs (the engine decodes each set apart); the raw loop runs without.
    #[arg(long, value_name = "FILE[:SCALE]")]
    lora: Vec<String>,
    #[command(flatten)]
    speculation: crate::options::SpeculationArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Print the whole report (settings, build, devices) as one JSON object.
    #[arg(long, conflicts_with = "output")]
    json: bool,
    /// Write an SVG plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also save the whole JSON report to this file.
    #[arg(long)]
    save: Option<PathBuf>,
}

pub fn bench(args: BenchArgs) -> AnyResult<()> {
    let gpu_layers = match args.ngl {
        NglArg::Fixed(l) => l,
        NglArg::Auto => return Err(UserError::boxed("bench takes a fixed -ngl (a number or all), not auto")),
    };
    let mut load = LoadConfig::default()
        .gpu_layers(gpu_layers)
        .split_mode(args.split_mode.into())
        .main_gpu(args.main_gpu)
        .rpc(args.rpc.clone())
        .devices(args.devices.clone());
    if args.no_repack {
        load = load.cpu_repack(false);
    }
    let cfg = BenchConfig::default()
        .n_prompt(args.n_prompt)
        .n_gen(args.n_gen)
        .depths(args.depths)
        .repetitions(args.repetitions)
        .flash_attention(args.flash_attn.iter().map(|&f| f.into()).collect())
        .kv_type(args.kv_type.into())
        .concurrency(args.concurrency.into_iter().filter(|&c| c > 0).collect())
        .concurrent_prompt(args.concurrent_tokens)
        .concurrent_gen(args.concurrent_tokens)
        .threads(args.threads)
        .n_batch(args.batch_size)
        .kv_unified(args.kv_unified)
        .reproducible(args.reproducible)
        .shared_prompt(args.prompt_shared)
        .placement(args.sampling.into())
        .greedy(args.greedy);
    let path = model_path(args.model.as_deref())?;
    let model = Arc::new(Model::load(&path, &load)?);
    let mut lora_sets = Vec::new();
    for item in &args.lora {
        let (lora, _) = crate::options::AdapterArgs::lora_only(item).load(&model)?;
        lora_sets.push(lora);
    }
    let cfg = cfg.lora_sets(lora_sets).speculation(args.speculation.speculation(&model)?);
    let spinner = crate::spinner();
    let sp = spinner.clone();
    let report = rocm_llama::bench::run(&model, &cfg, &move |m| sp.set_message(m.to_string()));
    spinner.finish_and_clear();
    let report = report?;
    // The raw-FFI loops call llama.cpp directly: numbers taken after a server failed are void.
    model.check_remote()?;
    if let Some(p) = &args.plot {
        std::fs::write(p, report.svg()).map_err(|e| UserError::boxed(format!("{}: {e}", p.display())))?;
        eprintln!("plot written to {}", p.display());
    }
    if save_report(&report, args.save.as_deref(), args.json)? {
        return Ok(());
    }
    let rows = || rows(&model, &report, args.split_mode, args.main_gpu);
    match args.output {
        Output::Table => print!("{}", report.table()),
        Output::Md => print!("{}", markdown(&rows())),
        Output::Csv => print!("{}", csv(&rows())),
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows())?),
        Output::Jsonl => {
            for r in rows() {
                println!("{r}");
            }
        }
    }
    Ok(())
}

/// The fields of one row, in order (llama-bench's names where it has the quantity; `avg_ms`
/// and `stddev_ms` for time-to-first-token tests, which it does not have).
const FIELDS: &[&str] = &[
    "build_commit",
    "build_source",
    "backends",
    "model_filename",
    "model_type",
    "model_size",
    "model_n_params",
    "n_batch",
    "n_threads",
    "type_k",
    "type_v",
    "n_gpu_layers",
    "split_mode",
    "main_gpu",
    "flash_attn",
    "n_prompt",
    "n_gen",
    "n_depth",
    "test",
    "avg_ns",
    "stddev_ns",
    "samples_ns",
    "avg_ts",
    "stddev_ts",
    "samples_ts",
    "avg_ms",
    "stddev_ms",
];

/// Mean and sample standard deviation, as llama-bench computes them (0 for one sample).
fn mean_stddev(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// `pp512` -> (512, 0), `tg128` -> (0, 128), `ttft512` -> (512, 1); a `raw ` prefix (the
/// raw-FFI baseline) is kept in the test name but not here.
fn test_sizes(test: &str) -> (usize, usize) {
    let t = test.trim_start_matches("raw ");
    let num = |p: &str| t.strip_prefix(p).and_then(|n| n.parse().ok());
    if let Some(n) = num("ttft") {
        (n, 1)
    } else if let Some(n) = num("pp") {
        (n, 0)
    } else if let Some(n) = num("tg") {
        (0, n)
    } else {
        (0, 0)
    }
}

fn fa_name(fa: FlashAttention) -> &'static str {
    match fa {
        FlashAttention::On => "on",
        FlashAttention::Off => "off",
        _ => "auto",
    }
}

/// One row per measurement with llama-bench's fields and true values: `n_gpu_layers` is what
/// the load put on GPUs (0 without a GPU backend), `build_commit` is "unknown" as llama-bench
/// built from the same source says (the crate's copy of llama.cpp carries no git commit) and
/// `build_source` names that source; `samples_ns` are the times of each repetition.
fn rows(model: &Model, report: &BenchReport, split: SplitArg, main_gpu: u32) -> Vec<serde_json::Value> {
    let info = rocm_llama::build_info();
    let threads = report.config.threads.unwrap_or_else(rocm_llama::default_threads);
    let kv = format!("{:?}", report.config.kv_type).to_lowercase();
    let ngl = model.gpu_layers();
    let source = format!("llama-cpp-sys-2 {} (llama.cpp {})", info.llama_cpp_sys_version, info.llama_cpp_version);
    let row = |m: &Measurement| {
        let (n_prompt, n_gen) = test_sizes(&m.test);
        let per_s = m.unit != "ms";
        let test = if m.depth > 0 { format!("{} @ d{}", m.test, m.depth) } else { m.test.clone() };
        // Each repetition's time: tokens over its rate, or its milliseconds.
        let tokens = (n_prompt + n_gen) as f64;
        let samples_ns: Vec<u64> = m
            .runs
            .iter()
            .map(|&r| {
                if per_s {
                    if r > 0.0 {
                        tokens / r * 1e9
                    } else {
                        0.0
                    }
                } else {
                    r * 1e6
                }
            })
            .map(|ns| ns.round() as u64)
            .collect();
        let (avg_ns, stddev_ns) = mean_stddev(&samples_ns.iter().map(|&n| n as f64).collect::<Vec<_>>());
        serde_json::json!({
            "build_commit": "unknown",
            "build_source": source,
            "backends": info.backends.join(","),
            "model_filename": model.path().display().to_string(),
            "model_type": model.description(),
            "model_size": model.size_bytes(),
            "model_n_params": model.n_params(),
            "n_batch": report.config.n_batch,
            "n_threads": threads,
            "type_k": kv,
            "type_v": kv,
            "n_gpu_layers": ngl,
            "split_mode": format!("{split:?}").to_lowercase(),
            "main_gpu": main_gpu,
            "flash_attn": fa_name(m.flash_attention),
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "n_depth": m.depth,
            "test": test,
            "avg_ns": avg_ns.round() as u64,
            "stddev_ns": stddev_ns.round() as u64,
            "samples_ns": samples_ns,
            "avg_ts": per_s.then_some(m.mean),
            "stddev_ts": per_s.then_some(m.stddev),
            "samples_ts": if per_s { m.runs.clone() } else { Vec::new() },
            "avg_ms": (!per_s).then_some(m.mean),
            "stddev_ms": (!per_s).then_some(m.stddev),
        })
    };
    let mut out: Vec<serde_json::Value> = report.measurements.iter().map(row).collect();
    // The engine's throughput at each concurrency level, beside raw batched decode.
    for c in &report.concurrency {
        for (name, ts) in [("engine", c.engine_tokens_per_s), ("raw batched", c.raw_tokens_per_s)] {
            let m = Measurement {
                test: format!("{name} tg{} x{}", report.config.concurrent_gen, c.sequences),
                flash_attention: FlashAttention::Auto,
                depth: 0,
                mean: ts,
                stddev: 0.0,
                unit: "tok/s",
                runs: vec![ts],
            };
            let mut r = row(&m);
            r["n_prompt"] = report.config.concurrent_prompt.into();
            r["n_gen"] = report.config.concurrent_gen.into();
            // The decode phase's time: every sequence's tokens at the aggregate rate.
            let ns = if ts > 0.0 { (report.config.concurrent_gen * c.sequences) as f64 / ts * 1e9 } else { 0.0 };
            r["avg_ns"] = (ns.round() as u64).into();
            r["samples_ns"] = serde_json::json!([ns.round() as u64]);
            r["flash_attn"] = report.config.flash_attention.last().map_or("auto", |&f| fa_name(f)).into();
            out.push(r);
        }
    }
    out
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(";"),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.6}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn csv(rows: &[serde_json::Value]) -> String {
    let quote = |s: String| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = FIELDS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&FIELDS.iter().map(|f| quote(cell(&r[*f]))).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

fn markdown(rows: &[serde_json::Value]) -> String {
    let mut out = String::from("| model | size | params | backend | ngl | fa | test | t/s |\n");
    out.push_str("| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |\n");
    for r in rows {
        let result = match (r["avg_ts"].as_f64(), r["avg_ms"].as_f64()) {
            (Some(ts), _) => format!("{ts:.2} ± {:.2}", r["stddev_ts"].as_f64().unwrap_or(0.0)),
            (None, Some(ms)) => format!("{ms:.2} ± {:.2} ms", r["stddev_ms"].as_f64().unwrap_or(0.0)),
            _ => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.2} M | {} | {} | {} | {} | {} |\n",
            cell(&r["model_type"]),
            rocm_llama::accounting::gib(r["model_size"].as_u64().unwrap_or(0)),
            r["model_n_params"].as_u64().unwrap_or(0) as f64 / 1e6,
            cell(&r["backends"]),
            cell(&r["n_gpu_layers"]),
            cell(&r["flash_attn"]),
            cell(&r["test"]),
            result
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::test_sizes;

    #[test]
    fn test_names_give_their_sizes() {
        assert_eq!(test_sizes("pp512"), (512, 0));
        assert_eq!(test_sizes("raw pp2048"), (2048, 0));
        assert_eq!(test_sizes("tg128"), (0, 128));
        assert_eq!(test_sizes("ttft512"), (512, 1));
        assert_eq!(test_sizes("engine"), (0, 0));
    }
}

#[derive(Args)]
pub struct BenchEmbedArgs {
    /// A GGUF file or a model name.
    #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
    model: Option<String>,
    /// Layers on the GPU: a number or `all`.
    #[arg(long = "n-gpu-layers", visible_alias = "gpu-layers", value_name = "N|all", value_parser = parse_ngl, default_value = "all")]
    ngl: NglArg,
    /// Texts per decode, one run each (1..=256).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    batches: Vec<usize>,
    /// Texts embedded per run.
    #[arg(long, default_value_t = 256)]
    texts: usize,
    /// Tokens per text.
    #[arg(long, default_value_t = 32)]
    text_tokens: usize,
    /// Pooling of the embedding runs.
    #[arg(long, default_value = "mean")]
    pooling: rocm_llama::Pooling,
    /// Texts to classify (0: skip), shared prefix against each label its own prompt.
    #[arg(long, default_value_t = 1000)]
    classify: usize,
    /// Labels per text in the classification run (1..=8).
    #[arg(long, default_value_t = 4)]
    labels: usize,
    /// Flash attention.
    #[arg(long = "flash-attn", short = 'f', value_enum, default_value_t = FaArg::Auto)]
    flash_attn: FaArg,
    /// CPU threads [default: the cores other processes leave idle].
    #[arg(short, long)]
    threads: Option<u32>,
    /// Print the whole report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also save the JSON report to this file.
    #[arg(long)]
    save: Option<PathBuf>,
}

pub fn bench_embed(args: BenchEmbedArgs) -> AnyResult<()> {
    use rocm_llama::bench::embed::EmbedBenchConfig;
    let gpu_layers = match args.ngl {
        NglArg::Fixed(l) => l,
        NglArg::Auto => return Err(UserError::boxed("bench-embed takes a fixed -ngl (a number or all), not auto")),
    };
    let cfg = EmbedBenchConfig::default()
        .batches(args.batches)
        .texts(args.texts)
        .text_tokens(args.text_tokens)
        .pooling(args.pooling)
        .classify_texts(args.classify)
        .labels(args.labels)
        .flash_attention(args.flash_attn.into())
        .threads(args.threads);
    let path = model_path(args.model.as_deref())?;
    let model = Model::load(&path, &LoadConfig::default().gpu_layers(gpu_layers))?;
    let spinner = crate::spinner();
    let sp = spinner.clone();
    let report = rocm_llama::bench::embed::run(&model, &cfg, &move |m| sp.set_message(m.to_string()));
    spinner.finish_and_clear();
    let report = report?;
    if !save_report(&report, args.save.as_deref(), args.json)? {
        print!("{}", report.table());
    }
    Ok(())
}

/// The whole report with the build and the devices beside it: saved to `save` when given,
/// printed when `json`. Returns whether it was printed.
fn save_report(report: &impl serde::Serialize, save: Option<&std::path::Path>, json: bool) -> AnyResult<bool> {
    let whole = serde_json::json!({
        "report": report,
        "build": rocm_llama::build_info(),
        "devices": rocm_llama::devices().backend_devices,
    });
    if let Some(p) = save {
        std::fs::write(p, serde_json::to_string_pretty(&whole)?)
            .map_err(|e| UserError::boxed(format!("{}: {e}", p.display())))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&whole)?);
    }
    Ok(json)
}
