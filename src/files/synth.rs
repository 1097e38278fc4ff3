//! Synthetic models: GGUF files with a real architecture's hyper-parameters and tensor
//! shapes, random weights and a vocabulary of the real size, quantized by llama.cpp.
//!
//! Speed depends on shapes and types, not on the weights' values, so a synthetic
//! `llama3-8b` Q4_K_M measures what a user of the real model would see, without a 5 GB
//! download. The `tiny` shapes (a few MB) are test models that are always available.

use std::io::Write;
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;

use crate::error::{c_string, Error, Result};
use crate::gguf::{GgufFile, ReadOptions, Value, ValueType, Writer};

/// An architecture's hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Shape {
    /// Name used on the command line.
    pub name: &'static str,
    /// `general.architecture`.
    pub arch: &'static str,
    /// Embedding size.
    pub n_embd: u64,
    /// Layers.
    pub n_layer: u64,
    /// Attention heads.
    pub n_head: u64,
    /// KV heads.
    pub n_head_kv: u64,
    /// Head size.
    pub head_dim: u64,
    /// Feed-forward size.
    pub n_ff: u64,
    /// Vocabulary size.
    pub n_vocab: u64,
    /// Trained context length written to the metadata.
    pub n_ctx: u64,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// Output matrix shared with the token embedding.
    pub tied_embeddings: bool,
    /// Sliding-window attention span of the local layers (Gemma 3); 0 for none.
    pub sliding_window: u64,
}

const fn shape(
    name: &'static str,
    arch: &'static str,
    dims: [u64; 8],
    rope_base: f64,
    tied_embeddings: bool,
    sliding_window: u64,
) -> Shape {
    let [n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx] = dims;
    Shape {
        name,
        arch,
        n_embd,
        n_layer,
        n_head,
        n_head_kv,
        head_dim,
        n_ff,
        n_vocab,
        n_ctx,
        rope_base,
        tied_embeddings,
        sliding_window,
    }
}

/// The shapes `synth` knows: published hyper-parameters of each model family.
pub const SHAPES: &[Shape] = &[
    // [n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx], rope base, tied
    // output, sliding window
    shape("llama3-8b", "llama", [4096, 32, 32, 8, 128, 14336, 128_256, 131_072], 500_000.0, false, 0),
    shape("qwen3-8b", "qwen3", [4096, 36, 32, 8, 128, 12288, 151_936, 40_960], 1_000_000.0, false, 0),
    shape("gemma3-4b", "gemma3", [2560, 34, 8, 4, 256, 10240, 262_208, 131_072], 1_000_000.0, true, 1024),
    shape("llama2-7b", "llama", [4096, 32, 32, 32, 128, 11008, 32_000, 4096], 10_000.0, false, 0),
    // The shape of the test model (gemma-3-270m): with `--tokenizer-from` that model, a
    // stand-in for it where the real one cannot go (rows of 640 are not a multiple of 256,
    // so llama.cpp's quantizer uses its fallback types for those tensors, as it did for the
    // real file).
    shape("gemma3-270m", "gemma3", [640, 18, 4, 1, 256, 2048, 262_144, 32_768], 1_000_000.0, true, 512),
    // Small test models of each family (a few MB).
    shape("tiny", "llama", [256, 4, 4, 2, 64, 768, 4096, 4096], 10_000.0, false, 0),
    shape("tiny-qwen3", "qwen3", [256, 4, 4, 2, 64, 768, 4096, 4096], 1_000_000.0, false, 0),
    shape("tiny-gemma3", "gemma3", [256, 4, 4, 2, 64, 768, 4096, 4096], 1_000_000.0, true, 1024),
];

/// Looks a shape up by name.
pub fn find_shape(name: &str) -> Result<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        Error::invalid("shape", format!("unknown shape {name:?}; known: {}", names.join(", ")))
    })
}

/// A tokenizer taken from a GGUF file: all of its `tokenizer.*` entries (vocabulary, scores,
/// token types, merges, special tokens, chat template). A synthetic model written with it
/// tokenizes and formats chats exactly like the model it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenizer {
    entries: Vec<(String, Value)>,
    n_tokens: u64,
}

impl Tokenizer {
    /// Reads the tokenizer of a model, or of a file that [`Tokenizer::write_to`] made.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        // Vocabularies and merge lists run to a few hundred thousand entries; a longer array
        // is not kept (a tokens list that long is then an error, not gigabytes of memory).
        let opts = ReadOptions { max_array_len: 1 << 22, check_tensor_bounds: false };
        let file = GgufFile::open_with(path, opts)?;
        let entries: Vec<(String, Value)> =
            file.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
        let not = |reason: &str| Error::NotGguf { path: path.to_path_buf(), reason: reason.to_string() };
        let n_tokens = match entries.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
            Some((_, Value::Array { elem: ValueType::String, len, values: Some(_) })) if *len > 0 => *len,
            Some(_) => return Err(not("tokenizer.ggml.tokens is not a list of strings")),
            None => return Err(not("no tokenizer (tokenizer.ggml.tokens) in this file")),
        };
        Ok(Tokenizer { entries, n_tokens })
    }

    /// Number of tokens in the vocabulary.
    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }

    /// The `tokenizer.*` entries, in file order.
    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    /// Writes the tokenizer alone (no weights; a few MB) to `path`, for
    /// [`Tokenizer::from_gguf`] on another machine.
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut w = Writer::new().meta_str("general.type", "tokenizer");
        for (k, v) in &self.entries {
            w = w.meta(k, v.clone());
        }
        w.write_to(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}

/// Output weight types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SynthType {
    /// Q4_K_M (llama.cpp's usual 4-bit mix).
    Q4KM,
    /// Q4_0.
    Q4_0,
    /// Q8_0.
    Q8_0,
    /// F16 (no quantization).
    F16,
}

impl std::str::FromStr for SynthType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "q4_k_m" => SynthType::Q4KM,
            "q4_0" => SynthType::Q4_0,
            "q8_0" => SynthType::Q8_0,
            "f16" => SynthType::F16,
            o => return Err(Error::invalid("type", format!("unknown type {o:?}: q4_k_m, q4_0, q8_0 or f16"))),
        })
    }
}

impl SynthType {
    fn ftype(self) -> sys::llama_ftype {
        match self {
            SynthType::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            SynthType::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            SynthType::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            SynthType::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
        }
    }
}

/// f32 to IEEE half bits (round to nearest; tiny values flush to zero).
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    let mant = b & 0x7f_ffff;
    let half = sign | ((exp as u16) << 10) | ((mant >> 13) as u16);
    // Round to nearest on the dropped bits.
    if mant & 0x1000 != 0 {
        half + 1
    } else {
        half
    }
}

/// A generator of `n` F32 ones (norm weights: llama.cpp keeps 1-D tensors in F32).
fn f32_ones(n: u64) -> crate::gguf::Generator {
    Box::new(move |out: &mut dyn Write| {
        let one = 1.0f32.to_le_bytes();
        let row: Vec<u8> = (0..n).flat_map(|_| one).collect();
        out.write_all(&row)
    })
}

/// A generator of `n` F16 values: uniform noise of about ±0.035 (std 0.02) or all ones.
fn f16_data(n: u64, seed: u64, ones: bool) -> crate::gguf::Generator {
    Box::new(move |out: &mut dyn Write| {
        let one = f16_bits(1.0).to_le_bytes();
        let mut state = seed | 1;
        let mut buf = Vec::with_capacity(1 << 16);
        let mut left = n;
        while left > 0 {
            let k = left.min(1 << 15);
            buf.clear();
            for _ in 0..k {
                let v = if ones {
                    one
                } else {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    f16_bits((u - 0.5) * 0.07).to_le_bytes()
                };
                buf.extend_from_slice(&v);
            }
            out.write_all(&buf)?;
            left -= k;
        }
        Ok(())
    })
}

fn seed_of(name: &str, seed: u64) -> u64 {
    name.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// An SPM ("llama") vocabulary of `n_vocab` tokens: unk, bos, eos, the 256 byte tokens, then
/// fillers.
fn made_up_vocabulary(w: Writer, n_vocab: u64) -> Writer {
    let mut tokens = vec![Value::String("<unk>".into()), Value::String("<s>".into()), Value::String("</s>".into())];
    let mut types = vec![Value::Int(2), Value::Int(3), Value::Int(3)];
    for b in 0..256 {
        tokens.push(Value::String(format!("<0x{b:02X}>")));
        types.push(Value::Int(6));
    }
    let mut i = 0u64;
    while (tokens.len() as u64) < n_vocab {
        tokens.push(Value::String(format!("\u{2581}t{i}")));
        types.push(Value::Int(1));
        i += 1;
    }
    let scores: Vec<Value> = (0..n_vocab).map(|i| Value::Float(-(i as f64))).collect();
    let arr = |elem, values: Vec<Value>| Value::Array { elem, len: values.len() as u64, values: Some(values) };
    w.meta_str("tokenizer.ggml.model", "llama")
        .meta("tokenizer.ggml.tokens", arr(ValueType::String, tokens))
        .meta("tokenizer.ggml.scores", arr(ValueType::F32, scores))
        .meta("tokenizer.ggml.token_type", arr(ValueType::I32, types))
        .meta_u32("tokenizer.ggml.unknown_token_id", 0)
        .meta_u32("tokenizer.ggml.bos_token_id", 1)
        .meta_u32("tokenizer.ggml.eos_token_id", 2)
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(true))
}

/// The F16 GGUF of a shape (before quantization), with a made-up vocabulary of the shape's
/// size or, given one, a real tokenizer (whose size then sets the vocabulary's).
pub fn f16_writer(s: &Shape, seed: u64, tokenizer: Option<&Tokenizer>) -> Writer {
    let a = s.arch;
    let n_vocab = tokenizer.map_or(s.n_vocab, Tokenizer::n_tokens);
    let mut w = Writer::new()
        .meta_str("general.architecture", a)
        .meta_str("general.name", &format!("synthetic {}", s.name))
        .meta_u32("general.file_type", 1)
        .meta_u32(&format!("{a}.context_length"), s.n_ctx as u32)
        .meta_u32(&format!("{a}.embedding_length"), s.n_embd as u32)
        .meta_u32(&format!("{a}.block_count"), s.n_layer as u32)
        .meta_u32(&format!("{a}.feed_forward_length"), s.n_ff as u32)
        .meta_u32(&format!("{a}.attention.head_count"), s.n_head as u32)
        .meta_u32(&format!("{a}.attention.head_count_kv"), s.n_head_kv as u32)
        .meta_u32(&format!("{a}.attention.key_length"), s.head_dim as u32)
        .meta_u32(&format!("{a}.attention.value_length"), s.head_dim as u32)
        .meta_u32(&format!("{a}.rope.dimension_count"), s.head_dim as u32)
        .meta(&format!("{a}.rope.freq_base"), Value::Float(s.rope_base))
        .meta(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::Float(1e-6));
    w = match tokenizer {
        Some(t) => t.entries().iter().fold(w, |w, (k, v)| w.meta(k, v.clone())),
        None => made_up_vocabulary(w, n_vocab),
    };
    if s.sliding_window > 0 {
        w = w.meta_u32(&format!("{a}.attention.sliding_window"), s.sliding_window as u32);
    }
    let e = s.n_embd;
    let t = |w: Writer, name: String, dims: &[u64], ones: bool| {
        let n: u64 = dims.iter().product();
        if ones {
            return w.tensor_generated(&name, dims, 0, n * 4, f32_ones(n));
        }
        let seed = seed_of(&name, seed);
        w.tensor_generated(&name, dims, 1, n * 2, f16_data(n, seed, false))
    };
    w = t(w, "token_embd.weight".into(), &[e, n_vocab], false);
    w = t(w, "output_norm.weight".into(), &[e], true);
    if !s.tied_embeddings {
        w = t(w, "output.weight".into(), &[e, n_vocab], false);
    }
    for l in 0..s.n_layer {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        w = t(w, p("attn_norm"), &[e], true);
        for m in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            w = t(w, p(m), &layer_weight_dims(s, m).unwrap_or_default(), false);
        }
        w = t(w, p("ffn_norm"), &[e], true);
        for m in ["ffn_gate", "ffn_up", "ffn_down"] {
            w = t(w, p(m), &layer_weight_dims(s, m).unwrap_or_default(), false);
        }
        if a == "qwen3" || a == "gemma3" {
            w = t(w, p("attn_q_norm"), &[s.head_dim], true);
            w = t(w, p("attn_k_norm"), &[s.head_dim], true);
        }
        if a == "gemma3" {
            w = t(w, p("post_attention_norm"), &[e], true);
            w = t(w, p("post_ffw_norm"), &[e], true);
        }
    }
    w
}

/// The dimensions (inputs, outputs) of a layer's matrix `name` (`attn_q`, `ffn_down`, ...) in
/// the models of shape `s`.
fn layer_weight_dims(s: &Shape, name: &str) -> Option<[u64; 2]> {
    let (e, q, kv, ff) = (s.n_embd, s.n_head * s.head_dim, s.n_head_kv * s.head_dim, s.n_ff);
    Some(match name {
        "attn_q" => [e, q],
        "attn_k" | "attn_v" => [e, kv],
        "attn_output" => [q, e],
        "ffn_gate" | "ffn_up" => [e, ff],
        "ffn_down" => [ff, e],
        _ => return None,
    })
}

/// A synthetic LoRA adapter for the models [`f16_writer`] makes of a shape.
#[derive(Debug, Clone)]
pub struct LoraSpec {
    /// The matrices it changes in every layer, by name (`attn_q`, `attn_k`, `attn_v`,
    /// `attn_output`, `ffn_gate`, `ffn_up`, `ffn_down`).
    pub targets: Vec<String>,
    /// Its rank.
    pub rank: u64,
    /// `adapter.lora.alpha`, or none (then llama.cpp applies the scale as given).
    pub alpha: Option<f32>,
    /// Where its values come from.
    pub seed: u64,
    /// B all zeros: an adapter that changes nothing.
    pub zero: bool,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            targets: vec!["attn_q".into(), "attn_v".into(), "ffn_down".into()],
            rank: 4,
            alpha: None,
            seed: 7,
            zero: false,
        }
    }
}

impl LoraSpec {
    /// A and B of layer `l`'s `target` (each row-major as GGUF stores them: A `[inputs,
    /// rank]`, B `[rank, outputs]`), values of about ±0.1.
    fn pair(&self, shape: &Shape, l: u64, target: &str) -> Option<([u64; 2], Vec<f32>, Vec<f32>)> {
        let [n_in, n_out] = layer_weight_dims(shape, target)?;
        let name = format!("blk.{l}.{target}.weight");
        let a = noise((n_in * self.rank) as usize, seed_of(&format!("{name}.lora_a"), self.seed), 0.1);
        let b = match self.zero {
            true => vec![0.0; (self.rank * n_out) as usize],
            false => noise((self.rank * n_out) as usize, seed_of(&format!("{name}.lora_b"), self.seed), 0.1),
        };
        Some(([n_in, n_out], a, b))
    }

    /// The scale llama.cpp multiplies B·A by for an adapter scale of `scale`.
    pub fn effective_scale(&self, scale: f32) -> f32 {
        match self.alpha {
            Some(alpha) if alpha != 0.0 => scale * alpha / self.rank as f32,
            _ => scale,
        }
    }
}

/// `n` values uniform in ±`amplitude`.
fn noise(n: usize, seed: u64, amplitude: f32) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * amplitude
        })
        .collect()
}

/// A LoRA adapter file (F32 A and B) for the models of `shape`, as `spec` says.
pub fn lora_writer(shape: &Shape, spec: &LoraSpec) -> Result<Writer> {
    let mut w = Writer::new()
        .meta_str("general.architecture", shape.arch)
        .meta_str("general.type", "adapter")
        .meta_str("general.name", &format!("synthetic LoRA for {}", shape.name))
        .meta_str("adapter.type", "lora");
    if let Some(alpha) = spec.alpha {
        w = w.meta("adapter.lora.alpha", Value::Float(alpha as f64));
    }
    for l in 0..shape.n_layer {
        for target in &spec.targets {
            let ([n_in, n_out], a, b) = spec.pair(shape, l, target).ok_or_else(|| {
                Error::invalid("lora target", format!("{target:?} is not a matrix of a layer of {}", shape.name))
            })?;
            let name = format!("blk.{l}.{target}.weight");
            w = w.tensor_f32(&format!("{name}.lora_a"), &[n_in, spec.rank], &a);
            w = w.tensor_f32(&format!("{name}.lora_b"), &[spec.rank, n_out], &b);
        }
    }
    Ok(w)
}

/// The model `f16_writer(shape, seed, None)` writes, with `spec`'s adapter merged in at
/// `scale`: each changed matrix W becomes W + s·B·A in F32, where s is
/// [`LoraSpec::effective_scale`]. Its logits are what the model with the adapter applied at
/// `scale` computes (up to rounding).
pub fn merged_writer(shape: &Shape, seed: u64, spec: &LoraSpec, scale: f32) -> Result<Writer> {
    let mut w = f16_writer(shape, seed, None);
    let s = spec.effective_scale(scale);
    for l in 0..shape.n_layer {
        for target in &spec.targets {
            let ([n_in, n_out], a, b) = spec.pair(shape, l, target).ok_or_else(|| {
                Error::invalid("lora target", format!("{target:?} is not a matrix of a layer of {}", shape.name))
            })?;
            let name = format!("blk.{l}.{target}.weight");
            let mut bytes = Vec::new();
            f16_data(n_in * n_out, seed_of(&name, seed), false)(&mut bytes)
                .map_err(|e| Error::Io { path: PathBuf::from(&name), source: e })?;
            let (n_in, n_out, r) = (n_in as usize, n_out as usize, spec.rank as usize);
            let mut merged: Vec<f32> =
                bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect();
            for o in 0..n_out {
                for k in 0..r {
                    let bk = s * b[o * r + k];
                    let row = &a[k * n_in..(k + 1) * n_in];
                    for (m, av) in merged[o * n_in..(o + 1) * n_in].iter_mut().zip(row) {
                        *m += bk * av;
                    }
                }
            }
            w = w.replace_tensor_f32(&name, &[n_in as u64, n_out as u64], &merged);
        }
    }
    Ok(w)
}

/// A control vector file for the models of `shape`: a `direction.N` tensor for each of
/// `layers`, values of about ±`amplitude`.
pub fn control_vector_writer(shape: &Shape, layers: &[u64], seed: u64, amplitude: f32) -> Writer {
    layers.iter().fold(
        Writer::new()
            .meta_str("general.architecture", "controlvector")
            .meta_str("controlvector.model_hint", shape.arch),
        |w, &l| {
            let v = noise(shape.n_embd as usize, seed_of(&format!("direction.{l}"), seed), amplitude);
            w.tensor_f32(&format!("direction.{l}"), &[shape.n_embd], &v)
        },
    )
}

/// IEEE half bits to f32.
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as f32;
    sign * match exp {
        0 => mant * 2f32.powi(-24),
        31 => f32::INFINITY,
        _ => (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// Writes a synthetic model of `shape` as `ty` to `out`. Quantized types are written as F16
/// next to `out` first and quantized by llama.cpp (`llama_model_quantize`) with `threads`.
/// With a `tokenizer` (see [`Tokenizer::from_gguf`]) the model gets that vocabulary instead
/// of a made-up one. `progress` hears each phase.
pub fn synth(
    shape: &Shape,
    ty: SynthType,
    out: &Path,
    threads: u32,
    seed: u64,
    tokenizer: Option<&Tokenizer>,
    progress: &dyn Fn(&str),
) -> Result<PathBuf> {
    crate::init::init();
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::Io { path: p.clone(), source: e }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let writer = f16_writer(shape, seed, tokenizer);
    let f16_path = if ty == SynthType::F16 { out.to_path_buf() } else { out.with_extension("f16.tmp.gguf") };
    progress(&format!("writing {} (F16, random weights) to {}", shape.name, f16_path.display()));
    writer.write_to(&f16_path).map_err(io(&f16_path))?;
    if ty == SynthType::F16 {
        return Ok(out.to_path_buf());
    }
    progress(&format!("quantizing to {ty:?} with {threads} threads"));
    let (src, dst) = (c_string("path", &f16_path.to_string_lossy())?, c_string("path", &out.to_string_lossy())?);
    // SAFETY: returns a plain struct by value.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.ftype = ty.ftype();
    params.nthread = threads.max(1) as i32;
    // SAFETY: valid C strings and params for the duration of the call.
    let rc = unsafe { sys::llama_model_quantize(src.as_ptr(), dst.as_ptr(), &params) };
    let _ = std::fs::remove_file(&f16_path);
    if rc != 0 {
        let _ = std::fs::remove_file(out);
        return Err(Error::Llama { call: "llama_model_quantize", reason: format!("returned {rc}") });
    }
    Ok(out.to_path_buf())
}

/// A tiny model for examples and tests: the `tiny` shape (llama, 4 layers, 4096 made-up
/// tokens, random F16 weights, about 10 MB), written once into the temp folder and reused.
/// It loads and generates everywhere in a fraction of a second; its text is noise.
///
/// ```
/// # fn main() -> rocm_llama::Result<()> {
/// use rocm_llama::{Context, ContextConfig, GenerateOptions, LoadConfig, Model};
///
/// let model = Model::load(rocm_llama::synth::tiny_model()?, &LoadConfig::default())?;
/// let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(256))?;
/// let (_, summary) = ctx.generate("t1 t2 t3", &GenerateOptions::greedy(4))?.collect_text()?;
/// assert!(summary.generated_tokens <= 4);
/// # Ok(())
/// # }
/// ```
pub fn tiny_model() -> Result<PathBuf> {
    cached_example("tiny", || Ok(f16_writer(find_shape("tiny")?, 1, None)))
}

/// A tiny reranker for examples and tests: the `tiny-qwen3` shape with rank pooling and a
/// two-label classifier head (`cls.output.weight`, labels "yes" and "no"), random F16
/// weights; written once into the temp folder like [`tiny_model`]. Its scores are noise, but
/// they go through llama.cpp's rank pooling like a real reranker's.
pub fn tiny_reranker() -> Result<PathBuf> {
    cached_example("tiny-reranker", || {
        let shape = find_shape("tiny-qwen3")?;
        let a = shape.arch;
        let labels = vec![Value::String("yes".into()), Value::String("no".into())];
        let n = shape.n_embd * 2;
        Ok(f16_writer(shape, 1, None)
            .meta_u32(&format!("{a}.pooling_type"), 4)
            .meta(
                &format!("{a}.classifier.output_labels"),
                Value::Array { elem: ValueType::String, len: 2, values: Some(labels) },
            )
            .tensor_generated("cls.output.weight", &[shape.n_embd, 2], 1, n * 2, f16_data(n, seed_of("cls", 1), false)))
    })
}

/// Writes the example model `name` once into the temp folder and returns its path.
fn cached_example(name: &str, writer: impl FnOnce() -> Result<Writer>) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("rocm-llama-examples");
    let path = dir.join(format!("{name}-f16-v{}.gguf", env!("CARGO_PKG_VERSION")));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
    // Written under a name of its own and renamed, so processes racing here never read a
    // half-written file.
    let tmp = dir.join(format!("{name}.{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
    writer()?.write_to(&tmp).map_err(|e| Error::Io { path: tmp.clone(), source: e })?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_back() {
        for x in [0.0f32, 1.0, -2.0, 0.034, -0.0171, 7.3e-3] {
            let back = f16_to_f32(f16_bits(x));
            assert!((back - x).abs() <= x.abs() / 1000.0 + 1e-7, "{x} -> {back}");
        }
    }

    #[test]
    fn half_precision() {
        assert_eq!(f16_bits(1.0), 0x3c00);
        assert_eq!(f16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(0.0), 0);
        assert_eq!(f16_bits(1e-9), 0);
        assert_eq!(f16_bits(65536.0 * 2.0), 0x7c00);
        assert_eq!(f16_bits(0.5), 0x3800);
    }

    #[test]
    fn shapes_are_consistent() {
        for s in SHAPES {
            assert_eq!(s.n_head % s.n_head_kv, 0, "{}", s.name);
            // Every type quantizes blocks of 32; K-quants want 256 and fall back otherwise.
            assert_eq!(s.n_embd % 32, 0, "{}", s.name);
            assert_eq!(s.n_ff % 256, 0, "{}", s.name);
            assert_eq!(s.sliding_window > 0, s.arch == "gemma3", "{}", s.name);
        }
        assert!(find_shape("llama3-8b").is_ok());
        assert!(find_shape("gpt5").is_err());
    }
}
