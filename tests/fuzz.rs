//! Random drivers that try to kill the process through the safe API and through model files:
//! seeded random sequences of calls (not coverage-guided: a state-machine fuzzer in the
//! manner of proptest's), each episode in a child process (this test binary again), so an
//! abort, a segfault or an allocation failure is counted and reported with the seed that
//! reproduces it instead of taking the test binary down.
//!
//!   cargo test --release --test fuzz                                  # 15 s per target (CI)
//!   ROCM_LLAMA_FUZZ_SECS=900 cargo test --release --test fuzz -- --nocapture
//!   ROCM_LLAMA_FUZZ_SEED=1234 cargo test --release --test fuzz api -- --nocapture  # one episode
//!
//! `ROCM_LLAMA_FUZZ_BASE_SEED` moves the seeds (default 1: CI runs the same episodes each
//! time); the report (episodes, calls, aborts) goes to stdout and to
//! `$ROCM_LLAMA_FUZZ_OUT/<target>.json` when that is set.

mod common;

use common::rng::Rng;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocm_llama::gguf::Value;
use rocm_llama::synth::{f16_writer, find_shape, Tokenizer};
use rocm_llama::{
    Batch, ChatMessage, Context, ContextConfig, Engine, EngineConfig, FlashAttention, GenerateOptions, KvType,
    LoadConfig, Model, Sampler, SamplingParams,
};

const GRAMMARS: [&str; 6] = [
    r#"root ::= "yes" | "no""#,
    r#"root ::= [a-z]+ "." "#,
    r#"root ::= ("t" [0-9])*"#,
    r#"root ::= "x" root | "y""#,
    r#"root ::= [^\x00-\x7F]"#,
    r#"root ::= """#,
];

fn mutate_text(rng: &mut Rng, s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    for _ in 0..rng.below(4) {
        if b.is_empty() {
            break;
        }
        let i = rng.below(b.len() as u64) as usize;
        match rng.below(3) {
            0 => b[i] = rng.next() as u8,
            1 => {
                b.remove(i);
            }
            _ => {
                let specials = b"()*+|[]^\"\\:=-";
                b.insert(i, specials[rng.below(specials.len() as u64) as usize]);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn random_sampling(rng: &mut Rng, n_vocab: i64) -> SamplingParams {
    SamplingParams::default()
        .temperature(if rng.chance(30) { 0.0 } else { rng.f32() })
        .top_k(rng.edgy_i32(n_vocab))
        .top_p(rng.f32())
        .min_p(rng.f32())
        .typical_p(if rng.chance(50) { 1.0 } else { rng.f32() })
        .repeat_penalty(if rng.chance(50) { 1.0 } else { rng.f32() })
        .frequency_penalty(if rng.chance(70) { 0.0 } else { rng.f32() })
        .presence_penalty(if rng.chance(70) { 0.0 } else { rng.f32() })
        .penalty_last_n(rng.edgy_i32(64))
        .dry_multiplier(if rng.chance(70) { 0.0 } else { rng.f32() })
        .dry_base(rng.f32())
        .dry_allowed_length(rng.edgy_i32(3))
        .dry_penalty_last_n(rng.edgy_i32(64))
        .seed(rng.next() as u32)
        .grammar(if rng.chance(30) {
            let g = GRAMMARS[rng.below(GRAMMARS.len() as u64) as usize];
            Some(if rng.chance(50) { mutate_text(rng, g) } else { g.to_string() })
        } else {
            None
        })
}

fn random_context_config(rng: &mut Rng) -> ContextConfig {
    let kv = [KvType::F32, KvType::F16, KvType::BF16, KvType::Q8_0, KvType::Q4_0, KvType::Iq4Nl];
    let mut c = ContextConfig::default().threads(1);
    c.n_ctx = if rng.chance(10) { None } else { Some(rng.edgy_u32(512).min(1 << 16)) };
    c.n_batch = rng.edgy_u32(64).min(1 << 16);
    c.n_ubatch = rng.edgy_u32(32).min(1 << 16);
    c.n_seq_max = rng.edgy_u32(4).min(1 << 10);
    c.flash_attention = [FlashAttention::Auto, FlashAttention::On, FlashAttention::Off][rng.below(3) as usize];
    c.type_k = kv[rng.below(kv.len() as u64) as usize];
    c.type_v = kv[rng.below(kv.len() as u64) as usize];
    c.embeddings = rng.chance(20);
    c.kv_unified = rng.chance(50);
    if rng.chance(5) {
        c.threads = Some(rng.edgy_u32(2));
    }
    c
}

/// One episode of random calls on `model`; returns how many calls it made.
fn api_episode(model: &Model, seed: u64, calls: usize) -> usize {
    let mut rng = Rng::new(seed);
    let n_vocab = model.vocab().n_tokens() as i64;
    let vocab = model.vocab();
    let mut ctx: Option<Context<'_>> = None;
    let mut batch = Batch::new(64, 4).unwrap();
    let mut sampler: Option<Sampler<'_>> = None;
    let mut spent = [Duration::ZERO; 14];
    for _ in 0..calls {
        let op = rng.below(14) as usize;
        let t0 = Instant::now();
        match op {
            0 => {
                let _ = vocab.tokenize(&rng.text(64), rng.chance(50), rng.chance(50));
            }
            1 => {
                let ids: Vec<i32> = (0..rng.below(12)).map(|_| rng.edgy_i32(n_vocab)).collect();
                let _ = vocab.detokenize(&ids, rng.chance(50), rng.chance(50));
                let _ = vocab.token_to_bytes(rng.edgy_i32(n_vocab), rng.chance(50));
                let mut d = vocab.detokenizer(rng.chance(50));
                for &t in &ids {
                    let _ = d.push(t);
                }
                let _ = d.push_bytes(&rng.bytes(8));
                let _ = d.finish();
            }
            2 => {
                // Sizes either small or extreme (the extremes fail fast; the middle ground would
                // only spend time zeroing memory).
                let cap = if rng.chance(80) {
                    rng.below(128) as usize
                } else {
                    [usize::MAX, 1 << 40, 1 << 31][rng.below(3) as usize]
                };
                let seqs = if rng.chance(80) {
                    rng.below(8) as usize
                } else {
                    [usize::MAX, 257, 1 << 30][rng.below(3) as usize]
                };
                if let Ok(b) = Batch::new(cap, seqs) {
                    batch = b;
                }
            }
            3 => {
                let seqs: Vec<i32> = (0..rng.below(5)).map(|_| rng.edgy_i32(4)).collect();
                let _ = batch.add(rng.edgy_i32(n_vocab), rng.edgy_i32(8), &seqs, rng.chance(50));
            }
            4 => {
                let tokens: Vec<i32> = (0..rng.below(40)).map(|_| rng.edgy_i32(n_vocab)).collect();
                let _ = batch.add_sequence(&tokens, rng.edgy_i32(16), rng.edgy_i32(2), rng.chance(70));
                if rng.chance(30) {
                    batch.clear();
                }
            }
            5 => {
                let cfg = random_context_config(&mut rng);
                if let Ok(c) = Context::new(model, &cfg) {
                    ctx = Some(c);
                }
            }
            6 => {
                if let Some(c) = ctx.as_mut() {
                    let _ = c.decode(&batch);
                }
            }
            7 => {
                if let Some(c) = ctx.as_ref() {
                    let i = rng.edgy_i32(batch.len() as i64);
                    let _ = c.logits(i);
                    let _ = c.embeddings(i);
                }
            }
            8 => {
                if let Some(c) = ctx.as_mut() {
                    let (s, d, p0, p1) = (rng.edgy_i32(2), rng.edgy_i32(2), rng.edgy_i32(8), rng.edgy_i32(16));
                    let _ = match rng.below(7) {
                        0 => c.seq_remove(Some(s), p0..p1).map(|_| ()),
                        1 => c.seq_remove(None, p0..).map(|_| ()),
                        2 => c.seq_copy(s, d, p0..p1),
                        3 => c.seq_keep(s),
                        4 => c.seq_shift(s, p0.., rng.edgy_i32(16)),
                        5 => c.seq_pos_max(s).map(|_| ()),
                        _ => {
                            c.clear_memory();
                            Ok(())
                        }
                    };
                }
            }
            9 => {
                let params = random_sampling(&mut rng, n_vocab);
                if let Ok(s) = params.build(model) {
                    sampler = Some(s);
                }
                if rng.chance(30) {
                    let g = GRAMMARS[rng.below(GRAMMARS.len() as u64) as usize];
                    let g = mutate_text(&mut rng, g);
                    if let Ok(s) = Sampler::builder(model).top_k(rng.edgy_i32(40)).grammar(&g, "root").dist(1).build() {
                        sampler = Some(s);
                    }
                }
            }
            10 => {
                if let Some(s) = sampler.as_mut() {
                    for _ in 0..rng.below(6) {
                        let _ = s.accept(rng.edgy_i32(n_vocab));
                    }
                    let len = match rng.below(4) {
                        0 => rng.below(n_vocab as u64 * 2) as usize,
                        _ => n_vocab as usize,
                    };
                    let logits: Vec<f32> = (0..len).map(|_| rng.f32()).collect();
                    let _ = s.sample_logits(&logits);
                    if let Some(c) = ctx.as_ref() {
                        let _ = s.sample(c, rng.edgy_i32(batch.len() as i64));
                    }
                    if rng.chance(20) {
                        s.reset();
                    }
                }
            }
            11 => {
                if let Some(c) = ctx.as_mut() {
                    let opts = GenerateOptions::default()
                        .max_tokens(rng.below(6) as usize)
                        .stops((0..rng.below(3)).map(|_| rng.text(4)))
                        .sampling(random_sampling(&mut rng, n_vocab));
                    if let Ok(g) = c.generate(&rng.text(48), &opts) {
                        for ev in g.take(12) {
                            if ev.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            12 => {
                let msgs: Vec<ChatMessage> =
                    (0..rng.below(4)).map(|_| ChatMessage::new(rng.text(10), rng.text(20))).collect();
                let names = rocm_llama::builtin_templates();
                let t = if rng.chance(70) && !names.is_empty() {
                    names[rng.below(names.len() as u64) as usize].clone()
                } else {
                    rng.text(40)
                };
                let _ = rocm_llama::apply_template(&t, &msgs, rng.chance(50));
            }
            _ => {
                // Engine: a short life with random settings, requests, cancels and drops.
                let config = EngineConfig::default()
                    .n_seq_max(rng.edgy_u32(3).min(64))
                    .n_ctx_per_seq(rng.edgy_u32(128).min(4096))
                    .n_batch(rng.edgy_u32(32).min(4096))
                    .queue_capacity(rng.below(6) as usize)
                    .threads(Some(1))
                    .flash_attention(FlashAttention::Auto);
                // The engine needs an owned model: each child loads its own copy once.
                if let Ok(h) = Engine::start(owned_model(model), config) {
                    let mut streams = Vec::new();
                    for _ in 0..rng.below(6) {
                        let opts = GenerateOptions::default()
                            .max_tokens(rng.below(5) as usize)
                            .sampling(random_sampling(&mut rng, n_vocab));
                        if let Ok(s) = h.generate(&rng.text(24), &opts) {
                            streams.push(s);
                        }
                    }
                    for (i, s) in streams.into_iter().enumerate() {
                        match i % 3 {
                            0 => s.cancel(),
                            1 => drop(s),
                            _ => {
                                let _ = s.collect_text();
                            }
                        }
                    }
                    if rng.chance(50) {
                        h.abort_step();
                    }
                    h.shutdown();
                }
            }
        }
        spent[op] += t0.elapsed();
    }
    if std::env::var_os("ROCM_LLAMA_FUZZ_TIMES").is_some() {
        println!("\nfuzz-times-ms {:?}", spent.map(|d| d.as_millis()));
    }
    calls
}

/// The child's own `Arc<Model>` of the same file (loaded on first use).
fn owned_model(model: &Model) -> Arc<Model> {
    static OWNED: std::sync::OnceLock<Arc<Model>> = std::sync::OnceLock::new();
    OWNED.get_or_init(|| Arc::new(Model::load(model.path(), &LoadConfig::default()).unwrap())).clone()
}

/// Flips, overwrites and splices bytes of `base` in its first `span` bytes (the header,
/// metadata, vocabulary and tensor table; tensor data after them is left alone).
fn mutate_file(rng: &mut Rng, base: &[u8], span: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        let span = span.min(b.len());
        if span == 0 {
            break;
        }
        let i = rng.below(span as u64) as usize;
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = rng.next() as u8,
            2 => {
                // A length or count field: little-endian u32/u64 set to an edge value.
                let v: u64 = [0, 1, 0xFF, 0xFFFF_FFFF, u64::MAX, 1 << 31, 513, 4_000_000_000][rng.below(8) as usize];
                for (k, byte) in v.to_le_bytes().iter().enumerate().take(if rng.chance(50) { 4 } else { 8 }) {
                    if i + k < b.len() {
                        b[i + k] = *byte;
                    }
                }
            }
            3 => {
                let j = rng.below(span as u64) as usize;
                let (a, c) = (i.min(j), i.max(j));
                let n = (c - a).min(16).min(b.len() - c);
                b.copy_within(c..c + n, a);
            }
            4 => b.truncate(rng.below(b.len() as u64) as usize),
            _ => b[i] = b[i].wrapping_add(1),
        }
    }
    b
}

/// One episode of mutated-file loads: each variant is written and loaded, then a context
/// made and one token decoded when it loads.
fn gguf_episode(bases: &[(PathBuf, usize)], seed: u64, loads: usize, dir: &Path) -> usize {
    let mut rng = Rng::new(seed);
    let originals: Vec<(Vec<u8>, usize)> = bases.iter().map(|(p, span)| (std::fs::read(p).unwrap(), *span)).collect();
    let path = dir.join(format!("mutant-{}.gguf", std::process::id()));
    for _ in 0..loads {
        let (bytes, span) = &originals[rng.below(originals.len() as u64) as usize];
        let m = mutate_file(&mut rng, bytes, *span);
        std::fs::write(&path, &m).unwrap();
        if let Ok(model) = Model::load(&path, &LoadConfig::default()) {
            if let Ok(mut c) = Context::new(&model, &ContextConfig::default().n_ctx(64).threads(1)) {
                let _ = c.generate("t1 t2", &GenerateOptions::greedy(1)).map(|g| g.count());
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    loads
}

/// The longest one episode may run: far more than any takes; only a hang comes near it.
const EPISODE_LIMIT: Duration = Duration::from_secs(180);

/// A child's output, or what it had written when it was killed at `limit` (its status then
/// says SIGKILL, which the driver reports like any other death).
fn output_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output { status, stdout: reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

/// Runs episodes in child processes until the time is up; fails listing the seeds whose
/// child died.
fn drive(target: &str, test_name: &str, calls_per_episode: usize, episode: impl Fn(u64, usize) -> usize) {
    let child_seed = std::env::var("ROCM_LLAMA_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    if std::env::var("ROCM_LLAMA_FUZZ_TARGET").as_deref() == Ok(target) || child_seed.is_some() {
        let seed = child_seed.expect("ROCM_LLAMA_FUZZ_SEED");
        let n = episode(seed, calls_per_episode);
        // On a line of its own: libtest has printed "test NAME ... " without a newline.
        println!("\nfuzz-calls {n}");
        return;
    }
    let secs: u64 = std::env::var("ROCM_LLAMA_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let base: u64 = std::env::var("ROCM_LLAMA_FUZZ_BASE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let exe = std::env::current_exe().unwrap();
    let (mut episodes, mut calls, mut crashes) = (0u64, 0u64, Vec::new());
    let mut seed = base;
    while Instant::now() < deadline {
        let child = std::process::Command::new(&exe)
            .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env("ROCM_LLAMA_FUZZ_TARGET", target)
            .env("ROCM_LLAMA_FUZZ_SEED", seed.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = output_within(child, EPISODE_LIMIT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        episodes += 1;
        match stdout.lines().find_map(|l| l.strip_prefix("fuzz-calls ")).and_then(|n| n.trim().parse::<u64>().ok()) {
            Some(n) if out.status.success() => calls += n,
            _ => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String =
                    stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                eprintln!("fuzz {target}: seed {seed} died ({:?}):\n{tail}", out.status);
                crashes.push(seed);
            }
        }
        seed += 1;
    }
    let report = format!(
        "{{\"target\":\"{target}\",\"seconds\":{secs},\"base_seed\":{base},\"episodes\":{episodes},\"calls\":{calls},\"aborts\":{},\"abort_seeds\":{:?}}}",
        crashes.len(),
        crashes
    );
    println!("fuzz report: {report}");
    if let Some(dir) = std::env::var_os("ROCM_LLAMA_FUZZ_OUT") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(format!("{target}.json")), &report);
    }
    assert!(
        crashes.is_empty(),
        "{target}: {} episodes killed their process; reproduce with ROCM_LLAMA_FUZZ_SEED=<seed>: {crashes:?}",
        crashes.len()
    );
}

fn tiny_model_file(dir: &Path, tokenizer: Option<&Tokenizer>, name: &str) -> PathBuf {
    let path = dir.join(name);
    if !path.exists() {
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        f16_writer(find_shape("tiny").unwrap(), 3, tokenizer)
            .set_meta("general.name", Value::String("fuzz".into()))
            .write_to(&tmp)
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

fn work_dir() -> PathBuf {
    let d = std::env::temp_dir().join("rocm-llama-fuzz");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn api_random_call_sequences_never_kill_the_process() {
    let dir = work_dir();
    let path = tiny_model_file(&dir, None, "tiny-api.gguf");
    drive("api", "api_random_call_sequences_never_kill_the_process", 300, |seed, calls| {
        let model = Model::load(&path, &LoadConfig::default()).unwrap();
        api_episode(&model, seed, calls)
    });
}

#[test]
fn mutated_model_files_never_kill_the_process() {
    let dir = work_dir();
    let mut bases = vec![(tiny_model_file(&dir, None, "tiny-gguf.gguf"), 4096)];
    // The real test model's tokenizer on a tiny model: a real vocabulary, merges and
    // template to corrupt, in a file of a few MB instead of 253.
    if let Some(real) = common::model_path() {
        let tok = Tokenizer::from_gguf(&real).unwrap();
        let with_real = tiny_model_file(&dir, Some(&tok), "tiny-real-vocab.gguf");
        let span = std::fs::metadata(&with_real).unwrap().len() as usize;
        bases.push((with_real, span));
    }
    let bases: Vec<(PathBuf, usize)> = bases
        .into_iter()
        .map(|(p, span)| {
            // Mutate the header, metadata and tensor table: everything before the tensor data.
            let data_offset = rocm_llama::gguf::GgufFile::open(&p).map(|f| f.data_offset as usize).unwrap_or(span);
            (p, data_offset.min(span).max(64))
        })
        .collect();
    drive("gguf", "mutated_model_files_never_kill_the_process", 20, |seed, loads| {
        gguf_episode(&bases, seed, loads, &dir)
    });
}

/// The edge values a numeric metadata entry is set to: zero, one, odd, the 32-bit extremes,
/// a 64-bit value, negative, and for floats NaN, the infinities and a huge value.
fn edge_values(v: &Value) -> Vec<Value> {
    match v {
        Value::UInt(_) | Value::Int(_) => vec![
            Value::UInt(0),
            Value::UInt(1),
            Value::UInt(3),
            Value::UInt(u32::MAX as u64),
            Value::UInt(1 << 40),
            Value::Int(-1),
        ],
        Value::Float(_) => vec![
            Value::Float(0.0),
            Value::Float(-1.0),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(1e30),
        ],
        _ => Vec::new(),
    }
}

/// Every numeric metadata entry of the tiny models of each family, set to each edge value:
/// loaded, and when it loads, a context made and two tokens generated. Each family's entries
/// run in a child process with a time limit, so an abort, a crash or a hang (a RoPE of 0
/// dimensions once spun forever in the first decode) fails the test naming the entry.
#[test]
fn every_numeric_hyperparameter_at_its_edges_never_kills_or_hangs() {
    const SHAPES: [&str; 3] = ["tiny", "tiny-qwen3", "tiny-gemma3"];
    let dir = work_dir();
    let entries = |shape: &str| -> Vec<(String, Value)> {
        let bytes = f16_writer(find_shape(shape).unwrap(), 5, None).to_bytes();
        let file = rocm_llama::gguf::GgufFile::from_bytes(&bytes, Default::default()).unwrap();
        file.metadata.into_iter().filter(|(_, v)| !edge_values(v).is_empty()).collect()
    };
    if let Ok(case) = std::env::var("ROCM_LLAMA_HPARAM_CASE") {
        let (shape, key) = case.split_once(' ').unwrap();
        let (_, original) = entries(shape).into_iter().find(|(k, _)| k == key).unwrap();
        let path = dir.join(format!("hparam-{}.gguf", std::process::id()));
        for value in edge_values(&original) {
            println!("{key} = {value:?}");
            f16_writer(find_shape(shape).unwrap(), 5, None).set_meta(key, value).write_to(&path).unwrap();
            if let Ok(model) = Model::load(&path, &LoadConfig::default()) {
                if let Ok(mut c) = Context::new(&model, &ContextConfig::default().n_ctx(64).threads(1)) {
                    let _ = c.generate("t1 t2", &GenerateOptions::greedy(2)).map(|g| g.count());
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;
    for shape in SHAPES {
        for (key, _) in entries(shape) {
            cases += 1;
            let mut child = std::process::Command::new(&exe)
                .args(["every_numeric_hyperparameter_at_its_edges_never_kills_or_hangs", "--exact", "--nocapture"])
                .env("ROCM_LLAMA_HPARAM_CASE", format!("{shape} {key}"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // A generous limit: each value takes milliseconds; only a hang comes near it.
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut stdout = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout);
            let last = stdout.lines().rfind(|l| l.contains(" = ")).unwrap_or("(before the first value)").to_string();
            match status {
                Some(s) if s.success() => {}
                Some(s) => failures.push(format!("{shape}: {last}: {s:?}")),
                None => failures.push(format!("{shape}: {last}: still running after 60 s")),
            }
        }
    }
    println!("hyper-parameter edges: {cases} entries, {} failed", failures.len());
    assert!(cases > 30, "only {cases} numeric entries found");
    assert!(failures.is_empty(), "these killed or hung their process:\n{}", failures.join("\n"));
}

/// A server of llama.cpp's RPC protocol that greets properly and then answers every command
/// with an answer of the right length whose values come from `rng`: mostly plausible, some at
/// an edge (an alignment of 0, a buffer smaller than asked for, a base of 0, four billion
/// devices...), now and then of the wrong length. Serves until the process ends.
fn lying_rpc_server(seed: u64) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let lie_percent = 1 + rng.below(10);
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut rng = Rng::new(rng.next());
            std::thread::spawn(move || {
                let mut head = [0u8; 9];
                let mut handles = 0u64;
                while conn.read_exact(&mut head).is_ok() {
                    let len = u64::from_le_bytes(head[1..].try_into().unwrap());
                    let mut req = vec![0u8; len.min(1 << 30) as usize];
                    if conn.read_exact(&mut req).is_err() {
                        return;
                    }
                    let u64_at = |at: usize| u64::from_le_bytes(req[at..at + 8].try_into().unwrap());
                    let lie = |truth: u64, rng: &mut Rng| -> u64 {
                        if !rng.chance(lie_percent) {
                            return truth;
                        }
                        [0, 1, 3, u64::MAX, 1 << 63, u32::MAX as u64 + 1, truth / 2, truth + 1][rng.below(8) as usize]
                    };
                    let answer: Vec<u8> = match head[0] {
                        14 => [&[7u8, 0, 0, 0][..], &[0; 24]].concat(),
                        0 => {
                            handles += 1;
                            let size = u64_at(4);
                            [lie(handles, &mut rng).to_le_bytes(), lie(size, &mut rng).to_le_bytes()].concat()
                        }
                        1 => lie(32, &mut rng).to_le_bytes().to_vec(),
                        2 => lie(1 << 40, &mut rng).to_le_bytes().to_vec(),
                        3 => lie(u64_at(0) << 32, &mut rng).to_le_bytes().to_vec(),
                        7 | 9 => vec![lie(0, &mut rng) as u8],
                        8 => vec![0; u64_at(296 + 8).min(1 << 26) as usize],
                        11 => [lie(8 << 30, &mut rng).to_le_bytes(), lie(8 << 30, &mut rng).to_le_bytes()].concat(),
                        13 => {
                            let ne: u64 = (0..4)
                                .map(|i| u32::from_le_bytes(req[4 + 20 + 4 * i..][..4].try_into().unwrap()) as u64)
                                .product();
                            lie(ne * 4 + 64, &mut rng).to_le_bytes().to_vec()
                        }
                        15 => (lie(1, &mut rng) as u32).to_le_bytes().to_vec(),
                        _ => continue,
                    };
                    let mut n = answer.len() as u64;
                    if rng.chance(lie_percent / 3) {
                        n = lie(n, &mut rng);
                    }
                    let _ = conn.write_all(&n.to_le_bytes()).and_then(|_| conn.write_all(&answer));
                }
            });
        }
    });
    endpoint
}

/// One episode: the tiny model loaded with layers on a lying RPC server, a context made and
/// a token decoded. Any answer may be an `Err`; none may end the process.
fn rpc_client_episode(path: &Path, seed: u64, loads: usize) -> usize {
    for i in 0..loads {
        let endpoint = lying_rpc_server(seed * 1000 + i as u64);
        let config = LoadConfig::default()
            .rpc(vec![endpoint])
            .rpc_timeout(Duration::from_secs(5))
            .gpu_layers(rocm_llama::GpuLayers::Count(2));
        if let Ok(model) = Model::load(path, &config) {
            if let Ok(mut c) = Context::new(&model, &ContextConfig::default().n_ctx(64).threads(1)) {
                let _ = c.generate("t1 t2", &GenerateOptions::greedy(2)).map(|g| g.count());
            }
        }
    }
    loads
}

/// Servers that lie in their answers (an RPC server is a network peer): every load through
/// one ends in `Ok` or `Err`, never in the end of the process.
#[test]
fn rpc_servers_that_answer_nonsense_never_kill_the_client() {
    let dir = work_dir();
    let path = tiny_model_file(&dir, None, "tiny-rpc.gguf");
    drive("rpc-client", "rpc_servers_that_answer_nonsense_never_kill_the_client", 4, |seed, loads| {
        rpc_client_episode(&path, seed, loads)
    });
}

/// Pieces of Jinja that make values, loops or recursion grow, spliced into real templates.
const TEMPLATE_SPLICES: [&str; 18] = [
    "{% for i in range(100000) %}{{ messages }}{% endfor %}",
    "{% set x = 'ab' * 30000000 %}{% set y = x ~ x ~ x %}{{ y | length }}",
    "{{ (messages | tojson) * 1000000 }}",
    "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{{ [messages] * 100000000 }}",
    "{{ range(100000000) | list | length }}",
    "{{ 'x' | indent(100000000) }}",
    "{{ ('y' * 1000000).split('') }}",
    "{{ ('z' * 10000000) | replace('z', 'zzzzzzzzzz') | replace('z', 'zzzzzzzzzz') }}",
    "{{ messages[0].content * 100000000 }}",
    "{{ raise_exception('from the fuzzer') }}",
    "{{ messages[1000000].content }}",
    "{% for m in messages %}{% for m2 in messages %}{% for m3 in messages %}{{ m3 }}{% endfor %}{% endfor %}{% endfor %}",
    "{{ '%s%s' | format(messages, messages) * 1000000 }}",
    "{{ (range(1000000) | map('string') | join(',')) | length }}",
    "{% set d = {} %}{% for i in range(1000000) %}{% set _ = d.update({i: i}) %}{% endfor %}",
    "{{ tools | tojson(indent=100000000) }}",
];

/// One episode: published templates with hostile pieces spliced in and slices cut or
/// repeated, each rendered once. Memory is capped (4 GiB of address space) so that a value
/// that escapes the bounds ends the child, which the driver counts.
fn template_episode(dir: &Path, seed: u64, renders: usize) -> usize {
    // SAFETY: setrlimit on this (child) process with a valid struct.
    unsafe {
        let cap = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
        libc::setrlimit(libc::RLIMIT_AS, &cap);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "jinja"));
    files.sort();
    let mut rng = Rng::new(seed);
    let messages = vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("Hi ".repeat(rng.below(2000) as usize)),
        ChatMessage::assistant("Hello."),
        ChatMessage::user("Again"),
    ];
    for _ in 0..renders {
        let mut source = std::fs::read_to_string(&files[rng.below(files.len() as u64) as usize]).unwrap();
        for _ in 0..1 + rng.below(3) {
            let at = source
                .char_indices()
                .nth(rng.below(source.chars().count() as u64 + 1) as usize)
                .map_or(source.len(), |(i, _)| i);
            match rng.below(3) {
                0 => source.insert_str(at, TEMPLATE_SPLICES[rng.below(TEMPLATE_SPLICES.len() as u64) as usize]),
                1 => {
                    let end =
                        source[at..].char_indices().nth(rng.below(200) as usize).map_or(source.len(), |(i, _)| at + i);
                    let slice = source[at..end].to_string();
                    for _ in 0..rng.below(4) {
                        source.insert_str(end, &slice);
                    }
                }
                _ => {
                    let end =
                        source[at..].char_indices().nth(rng.below(50) as usize).map_or(source.len(), |(i, _)| at + i);
                    source.replace_range(at..end, "");
                }
            }
        }
        let options = rocm_llama::ChatOptions::default()
            .kwarg("tools", serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]));
        let _ = rocm_llama::chat::render_jinja(&source, &messages, &options, "<s>", "</s>");
    }
    renders
}

#[test]
fn mutated_chat_templates_render_in_bounded_memory_or_fail() {
    let dir = common::templates_dir();
    if !dir.is_dir() {
        return;
    }
    drive("templates", "mutated_chat_templates_render_in_bounded_memory_or_fail", 20, |seed, renders| {
        template_episode(&dir, seed, renders)
    });
}

/// A random JSON schema: nested objects, arrays, alternatives, references and the keywords
/// with numbers, at depths up to `depth`, of at most about `budget` sub-schemas.
fn random_schema(rng: &mut Rng, depth: u32, budget: &mut u32) -> serde_json::Value {
    use serde_json::json;
    *budget = budget.saturating_sub(1);
    if depth == 0 || *budget == 0 || rng.chance(15) {
        return match rng.below(10) {
            0 => json!({"type": "string", "minLength": rng.below(4), "maxLength": 4 + rng.below(40)}),
            1 => json!({"type": "integer", "minimum": rng.edgy(0), "maximum": rng.edgy(100)}),
            2 => json!({"type": "number"}),
            3 => json!({"enum": ["a", 1, null, rng.text(8)]}),
            4 => json!({"const": rng.text(12)}),
            5 => json!({"type": "string", "format": (["date", "uuid", "date-time", "time"][rng.below(4) as usize])}),
            6 => json!({"type": ["string", "null"]}),
            7 => json!({"type": "boolean"}),
            8 => json!({"$ref": "#/$defs/x"}),
            // Now and then what a converter must refuse cleanly.
            _ => match rng.below(5) {
                0 => json!({"type": "string", "pattern": (["^[a-z]+$", "(a|b)*c{2,5}", "["][rng.below(3) as usize])}),
                1 => json!({"$ref": "#/definitions/missing"}),
                2 => json!({"type": "array", "minItems": rng.edgy(3000), "maxItems": rng.edgy(3000)}),
                3 => json!({"type": "string", "minLength": rng.edgy(5000)}),
                _ => json!({"type": rng.text(6)}),
            },
        };
    }
    let mut child = |rng: &mut Rng| random_schema(rng, depth - 1, budget);
    match rng.below(6) {
        0 | 1 => {
            let n = rng.below(6);
            let props: serde_json::Map<String, serde_json::Value> =
                (0..n).map(|i| (format!("p{i}"), child(rng))).collect();
            let required: Vec<String> = (0..n).filter(|_| rng.chance(50)).map(|i| format!("p{i}")).collect();
            json!({"type": "object", "properties": props, "required": required,
                   "additionalProperties": if rng.chance(30) { child(rng) } else { json!(rng.chance(50)) }})
        }
        2 | 3 => {
            let min = rng.below(3);
            json!({"type": "array", "items": child(rng), "minItems": min, "maxItems": min + rng.below(8)})
        }
        4 => {
            let key = ["anyOf", "oneOf", "anyOf", "allOf"][rng.below(4) as usize];
            json!({key: (0..1 + rng.below(4)).map(|_| child(rng)).collect::<Vec<_>>()})
        }
        _ => json!({"$defs": {"x": child(rng)}, "type": "object", "properties": {"r": {"$ref": "#/$defs/x"}}}),
    }
}

/// One episode: random schemas converted to grammars; those that convert become a sampler's
/// grammar on the tiny model, which then samples a few tokens from random logits.
fn schema_episode(model: &Model, seed: u64, schemas: usize) -> usize {
    let mut rng = Rng::new(seed);
    let n_vocab = model.vocab().n_tokens() as usize;
    for _ in 0..schemas {
        let depth = [3, 8, 30, 80][rng.below(4) as usize];
        // Chains (one child per level) reach the depth; wide ones spend the budget sooner.
        let schema = random_schema(&mut rng, depth, &mut 400);
        let Ok(grammar) = rocm_llama::schema::to_grammar(&schema) else { continue };
        let Ok(mut sampler) = Sampler::builder(model).grammar(&grammar, "root").dist(seed as u32).build() else {
            continue;
        };
        for _ in 0..4 {
            let logits: Vec<f32> = (0..n_vocab).map(|_| rng.f32()).collect();
            if sampler.sample_logits(&logits).is_err() {
                break;
            }
        }
    }
    schemas
}

#[test]
fn random_json_schemas_become_grammars_or_errors_never_aborts() {
    let dir = work_dir();
    let path = tiny_model_file(&dir, None, "tiny-schema.gguf");
    drive("schemas", "random_json_schemas_become_grammars_or_errors_never_aborts", 40, |seed, schemas| {
        let model = Model::load(&path, &LoadConfig::default()).unwrap();
        schema_episode(&model, seed, schemas)
    });
}
