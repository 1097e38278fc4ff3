//! Options that several subcommands share: which model, how it is placed and how the context
//! is set up (`run`, `chat`, `bench`), and how tokens are picked (`run`, `chat`). Flag names
//! follow llama.cpp's tools, so `-m`, `-c`, `-ngl`, `-fa`, `-ctk` mean what they mean there.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rocm_llama::inventory;
use rocm_llama::{
    ContextConfig, FitOptions, FlashAttention, GenerateOptions, GpuLayers, KvType, LoadConfig, Model, SamplingParams,
    SplitMode,
};
use rocm_llama::{ControlVector, DraftModel, LoraAdapter, Speculation};

use crate::{AnyResult, UserError};

/// llama.cpp's multi-letter single-dash flags, rewritten to their long forms before clap
/// parses the command line (clap's short flags are one letter).
const LLAMA_FLAGS: &[(&str, &str)] = &[
    ("-ngl", "--n-gpu-layers"),
    ("-ctk", "--cache-type-k"),
    ("-ctv", "--cache-type-v"),
    ("-fa", "--flash-attn"),
    ("-ub", "--ubatch-size"),
    ("-sm", "--split-mode"),
    ("-mg", "--main-gpu"),
    ("-kvu", "--kv-unified"),
    ("-rpc", "--rpc"),
    ("-dev", "--device"),
    ("-nr", "--no-repack"),
    ("-hf", "--hf-repo"),
    ("-ot", "--override-tensor"),
    ("-np", "--parallel"),
    ("-cb", "--cont-batching"),
    ("-nocb", "--no-cont-batching"),
    ("-md", "--model-draft"),
    ("-ngld", "--gpu-layers-draft"),
];

/// More of llama-cli's single-dash flags, rewritten only for `run` and `chat` (elsewhere `-r`
/// is llama-bench's repetitions).
const LLAMA_CLI_FLAGS: &[(&str, &str)] = &[
    ("-sys", "--system"),
    ("-no-cnv", "--no-cnv"),
    ("-cnv", "--conversation"),
    ("-r", "--reverse-prompt"),
    ("-e", "--escape"),
];

/// Rewrites `-ngl 99`, `-ngl=99` and the like to their long forms. Arguments after `--`
/// are left alone.
pub fn rewrite_llama_flags(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    // The subcommand: the first argument after the program's name that is no flag.
    let mut subcommand: Option<String> = None;
    for (i, arg) in args.into_iter().enumerate() {
        if i > 0 && subcommand.is_none() {
            if let Some(s) = arg.to_str().filter(|s| !s.starts_with('-')) {
                subcommand = Some(s.to_string());
            }
        }
        let cli = matches!(subcommand.as_deref(), Some("run" | "chat"));
        if rest {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        let (flag, value) = match s.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (s, None),
        };
        let table = LLAMA_FLAGS.iter().chain(if cli { LLAMA_CLI_FLAGS } else { &[] });
        match table.clone().find(|(short, _)| *short == flag) {
            Some((_, long)) => out.push(match value {
                Some(v) => format!("{long}={v}").into(),
                None => (*long).into(),
            }),
            None => out.push(arg),
        }
    }
    out
}

/// Flash attention, as `-fa` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FaArg {
    /// llama.cpp decides per model and device.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

impl From<FaArg> for FlashAttention {
    fn from(f: FaArg) -> Self {
        match f {
            FaArg::Auto => FlashAttention::Auto,
            FaArg::On => FlashAttention::On,
            FaArg::Off => FlashAttention::Off,
        }
    }
}

/// A KV cache element type, as `-ctk`/`-ctv` take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvArg {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "iq4_nl")]
    Iq4Nl,
}

impl From<KvArg> for KvType {
    fn from(k: KvArg) -> Self {
        match k {
            KvArg::F32 => KvType::F32,
            KvArg::F16 => KvType::F16,
            KvArg::Bf16 => KvType::BF16,
            KvArg::Q8_0 => KvType::Q8_0,
            KvArg::Q4_0 => KvType::Q4_0,
            KvArg::Q4_1 => KvType::Q4_1,
            KvArg::Q5_0 => KvType::Q5_0,
            KvArg::Q5_1 => KvType::Q5_1,
            KvArg::Iq4Nl => KvType::Iq4Nl,
        }
    }
}

/// How a model goes onto several GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// Everything on --main-gpu.
    None,
    /// Whole layers (and their KV cache) per GPU.
    Layer,
    /// Rows of each weight across GPUs.
    Row,
}

impl From<SplitArg> for SplitMode {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::None => SplitMode::None,
            SplitArg::Layer => SplitMode::Layer,
            SplitArg::Row => SplitMode::Row,
        }
    }
}

/// `-ngl`: a number of layers, `all`, or `auto` (fit to free memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NglArg {
    /// Fit layers and context to free memory.
    Auto,
    /// Exactly this.
    Fixed(GpuLayers),
}

pub fn parse_ngl(s: &str) -> Result<NglArg, String> {
    match s {
        "auto" => Ok(NglArg::Auto),
        "all" | "-1" => Ok(NglArg::Fixed(GpuLayers::All)),
        n => n
            .parse::<u32>()
            .map(|n| NglArg::Fixed(GpuLayers::Count(n)))
            .map_err(|_| format!("expected a number of layers, `all` or `auto`, not {n:?}")),
    }
}

/// Speculative decoding, with llama.cpp's flags (`run`, `chat`, `serve`, `bench`).
#[derive(Args, Clone, Debug, Default)]
pub struct SpeculationArgs {
    /// Speculative decoding: `ngram-simple` guesses the next tokens from where the last few
    /// appeared before in the prompt or reply (prompt lookup: pays off when the reply copies
    /// from the prompt), `draft-simple` has the --model-draft guess them (the default when one
    /// is given), `none` turns it off [default: none]. Greedy output is the same either way;
    /// sampled output has the same distribution.
    #[arg(long, value_name = "TYPE", value_parser = ["none", "ngram-simple", "draft-simple"])]
    spec_type: Option<String>,
    /// A draft model for speculative decoding (-md): smaller, with the same vocabulary.
    #[arg(long, visible_alias = "spec-draft-model", value_name = "FILE")]
    model_draft: Option<PathBuf>,
    /// The draft model's layers on the GPU (-ngld): a number or `all` [default: all].
    #[arg(long, visible_aliases = ["n-gpu-layers-draft", "spec-draft-ngl"], value_name = "N|all", value_parser = parse_ngl)]
    gpu_layers_draft: Option<NglArg>,
    /// The draft model's least probability for a guessed token: its guess stops at a less
    /// likely one [default: 0.5].
    #[arg(long, visible_alias = "spec-draft-p-min", value_name = "P")]
    draft_p_min: Option<f32>,
    /// ngram-simple: the longest run of tokens looked up, tried down to 2 [default: 4].
    #[arg(long, value_name = "N")]
    spec_ngram_simple_size_n: Option<usize>,
    /// ngram-simple: the most tokens guessed after a match [default: 10].
    #[arg(long, value_name = "M")]
    spec_ngram_simple_size_m: Option<usize>,
    /// The most tokens guessed per decode (overrides --spec-ngram-simple-size-m).
    #[arg(long, visible_alias = "draft-max", value_name = "N")]
    spec_draft_n_max: Option<usize>,
    /// The fewest tokens worth a guess: a shorter one is not decoded [default: 0].
    #[arg(long, visible_alias = "draft-min", value_name = "N")]
    spec_draft_n_min: Option<usize>,
}

impl SpeculationArgs {
    /// The speculation asked for, checked (a draft model loaded and checked against
    /// `target`); `None` without `--spec-type` or `--model-draft` (or with `--spec-type none`).
    pub fn speculation(&self, target: &Model) -> AnyResult<Option<Speculation>> {
        let tuned = self.spec_ngram_simple_size_n.is_some()
            || self.spec_ngram_simple_size_m.is_some()
            || self.spec_draft_n_max.is_some()
            || self.spec_draft_n_min.is_some()
            || self.gpu_layers_draft.is_some()
            || self.draft_p_min.is_some();
        let kind = match (self.spec_type.as_deref(), &self.model_draft) {
            (None, Some(_)) => Some("draft-simple"),
            (Some("none"), _) | (None, None) => None,
            (kind, _) => kind,
        };
        match kind {
            None => {
                if tuned || self.model_draft.is_some() {
                    return Err(UserError::boxed(
                        "the --spec-*, --draft-* and --model-draft settings need --spec-type (ngram-simple or draft-simple)",
                    ));
                }
                Ok(None)
            }
            Some("draft-simple") => {
                let Some(path) = &self.model_draft else {
                    return Err(UserError::boxed("--spec-type draft-simple needs a draft model (--model-draft, -md)"));
                };
                let gpu_layers = match self.gpu_layers_draft {
                    Some(NglArg::Fixed(layers)) => layers,
                    Some(NglArg::Auto) | None => GpuLayers::All,
                };
                let draft = Model::load(path, &LoadConfig::default().gpu_layers(gpu_layers))
                    .map_err(|e| UserError::boxed(format!("--model-draft {}: {e}", path.display())))?;
                let draft = DraftModel::new(target, std::sync::Arc::new(draft))
                    .map_err(|e| UserError::boxed(format!("--model-draft {}: {e}", path.display())))?;
                let Speculation::Draft { draft, draft_max, draft_min, p_min } = Speculation::draft_model(draft) else {
                    return Err(UserError::boxed("--spec-type: unknown default"));
                };
                let spec = Speculation::Draft {
                    draft,
                    draft_max: self.spec_draft_n_max.unwrap_or(draft_max),
                    draft_min: self.spec_draft_n_min.unwrap_or(draft_min),
                    p_min: self.draft_p_min.unwrap_or(p_min),
                };
                spec.check().map_err(|e| UserError::boxed(format!("--spec-type draft-simple: {e}")))?;
                Ok(Some(spec))
            }
            _ => {
                let Speculation::Ngram { n_min, n_max, draft_max, draft_min } = Speculation::ngram() else {
                    return Err(UserError::boxed("--spec-type: unknown default"));
                };
                let n_max = self.spec_ngram_simple_size_n.unwrap_or(n_max);
                let spec = Speculation::Ngram {
                    n_min: n_min.min(n_max),
                    n_max,
                    draft_max: self.spec_draft_n_max.or(self.spec_ngram_simple_size_m).unwrap_or(draft_max),
                    draft_min: self.spec_draft_n_min.unwrap_or(draft_min),
                };
                spec.check().map_err(|e| UserError::boxed(format!("--spec-type ngram-simple: {e}")))?;
                Ok(Some(spec))
            }
        }
    }
}

/// LoRA adapters and control vectors, with llama.cpp's flags (`run`, `chat`, `serve`).
#[derive(Args, Clone, Debug, Default)]
pub struct AdapterArgs {
    /// A LoRA adapter, at scale 1 or FILE:SCALE (repeatable; files may also be
    /// comma-separated, as llama.cpp takes them).
    #[arg(long, value_name = "FILE[:SCALE]")]
    lora: Vec<String>,
    /// A LoRA adapter with its scale, FILE:SCALE (repeatable or comma-separated).
    #[arg(long, value_name = "FILE:SCALE")]
    lora_scaled: Vec<String>,
    /// A control vector (a GGUF of direction.N tensors) at strength 1; several add up
    /// (repeatable or comma-separated).
    #[arg(long, value_name = "FILE")]
    control_vector: Vec<String>,
    /// A control vector with its strength, FILE:SCALE (repeatable or comma-separated).
    #[arg(long, value_name = "FILE:SCALE")]
    control_vector_scaled: Vec<String>,
    /// The layers the control vectors apply to, first and last (from 1) [default: all but
    /// the first].
    #[arg(long, num_args = 2, value_names = ["START", "END"])]
    control_vector_layer_range: Option<Vec<u32>>,
}

/// What [`AdapterArgs::load`] gives: adapters with scales, and the summed control vector with
/// its layers.
pub type Adapters = (Vec<(LoraAdapter, f32)>, Option<(ControlVector, std::ops::RangeInclusive<u32>)>);

/// `FILE:SCALE` split at its last colon.
fn scaled(item: &str, flag: &str) -> AnyResult<(String, f32)> {
    let bad = || UserError::boxed(format!("{flag} {item}: expected FILE:SCALE"));
    let (file, scale) = item.rsplit_once(':').ok_or_else(bad)?;
    let scale: f32 = scale.trim().parse().map_err(|_| bad())?;
    if !scale.is_finite() {
        return Err(bad());
    }
    Ok((file.to_string(), scale))
}

impl AdapterArgs {
    /// One `--lora FILE[:SCALE]` alone.
    pub fn lora_only(item: &str) -> AdapterArgs {
        AdapterArgs { lora: vec![item.to_string()], ..AdapterArgs::default() }
    }

    /// Whether any adapter or control vector was asked for.
    pub fn any(&self) -> bool {
        !(self.lora.is_empty()
            && self.lora_scaled.is_empty()
            && self.control_vector.is_empty()
            && self.control_vector_scaled.is_empty()
            && self.control_vector_layer_range.is_none())
    }

    /// Loads every adapter and control vector for `model`, each checked against it.
    pub fn load(&self, model: &std::sync::Arc<Model>) -> AnyResult<Adapters> {
        let items = |list: &[String]| -> Vec<String> {
            list.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
        };
        let mut lora_files = Vec::new();
        for item in items(&self.lora) {
            // FILE, or FILE:SCALE when no file has the whole name.
            if std::path::Path::new(&item).exists() || !item.contains(':') {
                lora_files.push((item, 1.0));
            } else {
                lora_files.push(scaled(&item, "--lora")?);
            }
        }
        for item in items(&self.lora_scaled) {
            lora_files.push(scaled(&item, "--lora-scaled")?);
        }
        let mut lora = Vec::new();
        for (file, scale) in lora_files {
            let adapter = LoraAdapter::load(model, &file).map_err(|e| UserError::boxed(format!("--lora: {e}")))?;
            lora.push((adapter, scale));
        }
        let mut vectors: Vec<(String, f32)> = items(&self.control_vector).into_iter().map(|f| (f, 1.0)).collect();
        for item in items(&self.control_vector_scaled) {
            vectors.push(scaled(&item, "--control-vector-scaled")?);
        }
        if vectors.is_empty() && self.control_vector_layer_range.is_some() {
            return Err(UserError::boxed("--control-vector-layer-range: no --control-vector given"));
        }
        let mut sum: Option<ControlVector> = None;
        for (file, strength) in vectors {
            let v = ControlVector::load(model, &file, strength)
                .map_err(|e| UserError::boxed(format!("--control-vector: {e}")))?;
            sum = Some(match sum {
                None => v,
                Some(s) => s.plus(&v).map_err(|e| UserError::boxed(format!("--control-vector {file}: {e}")))?,
            });
        }
        let n_layer = model.n_layer();
        let layers = match self.control_vector_layer_range.as_deref() {
            Some([start, end]) => *start..=*end,
            _ => 1..=n_layer.saturating_sub(1).max(1),
        };
        if sum.is_some() && (layers.is_empty() || *layers.start() < 1 || *layers.end() >= n_layer) {
            return Err(UserError::boxed(format!(
                "--control-vector-layer-range {} {}: the model's layers with a control vector are 1 to {}",
                layers.start(),
                layers.end(),
                n_layer.saturating_sub(1)
            )));
        }
        Ok((lora, sum.map(|v| (v, layers))))
    }
}

/// The model and where it goes (`run`, `chat`, `bench`).
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file or a model name from `rocm-llama models` [default: the only model in the
    /// model folder (ROCM_MODEL_DIR)].
    #[arg(short, long, env = "ROCM_LLAMA_MODEL")]
    pub model: Option<String>,
    /// Layers on the GPU: a number, `all`, or `auto` (what fits in free memory).
    #[arg(long = "n-gpu-layers", visible_alias = "gpu-layers", value_name = "N|all|auto", value_parser = parse_ngl, default_value = "auto")]
    pub ngl: NglArg,
    /// Several GPUs: `layer` spreads whole layers over them, `row` splits each weight's
    /// rows, `none` uses --main-gpu alone (-sm).
    #[arg(long, value_enum, default_value_t = SplitArg::Layer)]
    pub split_mode: SplitArg,
    /// The GPU for --split-mode none, among the GPUs llama.cpp uses (-mg).
    #[arg(long, default_value_t = 0)]
    pub main_gpu: u32,
    /// CPU threads [default: the cores this process may use that other processes leave idle,
    /// followed while it runs].
    #[arg(short, long)]
    pub threads: Option<u32>,
    /// No progress bar while loading.
    #[arg(long)]
    pub no_progress: bool,
    /// RPC servers whose devices take part in the layer split, before the local GPUs
    /// (`rocm-llama rpc-server` or llama.cpp's; no authentication: trusted networks only).
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// The GPUs to offload to, by the names `rocm-llama devices` lists (`Vulkan0`,
    /// `ROCm0,ROCm1`), or `none` [default: every GPU, a card that two backends reach counted
    /// once, through HIP or CUDA before Vulkan] (-dev).
    #[arg(long = "device", value_name = "DEV[,DEV...]", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Keep the weights in their file's layout on the CPU instead of llama.cpp's faster
    /// repacked one (-nr).
    #[arg(long)]
    pub no_repack: bool,
    /// Download the model from a Hugging Face repository first (as llama.cpp's -hf):
    /// ORG/REPO[:QUANT] (default quantization Q4_K_M) into the model folder, once; needs
    /// HF_ENDPOINT or the hub's default address.
    #[arg(long, value_name = "ORG/REPO[:QUANT]", conflicts_with = "model")]
    pub hf_repo: Option<String>,
    /// Read the weights instead of memory-mapping the file.
    #[arg(long)]
    pub no_mmap: bool,
    /// Accepted for llama.cpp's sake; has no effect here (the pages of a mapped file stay
    /// reclaimable).
    #[arg(long, hide = true)]
    pub mlock: bool,
    /// `serve`: take requests without running the model once first (the first request then
    /// waits for the backends' first-use work, such as Vulkan compiling its pipelines).
    #[arg(long)]
    pub no_warmup: bool,
    /// llama.cpp's metadata overrides (KEY=TYPE:VALUE): not supported; refused with a reason.
    #[arg(long, hide = true, value_name = "KEY=TYPE:VALUE")]
    pub override_kv: Vec<String>,
    /// llama.cpp's tensor placement overrides (-ot): not supported; refused with a reason.
    #[arg(long, hide = true, value_name = "PATTERN=BUFFER")]
    pub override_tensor: Vec<String>,
}

impl ModelArgs {
    /// One line for each llama.cpp flag given that has no effect here; an error for those that
    /// would change the model and are not supported.
    pub fn check_compat(&self) -> AnyResult<()> {
        if !self.override_kv.is_empty() {
            return Err(UserError::boxed(
                "--override-kv is not supported: metadata overrides would change the model; edit a copy of the file instead",
            ));
        }
        if !self.override_tensor.is_empty() {
            return Err(UserError::boxed(
                "--override-tensor (-ot) is not supported: place whole layers with -ngl and --split-mode",
            ));
        }
        if self.mlock {
            eprintln!("note: --mlock has no effect here");
        }
        if self.no_warmup {
            eprintln!("note: --no-warmup has no effect here (only serve runs a warm-up)");
        }
        Ok(())
    }
}

/// The context (`run`, `chat`).
#[derive(Args, Clone, Debug)]
pub struct ContextArgs {
    /// Context length in tokens [default: what fits, up to --max-ctx and the trained length].
    #[arg(short = 'c', long = "ctx-size", visible_alias = "ctx")]
    pub ctx_size: Option<u32>,
    /// The largest context the automatic choice picks.
    #[arg(long, default_value_t = 8192)]
    pub max_ctx: u32,
    /// Logical batch size: prompt tokens per decode.
    #[arg(short = 'b', long, default_value_t = 2048)]
    pub batch_size: u32,
    /// Physical batch size (-ub).
    #[arg(long, default_value_t = 512)]
    pub ubatch_size: u32,
    /// Flash attention (-fa); a bare -fa means on.
    #[arg(long, value_enum, default_value_t = FaArg::Auto, num_args = 0..=1, default_missing_value = "on")]
    pub flash_attn: FaArg,
    /// K cache type (-ctk).
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    pub cache_type_k: KvArg,
    /// V cache type (-ctv).
    #[arg(long, value_enum, default_value_t = KvArg::F16)]
    pub cache_type_v: KvArg,
}

/// How tokens are picked and when generation stops (`run`, `chat`).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate; -1 (the default) runs to the end of generation or of the
    /// context.
    #[arg(short = 'n', long = "predict", visible_aliases = ["n-predict", "max-tokens"], default_value_t = -1, allow_negative_numbers = true)]
    pub predict: i64,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temp: f32,
    /// Top-k (0 disables).
    #[arg(long, default_value_t = 40)]
    pub top_k: i32,
    /// Top-p (1.0 disables).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0 disables).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1.0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// A GBNF grammar file that constrains the output (root rule `root`).
    #[arg(long)]
    pub grammar_file: Option<PathBuf>,
    /// Constrain the output to JSON valid under this JSON Schema: inline JSON or a file.
    #[arg(short = 'j', long, value_name = "SCHEMA|FILE", conflicts_with = "grammar_file")]
    pub json_schema: Option<String>,
    /// RNG seed [default: random].
    #[arg(short, long)]
    pub seed: Option<u32>,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Never pick an end-of-generation token: generate until -n (or the context) runs out.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when this text appears, as --stop (llama-cli's reverse prompt, -r).
    #[arg(long, value_name = "TEXT")]
    pub reverse_prompt: Vec<String>,
    /// Presence penalty (0 disables).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty (0 disables).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Tokens the repetition penalties look back over (0 disables, -1 the context).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub repeat_last_n: i32,
    /// Locally typical sampling (1.0 disables).
    #[arg(long = "typical", visible_alias = "typical-p", default_value_t = 1.0)]
    pub typical: f32,
    /// DRY repetition penalty multiplier (0 disables).
    #[arg(long, default_value_t = 0.0)]
    pub dry_multiplier: f32,
    /// DRY base.
    #[arg(long, default_value_t = 1.75)]
    pub dry_base: f32,
    /// DRY: repeats longer than this are penalised.
    #[arg(long, default_value_t = 2)]
    pub dry_allowed_length: i32,
    /// DRY: tokens looked back over (-1 the context, 0 disables).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub dry_penalty_last_n: i32,
    /// A GBNF grammar, inline (--grammar-file reads one from a file).
    #[arg(long, conflicts_with_all = ["grammar_file", "json_schema"])]
    pub grammar: Option<String>,
    /// Mirostat: only 0 (off) is supported here.
    #[arg(long, default_value_t = 0, hide = true)]
    pub mirostat: u8,
    /// llama.cpp's sampler order: accepted, with a note that the order here is fixed.
    #[arg(long, hide = true)]
    pub samplers: Option<String>,
}

/// The model file to use: `--model` (or ROCM_LLAMA_MODEL, which clap reads into it), else the
/// model folder's only model (or its gemma-3-270m, the test model).
pub fn model_path(model: Option<&str>) -> AnyResult<PathBuf> {
    let dir = inventory::model_dir();
    if let Some(m) = model {
        return Ok(inventory::resolve(m, &dir)?);
    }
    let entries: Vec<_> = inventory::scan(&dir).into_iter().filter(|e| e.info.is_ok()).collect();
    let default = entries.iter().find(|e| e.name.starts_with("gemma-3-270m"));
    match (entries.len(), default) {
        (1, _) => Ok(entries[0].path.clone()),
        (_, Some(e)) => Ok(e.path.clone()),
        (0, _) => Err(UserError::boxed(format!(
            "no model: pass -m PATH, set ROCM_LLAMA_MODEL, or put a GGUF file in {} (ROCM_MODEL_DIR; `rocm-llama pull` \
             fetches one)",
            dir.display()
        ))),
        _ => Err(UserError::boxed(format!(
            "{} models in {}: pick one with -m NAME ({})",
            entries.len(),
            dir.display(),
            entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Loads the model; returns it with the context length the fit chose, when it ran.
/// The contexts a program will make, for `-ngl auto`'s fit to plan their KV cache and buffers:
/// `n_ctx` cells in all (every sequence's), `n_seq` sequences.
#[derive(Clone, Copy, Debug)]
pub struct ContextPlan {
    pub n_ctx: Option<u32>,
    pub max_ctx: u32,
    pub n_seq: u32,
    pub flash_attention: bool,
    pub type_k: KvType,
    pub type_v: KvType,
}

impl ContextArgs {
    /// One context of these settings.
    pub fn plan(&self) -> ContextPlan {
        ContextPlan {
            n_ctx: self.ctx_size,
            max_ctx: self.max_ctx,
            n_seq: 1,
            flash_attention: self.flash_attn == FaArg::On,
            type_k: self.cache_type_k.into(),
            type_v: self.cache_type_v.into(),
        }
    }
}

impl ContextPlan {
    fn fit_options(&self, fit: FitOptions) -> FitOptions {
        let fit = fit.max_ctx(self.max_ctx).n_seq(self.n_seq).flash_attention(self.flash_attention);
        let fit = fit.type_k(self.type_k).type_v(self.type_v);
        match self.n_ctx {
            Some(n) => fit.n_ctx(n),
            None => fit,
        }
    }
}

pub fn load_model(args: &ModelArgs, ctx: Option<ContextPlan>) -> AnyResult<(Model, Option<u32>)> {
    args.check_compat()?;
    let path = match &args.hf_repo {
        Some(repo) => pull_repo(repo, !args.no_progress)?,
        None => model_path(args.model.as_deref())?,
    };
    let split_mode: SplitMode = args.split_mode.into();
    let mut fitted_ctx = None;
    let gpu_layers = match args.ngl {
        NglArg::Fixed(layers) => layers,
        NglArg::Auto => {
            let mut fit = FitOptions::default()
                .single_gpu((split_mode == SplitMode::None).then_some(args.main_gpu))
                .rpc(args.rpc.clone())
                .devices(args.devices.clone());
            if let Some(c) = ctx {
                fit = c.fit_options(fit);
            }
            let (cfg, plan) = LoadConfig::fit(&path, &fit)?;
            let placement = if plan.device == "CPU" {
                "host memory".to_string()
            } else {
                format!("{} of {} layers on {}", plan.gpu_layers, plan.n_layer, plan.device)
            };
            tracing::info!(
                "fit: {placement}, context {} ({} predicted, {} free)",
                plan.n_ctx,
                rocm_llama::accounting::gib(plan.estimate.total()),
                rocm_llama::accounting::gib(plan.free_bytes)
            );
            fitted_ctx = Some(plan.n_ctx);
            cfg.gpu_layers
        }
    };
    let mut config = LoadConfig::default()
        .gpu_layers(gpu_layers)
        .split_mode(split_mode)
        .main_gpu(args.main_gpu)
        .rpc(args.rpc.clone())
        .devices(args.devices.clone());
    if args.no_repack {
        config = config.cpu_repack(false);
    }
    if args.no_mmap {
        config.use_mmap = Some(false);
    }
    let bar = crate::progress_bar(100, "loading {msg} [{bar:30}] {percent:>3}%", !args.no_progress);
    if let Some(bar) = &bar {
        bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    if let Some(bar) = bar.clone() {
        config = config.with_progress(move |p: f32| {
            bar.set_position((p * 100.0) as u64);
            true
        });
    }
    let model = Model::load(&path, &config);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let model = model?;
    tracing::info!("loaded {} ({})", path.display(), model.description());
    Ok((model, fitted_ctx))
}

/// `-hf ORG/REPO[:QUANT]`: the repository's GGUF file in the model folder, downloaded first
/// when it is not there yet.
fn pull_repo(repo: &str, progress: bool) -> AnyResult<PathBuf> {
    let source = format!("hf:{}", repo.trim_start_matches("hf:"));
    let opts = rocm_llama::pull::PullOptions::new(inventory::model_dir());
    let files = pull_with_progress(&source, opts, progress)?;
    files.into_iter().next().ok_or_else(|| UserError::boxed(format!("-hf {repo}: nothing was downloaded")))
}

/// Downloads `source` with a progress bar on stderr (when `progress` and stderr is a terminal).
pub fn pull_with_progress(
    source: &str,
    mut opts: rocm_llama::pull::PullOptions,
    progress: bool,
) -> rocm_llama::Result<Vec<PathBuf>> {
    let bar = crate::progress_bar(0, "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}", progress);
    if let Some(b) = bar.clone() {
        opts = opts.progress(std::sync::Arc::new(move |p: &rocm_llama::pull::Progress| {
            if let Some(t) = p.total {
                b.set_length(t);
            }
            b.set_message(p.file.clone());
            b.set_position(p.done);
        }) as std::sync::Arc<rocm_llama::pull::DownloadProgressFn>);
    }
    let files = rocm_llama::pull::pull(source, &opts);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    files
}

pub fn context_config(model: &Model, fitted_ctx: Option<u32>, m: &ModelArgs, c: &ContextArgs) -> ContextConfig {
    let n_ctx = c.ctx_size.or(fitted_ctx).unwrap_or_else(|| model.n_ctx_train().clamp(256, c.max_ctx.max(256)));
    let mut cfg = ContextConfig::default()
        .n_ctx(n_ctx)
        .n_batch(c.batch_size)
        .n_ubatch(c.ubatch_size.min(c.batch_size))
        .flash_attention(c.flash_attn.into())
        .type_k(c.cache_type_k.into())
        .type_v(c.cache_type_v.into());
    if let Some(t) = m.threads {
        cfg = cfg.threads(t);
    }
    cfg
}

pub fn generate_options(s: &SamplingArgs) -> AnyResult<GenerateOptions> {
    if s.mirostat != 0 {
        return Err(UserError::boxed(format!(
            "--mirostat {}: mirostat sampling is not supported; use --temp, --top-k, --top-p, --min-p or --typical",
            s.mirostat
        )));
    }
    if s.samplers.is_some() {
        eprintln!(
            "note: --samplers has no effect: the order here is penalties, DRY, top-k, typical, top-p, min-p, \
             temperature (grammar first when given)"
        );
    }
    let grammar = match (&s.grammar_file, &s.grammar) {
        (Some(p), _) => {
            Some(std::fs::read_to_string(p).map_err(|e| UserError::boxed(format!("{}: {e}", p.display())))?)
        }
        (None, Some(g)) => Some(g.clone()),
        (None, None) => None,
    };
    let seed = s.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (t.as_nanos() as u32) ^ std::process::id()
    });
    let mut sampling = SamplingParams::default()
        .temperature(s.temp)
        .top_k(s.top_k)
        .top_p(s.top_p)
        .min_p(s.min_p)
        .repeat_penalty(s.repeat_penalty)
        .presence_penalty(s.presence_penalty)
        .frequency_penalty(s.frequency_penalty)
        .penalty_last_n(s.repeat_last_n)
        .typical_p(s.typical)
        .dry_multiplier(s.dry_multiplier)
        .dry_base(s.dry_base)
        .dry_allowed_length(s.dry_allowed_length)
        .dry_penalty_last_n(s.dry_penalty_last_n)
        .ignore_eos(s.ignore_eos)
        .seed(seed);
    if let Some(g) = grammar {
        sampling = sampling.grammar(g);
    }
    let max_tokens = if s.predict < 0 { usize::MAX } else { s.predict as usize };
    let json_schema = match &s.json_schema {
        None => None,
        Some(arg) => {
            let path = std::path::Path::new(arg);
            let text = if path.is_file() {
                std::fs::read_to_string(path).map_err(|e| UserError::boxed(format!("--json-schema {arg}: {e}")))?
            } else {
                arg.clone()
            };
            let schema: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| UserError::boxed(format!("--json-schema: neither a file nor JSON ({e})")))?;
            // Checked here, so a schema the converter cannot handle is a usage error at once.
            rocm_llama::schema::to_grammar(&schema).map_err(|e| UserError::boxed(format!("--json-schema: {e}")))?;
            Some(schema)
        }
    };
    Ok(GenerateOptions::default()
        .max_tokens(max_tokens)
        .stops(s.stop.iter().chain(&s.reverse_prompt).cloned())
        .sampling(sampling)
        .json_schema(json_schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(args: &[&str]) -> Vec<String> {
        rewrite_llama_flags(args.iter().map(Into::into)).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn llama_cpp_flags_become_long_flags() {
        assert_eq!(rw(&["run", "hi", "-ngl", "99"]), ["run", "hi", "--n-gpu-layers", "99"]);
        assert_eq!(
            rw(&["-fa", "on", "-ctk=q8_0", "-ub", "256"]),
            ["--flash-attn", "on", "--cache-type-k=q8_0", "--ubatch-size", "256"]
        );
        // Single-letter flags and anything after `--` stay as they are.
        assert_eq!(rw(&["-n", "5", "-c", "64", "--", "-ngl"]), ["-n", "5", "-c", "64", "--", "-ngl"]);
        assert_eq!(rw(&["-fast"]), ["-fast"]);
        // llama-cli's flags only for run and chat: elsewhere -r is llama-bench's repetitions.
        assert_eq!(
            rw(&["rocm-llama", "-v", "chat", "-sys", "x", "-r", "y", "-e", "-no-cnv"]),
            ["rocm-llama", "-v", "chat", "--system", "x", "--reverse-prompt", "y", "--escape", "--no-cnv"]
        );
        assert_eq!(
            rw(&["rocm-llama", "bench", "-r", "2", "-hf", "a/b"]),
            ["rocm-llama", "bench", "-r", "2", "--hf-repo", "a/b"]
        );
    }

    #[test]
    fn gpu_layers_take_numbers_all_and_auto() {
        assert_eq!(parse_ngl("99"), Ok(NglArg::Fixed(GpuLayers::Count(99))));
        assert_eq!(parse_ngl("all"), Ok(NglArg::Fixed(GpuLayers::All)));
        assert_eq!(parse_ngl("-1"), Ok(NglArg::Fixed(GpuLayers::All)));
        assert_eq!(parse_ngl("auto"), Ok(NglArg::Auto));
        assert!(parse_ngl("gl").is_err());
    }
}
