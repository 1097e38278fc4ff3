//! Choosing GPU layers and context length so that a model fits: [`LoadConfig::fit`].
//!
//! The estimate comes from the GGUF file alone (read by [`crate::gguf`], before anything is
//! loaded):
//!
//! - weights: the bytes of each `blk.N.*` tensor, per layer; `token_embd` stays on the host;
//!   the output matrix (or the tied embedding llama.cpp duplicates for it) goes to the GPU
//!   with full offload. llama.cpp offloads the *last* `gpu_layers` layers.
//! - KV cache per token: n_layer × (head_dim_k + head_dim_v) × n_head_kv × bytes per
//!   element of the cache type (2 for F16), on the GPU for offloaded layers.
//! - compute buffers: 4 bytes × n_ubatch × (n_vocab + 4·n_embd + 2·n_ff), plus without flash
//!   attention the attention scores, 4 × n_ubatch × n_head × n_ctx; plus the output logits,
//!   4 × n_vocab per sequence. Measured on gemma-3-270m (n_ubatch 512, n_ctx 1024) this
//!   predicts 526 MiB against llama.cpp's 522.5 MiB.
//!
//! When the caller does not fix the context, full offload with a smaller context is
//! preferred over partial offload.

use std::path::Path;

use crate::accounting::gib;
use crate::context::KvType;
use crate::error::{Error, Result};
use crate::gguf::{ggml_type_block, GgufFile, Value};
use crate::model::{GpuLayers, LoadConfig, SplitMode};

/// The parts of a model's shape the estimate needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelShape {
    /// `general.architecture`.
    pub architecture: String,
    /// Repeating layers.
    pub n_layer: u32,
    /// Embedding size.
    pub n_embd: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads of each layer.
    pub n_head_kv: Vec<u64>,
    /// Key head size.
    pub head_dim_k: u64,
    /// Value head size.
    pub head_dim_v: u64,
    /// Feed-forward size.
    pub n_ff: u64,
    /// Vocabulary size.
    pub n_vocab: u64,
    /// Trained context length (4096 when the file does not say).
    pub n_ctx_train: u32,
    /// Weight bytes of each layer.
    pub layer_bytes: Vec<u64>,
    /// `token_embd` bytes (kept on the host).
    pub token_embd_bytes: u64,
    /// The output matrix's bytes (the embedding's when tied).
    pub output_bytes: u64,
    /// The output matrix is the token embedding (no `output.weight`): llama.cpp then reads
    /// the embedding on the host and, when the output layer is offloaded, puts a second copy
    /// on the GPU.
    pub tied_output: bool,
    /// Every other non-layer tensor (norms).
    pub other_bytes: u64,
}

impl ModelShape {
    /// Reads the shape from a GGUF header.
    pub fn from_gguf(f: &GgufFile) -> Result<ModelShape> {
        let arch = f.architecture().ok_or_else(|| Error::InvalidModel("general.architecture".into()))?.to_string();
        let need = |k: &str| f.arch_u64(k).ok_or_else(|| Error::InvalidModel(format!("{arch}.{k}")));
        let n_layer = need("block_count")?;
        // Per-layer vectors are sized by this number: bound it before allocating (llama.cpp
        // itself takes 1..=512).
        if n_layer == 0 || n_layer > crate::model::MAX_LAYERS {
            return Err(Error::InvalidModel(format!(
                "a valid layer count: GGUF's {arch}.block_count is {n_layer}; llama.cpp takes 1..={} layers",
                crate::model::MAX_LAYERS
            )));
        }
        let n_layer = n_layer as u32;
        let n_embd = need("embedding_length")?;
        let n_head = match f.get(&format!("{arch}.attention.head_count")) {
            Some(Value::Array { values: Some(v), .. }) => v.iter().filter_map(Value::as_u64).max().unwrap_or(1),
            Some(v) => v.as_u64().unwrap_or(1),
            None => return Err(Error::InvalidModel(format!("{arch}.attention.head_count"))),
        }
        .max(1);
        let n_head_kv = match f.get(&format!("{arch}.attention.head_count_kv")) {
            Some(Value::Array { values: Some(v), .. }) => v.iter().map(|x| x.as_u64().unwrap_or(0)).collect(),
            Some(v) => vec![v.as_u64().unwrap_or(n_head); n_layer as usize],
            None => vec![n_head; n_layer as usize],
        };
        let head_dim_k = f.arch_u64("attention.key_length").unwrap_or(n_embd / n_head);
        let head_dim_v = f.arch_u64("attention.value_length").unwrap_or(n_embd / n_head);
        let n_ff = match f.get(&format!("{arch}.feed_forward_length")) {
            Some(Value::Array { values: Some(v), .. }) => v.iter().filter_map(Value::as_u64).max().unwrap_or(0),
            Some(v) => v.as_u64().unwrap_or(0),
            None => 4 * n_embd,
        };
        let n_vocab = match f.get("tokenizer.ggml.tokens") {
            Some(Value::Array { len, .. }) => *len,
            _ => f.arch_u64("vocab_size").unwrap_or(32_000),
        };
        let n_ctx_train = f.arch_u64("context_length").unwrap_or(4096).min(u32::MAX as u64) as u32;
        let mut layer_bytes = vec![0u64; n_layer as usize];
        let (mut token_embd_bytes, mut output_bytes, mut other_bytes) = (0, 0, 0);
        for t in &f.tensors {
            let bytes = t.n_bytes().unwrap_or(0);
            match t.layer() {
                Some(l) if (l as usize) < layer_bytes.len() => layer_bytes[l as usize] += bytes,
                Some(_) => other_bytes += bytes,
                None if t.name == "token_embd.weight" => token_embd_bytes += bytes,
                None if t.name == "output.weight" => output_bytes += bytes,
                None => other_bytes += bytes,
            }
        }
        let tied_output = output_bytes == 0;
        if tied_output {
            output_bytes = token_embd_bytes;
        }
        Ok(ModelShape {
            architecture: arch,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ff,
            n_vocab,
            n_ctx_train,
            layer_bytes,
            token_embd_bytes,
            output_bytes,
            tied_output,
            other_bytes,
        })
    }

    /// KV cache bytes per token of one sequence, for all layers.
    pub fn kv_bytes_per_token(&self, type_k: KvType, type_v: KvType) -> u64 {
        let per = |t: KvType, dim: u64| {
            let (block, size) = ggml_type_block(t.ggml()).unwrap_or((1, 2));
            dim * size / block
        };
        self.n_head_kv.iter().map(|h| h * (per(type_k, self.head_dim_k) + per(type_v, self.head_dim_v))).sum()
    }
}

/// Settings for [`LoadConfig::fit`].
///
/// ```
/// use rocm_llama::{FitOptions, KvType};
///
/// let options = FitOptions::default().max_ctx(16_384).n_seq(4).type_k(KvType::Q8_0).single_gpu(0);
/// assert_eq!(options.single_gpu, Some(0));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct FitOptions {
    /// Memory to leave free (default 512 MiB).
    pub margin_bytes: u64,
    /// A context length the caller insists on; `None` lets fit choose.
    pub n_ctx: Option<u32>,
    /// The largest context fit will choose (default 32768; also capped by the trained length).
    pub max_ctx: u32,
    /// The smallest context worth running (default 512).
    pub min_ctx: u32,
    /// Sequences decoded together (default 1).
    pub n_seq: u32,
    /// Physical batch size (default 512).
    pub n_ubatch: u32,
    /// K cache type.
    pub type_k: KvType,
    /// V cache type.
    pub type_v: KvType,
    /// Whether flash attention will be on (no attention-score buffer).
    pub flash_attention: bool,
    /// `Some(i)`: the model goes on GPU `i` alone (of the GPUs llama.cpp uses, in its order);
    /// `None` (default): its layers are spread over every GPU, as llama.cpp's default layer
    /// split does, in shares of their free memory.
    pub single_gpu: Option<u32>,
    /// RPC servers whose devices take part ([`LoadConfig::rpc`]): planned before the local
    /// GPUs, as llama.cpp orders them, with the free memory each server reports.
    pub rpc: Vec<String>,
    /// The local GPUs to plan for, by name ([`LoadConfig::devices`]); empty: those llama.cpp
    /// would use.
    pub devices: Vec<String>,
}

crate::config::setters!(FitOptions {
    margin_bytes: u64,
    max_ctx: u32,
    min_ctx: u32,
    n_seq: u32,
    n_ubatch: u32,
    type_k: KvType,
    type_v: KvType,
    flash_attention: bool,
    rpc: Vec<String>,
    devices: Vec<String>,
} optional {
    n_ctx: u32,
    single_gpu: u32,
});

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            margin_bytes: 512 << 20,
            n_ctx: None,
            max_ctx: 32_768,
            min_ctx: 512,
            n_seq: 1,
            n_ubatch: 512,
            type_k: KvType::F16,
            type_v: KvType::F16,
            flash_attention: false,
            single_gpu: None,
            rpc: Vec::new(),
            devices: Vec::new(),
        }
    }
}

/// Predicted memory for one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    /// Weights on the GPU.
    pub weights_device: u64,
    /// Weights in host memory.
    pub weights_host: u64,
    /// KV cache on the GPU.
    pub kv_device: u64,
    /// KV cache in host memory.
    pub kv_host: u64,
    /// Compute and output buffers.
    pub compute: u64,
}

impl Estimate {
    /// Bytes on the GPU (compute buffers count there when anything is offloaded).
    pub fn device(&self) -> u64 {
        self.weights_device + self.kv_device + if self.weights_device > 0 { self.compute } else { 0 }
    }
    /// Everything.
    pub fn total(&self) -> u64 {
        self.weights_device + self.weights_host + self.kv_device + self.kv_host + self.compute
    }
}

/// Predicts memory use for `gpu_layers` offloaded layers and a context of `n_ctx`.
pub fn estimate(shape: &ModelShape, gpu_layers: u32, n_ctx: u32, opts: &FitOptions) -> Estimate {
    let l = gpu_layers.min(shape.n_layer) as usize;
    let n = shape.n_layer as usize;
    let offloaded: u64 = shape.layer_bytes[n - l..].iter().sum();
    let full = l == n && n > 0;
    let on_host: u64 = shape.layer_bytes[..n - l].iter().sum::<u64>() + shape.token_embd_bytes + shape.other_bytes;
    // The output matrix goes to the GPU with the last layer. Left on the host, a separate one
    // is host memory, and a tied one is the embedding already counted there.
    let weights_device = offloaded + if full { shape.output_bytes } else { 0 };
    let weights_host = on_host + if !full && !shape.tied_output { shape.output_bytes } else { 0 };
    let kv_per_tok_layer = |range: &[u64]| -> u64 {
        let per = |t: KvType, dim: u64| {
            let (block, size) = ggml_type_block(t.ggml()).unwrap_or((1, 2));
            dim * size / block
        };
        range.iter().map(|h| h * (per(opts.type_k, shape.head_dim_k) + per(opts.type_v, shape.head_dim_v))).sum()
    };
    let ctx = n_ctx as u64;
    let kv_device = kv_per_tok_layer(&shape.n_head_kv[n - l..]) * ctx;
    let kv_host = kv_per_tok_layer(&shape.n_head_kv[..n - l]) * ctx;
    Estimate { weights_device, weights_host, kv_device, kv_host, compute: compute_bytes(shape, n_ctx, opts) }
}

fn compute_bytes(shape: &ModelShape, n_ctx: u32, opts: &FitOptions) -> u64 {
    let ub = opts.n_ubatch as u64;
    let graph = 4 * ub * (shape.n_vocab + 4 * shape.n_embd + 2 * shape.n_ff);
    let scores = if opts.flash_attention { 0 } else { 4 * ub * shape.n_head * n_ctx as u64 };
    let output = 4 * shape.n_vocab * opts.n_seq.max(1) as u64;
    graph + scores + output
}

/// What [`LoadConfig::fit`] chose.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FitPlan {
    /// Layers to offload (`n_layer` = all).
    pub gpu_layers: u32,
    /// Layers in the model.
    pub n_layer: u32,
    /// Context length.
    pub n_ctx: u32,
    /// The predicted memory.
    pub estimate: Estimate,
    /// Free memory the plan was made against (before the margin).
    pub free_bytes: u64,
    /// The device it was made for (`CPU` for host memory).
    pub device: String,
}

/// The largest context (a multiple of 256 unless it is `lo`) in `lo..=hi` for which
/// `cost(ctx) <= budget`, by bisection (cost grows with the context).
fn largest_ctx(lo: u32, hi: u32, budget: u64, cost: impl Fn(u32) -> u64) -> Option<u32> {
    largest_ctx_where(lo, hi, |c| cost(c) <= budget)
}

/// The same for any condition that holds up to some context and not beyond.
fn largest_ctx_where(lo: u32, hi: u32, fits: impl Fn(u32) -> bool) -> Option<u32> {
    if lo > hi || !fits(lo) {
        return None;
    }
    if fits(hi) {
        return Some(hi);
    }
    let (mut ok, mut bad) = (lo, hi);
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if fits(mid) {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    Some(if ok >= lo + 256 { ok / 256 * 256 } else { ok }.max(lo))
}

/// Chooses layers and context for `free` bytes on one GPU (`on_gpu`) or in host memory.
pub fn plan(shape: &ModelShape, free: u64, on_gpu: bool, device: &str, opts: &FitOptions) -> Result<FitPlan> {
    if on_gpu {
        return plan_gpus(shape, &[(device.to_string(), free)], opts);
    }
    let budget = free.saturating_sub(opts.margin_bytes);
    let max_ctx = opts.max_ctx.min(shape.n_ctx_train).max(opts.min_ctx);
    let done = |n_ctx: u32| FitPlan {
        gpu_layers: 0,
        n_layer: shape.n_layer,
        n_ctx,
        estimate: estimate(shape, 0, n_ctx, opts),
        free_bytes: free,
        device: device.to_string(),
    };
    let fail = |what: String| Err(does_not_fit(shape, &what, free, device, false, opts));
    let cost = |c: u32| estimate(shape, 0, c, opts).total();
    match opts.n_ctx {
        Some(c) if cost(c) <= budget => Ok(done(c)),
        Some(c) => fail(format!("a context of {c} tokens ({} needed) does not fit host memory", gib(cost(c)))),
        None => match largest_ctx(opts.min_ctx, max_ctx, budget, cost) {
            Some(c) => Ok(done(c)),
            None => fail(format!("not even {} tokens of context fit host memory", opts.min_ctx)),
        },
    }
}

fn does_not_fit(shape: &ModelShape, what: &str, free: u64, device: &str, per_gpu: bool, opts: &FitOptions) -> Error {
    let n = shape.n_layer;
    let weights =
        estimate(shape, n, opts.min_ctx, opts).weights_device + estimate(shape, 0, opts.min_ctx, opts).weights_host;
    Error::DoesNotFit(format!(
        "{what}: {} free on {device}, {} kept as margin{} (weights alone are {})",
        gib(free),
        gib(opts.margin_bytes),
        if per_gpu { " on each" } else { "" },
        gib(weights)
    ))
}

/// Whether `gpu_layers` and an `n_ctx` context fit `gpus` (name, free bytes) under a layer
/// split: each GPU holds a share of the offloaded layers and their KV cache in proportion to
/// its free memory (llama.cpp's default split) and compute buffers as large as one GPU alone
/// would need (an upper bound: measured on two H200s on 2026-11-27, the second GPU's buffers
/// were 20% to 100% of the first's), and the last one the output matrix. Each keeps the margin free.
fn split_fits(shape: &ModelShape, gpus: &[(String, u64)], gpu_layers: u32, n_ctx: u32, opts: &FitOptions) -> bool {
    let e = estimate(shape, gpu_layers, n_ctx, opts);
    let output = if gpu_layers >= shape.n_layer { shape.output_bytes } else { 0 };
    let layered = (e.weights_device - output + e.kv_device) as u128;
    let all_free: u128 = gpus.iter().map(|(_, f)| *f as u128).sum::<u128>().max(1);
    gpus.iter().enumerate().all(|(i, (_, free))| {
        let share = (layered * *free as u128).div_ceil(all_free) as u64;
        let last = if i + 1 == gpus.len() { output } else { 0 };
        share + e.compute + last <= free.saturating_sub(opts.margin_bytes)
    })
}

/// Chooses layers and context for a model split over `gpus` (name, free bytes; one or more):
/// all layers with the largest context that fits, else as many layers as fit with the
/// smallest context. The plan's device is the GPUs' names joined by `+`, its free bytes their
/// sum, and its estimate counts the compute buffers of every GPU.
pub fn plan_gpus(shape: &ModelShape, gpus: &[(String, u64)], opts: &FitOptions) -> Result<FitPlan> {
    if gpus.is_empty() {
        return Err(Error::DoesNotFit("no GPU to plan for".into()));
    }
    let n_layer = shape.n_layer;
    let device = gpus.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join("+");
    let free: u64 = gpus.iter().map(|(_, f)| *f).sum();
    let max_ctx = opts.max_ctx.min(shape.n_ctx_train).max(opts.min_ctx);
    let done = |gpu_layers: u32, n_ctx: u32| {
        let mut estimate = estimate(shape, gpu_layers, n_ctx, opts);
        estimate.compute *= gpus.len() as u64;
        FitPlan { gpu_layers, n_layer, n_ctx, estimate, free_bytes: free, device: device.clone() }
    };
    let fail = |what: String| Err(does_not_fit(shape, &what, free, &device, gpus.len() > 1, opts));
    let fits = |l: u32, c: u32| split_fits(shape, gpus, l, c, opts);
    let most_layers = |c: u32| (1..=n_layer).rev().find(|&l| fits(l, c));
    match opts.n_ctx {
        Some(c) => match most_layers(c) {
            Some(l) => Ok(done(l, c)),
            None => fail(format!("not one layer with a context of {c} tokens fits")),
        },
        None => {
            // Full offload with a smaller context beats partial offload.
            if let Some(c) = largest_ctx_where(opts.min_ctx, max_ctx, |c| fits(n_layer, c)) {
                return Ok(done(n_layer, c));
            }
            match most_layers(opts.min_ctx) {
                Some(l) => Ok(done(l, opts.min_ctx)),
                None => fail(format!("not one layer with the minimal context of {} tokens fits", opts.min_ctx)),
            }
        }
    }
}

impl LoadConfig {
    /// Picks `gpu_layers` (and, in the returned plan, the context length) so that weights,
    /// KV cache and compute buffers fit the free memory of the GPUs llama.cpp would use (all
    /// of them under its default layer split, or the one named by [`FitOptions::single_gpu`]),
    /// or host memory in a CPU build, minus the margin (on each GPU). Errors with
    /// [`Error::DoesNotFit`] when not even one layer with the minimal context fits.
    ///
    /// ```
    /// # fn main() -> rocm_llama::Result<()> {
    /// use rocm_llama::{FitOptions, LoadConfig, Model};
    ///
    /// let path = rocm_llama::synth::tiny_model()?;
    /// let (config, plan) = LoadConfig::fit(&path, &FitOptions::default().max_ctx(4096))?;
    /// println!("{} of {} layers on {}, context {}", plan.gpu_layers, plan.n_layer, plan.device, plan.n_ctx);
    /// let model = Model::load(&path, &config)?;
    /// # let _ = model;
    /// # Ok(())
    /// # }
    /// ```
    pub fn fit(path: impl AsRef<Path>, opts: &FitOptions) -> Result<(LoadConfig, FitPlan)> {
        let file = GgufFile::open(path)?;
        let shape = ModelShape::from_gguf(&file)?;
        let report = crate::devices::devices();
        let mut gpus = if opts.devices.is_empty() { report.split_gpus() } else { report.named_gpus(&opts.devices)? };
        if !opts.rpc.is_empty() {
            let remote = crate::rpc::devices(&opts.rpc, crate::rpc::DEFAULT_TIMEOUT)?;
            let named = remote.into_iter().map(|d| (format!("{} ({})", d.name, d.remote.unwrap_or_default()), d.free));
            gpus = named.chain(gpus).collect();
        }
        if let Some(i) = opts.single_gpu.filter(|_| !gpus.is_empty()) {
            let n = gpus.len();
            let one = gpus.get(i as usize).cloned().ok_or_else(|| {
                let plural = if n == 1 { "" } else { "s" };
                Error::invalid("main_gpu", format!("main_gpu {i} does not exist: this process has {n} GPU{plural}"))
            })?;
            gpus = vec![one];
        }
        let plan = if gpus.is_empty() {
            let (free, _total, device) =
                report.primary_memory().ok_or_else(|| Error::DoesNotFit("no device memory could be read".into()))?;
            plan(&shape, free, false, &device, opts)?
        } else {
            plan_gpus(&shape, &gpus, opts)?
        };
        let gpu_layers = if gpus.is_empty() || plan.gpu_layers >= shape.n_layer {
            GpuLayers::All
        } else {
            GpuLayers::Count(plan.gpu_layers)
        };
        // One GPU: keep llama.cpp from spreading the layers anyway.
        let (split_mode, main_gpu) = match opts.single_gpu {
            Some(i) => (SplitMode::None, i),
            None => (SplitMode::default(), 0),
        };
        let config = LoadConfig::default().gpu_layers(gpu_layers).split_mode(split_mode).main_gpu(main_gpu);
        Ok((config.rpc(opts.rpc.clone()).devices(opts.devices.clone()), plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A llama-3-8B-like shape: 32 layers of ~130 MiB, 4096 embedding, 8 KV heads of 128.
    fn llama8b() -> ModelShape {
        ModelShape {
            architecture: "llama".into(),
            n_layer: 32,
            n_embd: 4096,
            n_head: 32,
            n_head_kv: vec![8; 32],
            head_dim_k: 128,
            head_dim_v: 128,
            n_ff: 14336,
            n_vocab: 128_256,
            n_ctx_train: 131_072,
            layer_bytes: vec![130 << 20; 32],
            token_embd_bytes: 280 << 20,
            output_bytes: 400 << 20,
            tied_output: false,
            other_bytes: 1 << 20,
        }
    }

    const GIB: u64 = 1 << 30;

    /// A server's slots are one KV cache of `parallel x ctx` cells: planned as such on a 16 GiB
    /// card, 32 slots of 4,096 tokens leave room for fewer layers than one context of 4,096
    /// (what `serve` once planned for, before allocating every slot's cache), and 64 slots do
    /// not fit at all: an error before anything is allocated.
    #[test]
    fn a_server_plans_for_all_its_slots() {
        let card = [("small GPU".to_string(), 16 * GIB)];
        let single = plan_gpus(&llama8b(), &card, &FitOptions::default().n_ctx(4096)).unwrap();
        assert_eq!(single.gpu_layers, 32);
        let served = plan_gpus(&llama8b(), &card, &FitOptions::default().n_ctx(32 * 4096).n_seq(32)).unwrap();
        assert!(served.gpu_layers > 0 && served.gpu_layers < 32, "{served:?}");
        assert!(served.estimate.kv_device + served.estimate.weights_device <= 16 * GIB, "{served:?}");
        let too_many = plan_gpus(&llama8b(), &card, &FitOptions::default().n_ctx(64 * 4096).n_seq(64));
        assert!(matches!(too_many, Err(Error::DoesNotFit(_))), "{too_many:?}");
    }

    #[test]
    fn kv_bytes_per_token_formula() {
        let s = llama8b();
        // 32 layers × (128 + 128) × 8 heads × 2 bytes = 128 KiB per token.
        assert_eq!(s.kv_bytes_per_token(KvType::F16, KvType::F16), 131_072);
        assert_eq!(s.kv_bytes_per_token(KvType::Q8_0, KvType::Q8_0), 32 * 2 * 8 * 128 * 34 / 32);
    }

    #[test]
    fn full_offload_with_a_smaller_context_beats_partial_offload() {
        let s = llama8b();
        let opts = FitOptions::default();
        // 16 GiB card: everything fits with the largest context allowed.
        let p = plan(&s, 16 * GIB, true, "ROCm0", &opts).unwrap();
        assert_eq!((p.gpu_layers, p.n_ctx), (32, 32_768));
        // 8 GiB: still all layers, with a smaller context.
        let p = plan(&s, 8 * GIB, true, "ROCm0", &opts).unwrap();
        assert_eq!(p.gpu_layers, 32);
        assert!(p.n_ctx < 32_768 && p.n_ctx >= 512 && p.n_ctx % 256 == 0, "{p:?}");
        assert!(p.estimate.device() <= 8 * GIB - opts.margin_bytes);
        // 3 GiB: not all layers even at the minimal context, so partial offload at 512.
        let p = plan(&s, 3 * GIB, true, "ROCm0", &opts).unwrap();
        assert!(p.gpu_layers > 0 && p.gpu_layers < 32, "{p:?}");
        assert_eq!(p.n_ctx, 512);
        assert!(p.estimate.device() <= 3 * GIB - opts.margin_bytes);
        // A fixed context is respected: fewer layers instead.
        let fixed = FitOptions::default().n_ctx(Some(32_768));
        let p = plan(&s, 8 * GIB, true, "ROCm0", &fixed).unwrap();
        assert!(p.gpu_layers < 32 && p.n_ctx == 32_768, "{p:?}");
    }

    fn gpus(frees: &[u64]) -> Vec<(String, u64)> {
        frees.iter().enumerate().map(|(i, f)| (format!("ROCm{i}"), *f)).collect()
    }

    #[test]
    fn a_layer_split_pools_the_gpus() {
        let s = llama8b();
        let opts = FitOptions::default();
        // One 4 GiB card holds part of the model; two hold all of it.
        let one = plan_gpus(&s, &gpus(&[4 * GIB]), &opts).unwrap();
        assert!(one.gpu_layers < 32, "{one:?}");
        let two = plan_gpus(&s, &gpus(&[4 * GIB, 4 * GIB]), &opts).unwrap();
        assert_eq!(two.gpu_layers, 32, "{two:?}");
        assert_eq!((two.device.as_str(), two.free_bytes), ("ROCm0+ROCm1", 8 * GIB));
        // Every card keeps its margin: the pooled plan uses at most the sum less two margins.
        assert!(two.estimate.device() <= 8 * GIB - 2 * opts.margin_bytes, "{two:?}");
        // Two 24 GiB cards take a longer context than one.
        let big = |n: &[u64]| plan_gpus(&s, &gpus(n), &FitOptions::default().max_ctx(131_072)).unwrap();
        assert!(big(&[24 * GIB, 24 * GIB]).n_ctx > big(&[24 * GIB]).n_ctx);
        // One GPU through plan_gpus is exactly plan.
        for f in [3 * GIB, 8 * GIB, 16 * GIB] {
            assert_eq!(plan_gpus(&s, &gpus(&[f]), &opts).unwrap(), plan(&s, f, true, "ROCm0", &opts).unwrap());
        }
    }

    #[test]
    fn the_last_gpu_of_a_split_carries_the_output_layer() {
        let s = llama8b();
        let opts = FitOptions::default();
        let layers: u64 = 32 * (130 << 20);
        let kv = s.kv_bytes_per_token(KvType::F16, KvType::F16) * 512;
        let compute = compute_bytes(&s, 512, &opts);
        // Two cards with room for half the layers and their buffers each, and a little more.
        let card = (layers + kv) / 2 + compute + opts.margin_bytes + (64 << 20);
        let at_512 = opts.n_ctx(Some(512));
        let full = |s: &ModelShape, cards: &[u64]| plan_gpus(s, &gpus(cards), &at_512).unwrap().gpu_layers == 32;
        // Without an output matrix everything offloads; with one, not: it does not fit the
        // last card, and it is not spread (room for half of it on each card is not enough).
        assert!(full(&ModelShape { output_bytes: 0, ..llama8b() }, &[card, card]));
        assert!(!full(&s, &[card, card]));
        let half_more = card + s.output_bytes / 2;
        assert!(!full(&s, &[half_more, half_more]));
        assert!(full(&s, &[card, card + 2 * s.output_bytes]));
    }

    #[test]
    fn the_output_matrix_is_counted_where_it_lives() {
        let opts = FitOptions::default();
        let (layer, embd, out, other) = (130u64 << 20, 280u64 << 20, 400u64 << 20, 1u64 << 20);
        let w = |s: &ModelShape, gpu_layers| {
            let e = estimate(s, gpu_layers, 512, &opts);
            (e.weights_host, e.weights_device)
        };
        // A separate output matrix: on the host until the last layer goes to the GPU with it.
        let s = llama8b();
        assert_eq!(w(&s, 0), (32 * layer + embd + out + other, 0));
        assert_eq!(w(&s, 16), (16 * layer + embd + out + other, 16 * layer));
        assert_eq!(w(&s, 32), (embd + other, 32 * layer + out));
        // Tied: the host copy is the embedding; full offload adds a GPU copy.
        let t = ModelShape { output_bytes: embd, tied_output: true, ..llama8b() };
        assert_eq!(w(&t, 0), (32 * layer + embd + other, 0));
        assert_eq!(w(&t, 16), (16 * layer + embd + other, 16 * layer));
        assert_eq!(w(&t, 32), (embd + other, 32 * layer + embd));
    }

    #[test]
    fn nothing_fits_is_a_clear_error() {
        let s = llama8b();
        let err = plan(&s, 600 << 20, true, "ROCm0", &FitOptions::default()).unwrap_err();
        assert!(matches!(&err, Error::DoesNotFit(m) if m.contains("not one layer") && m.contains("ROCm0")), "{err}");
        let err = plan(&s, GIB, false, "CPU", &FitOptions::default()).unwrap_err();
        assert!(matches!(err, Error::DoesNotFit(_)));
    }

    #[test]
    fn host_memory_plans_context_only() {
        let s = llama8b();
        let p = plan(&s, 24 * GIB, false, "CPU", &FitOptions::default()).unwrap();
        assert_eq!((p.gpu_layers, p.n_ctx), (0, 32_768));
        assert_eq!(p.estimate.weights_device, 0);
    }

    #[test]
    fn largest_ctx_bisects() {
        assert_eq!(largest_ctx(512, 32768, 10_000, |c| c as u64), Some(9984));
        assert_eq!(largest_ctx(512, 32768, 100, |c| c as u64), None);
        assert_eq!(largest_ctx(512, 4096, u64::MAX, |c| c as u64), Some(4096));
        assert_eq!(largest_ctx(512, 4096, 600, |c| c as u64), Some(600));
    }
}
