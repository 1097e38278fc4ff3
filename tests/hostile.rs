//! Inputs that used to kill the whole process (an assert or a C++ exception inside llama.cpp,
//! a segfault, an allocation abort), found 2026-11-28 by trying the safe API as a hostile
//! caller would. Each case runs in a child process (this test binary again, with
//! `ROCM_LLAMA_CHILD_CASE` naming the case), so a regression fails one test with the signal
//! that killed the child instead of taking the whole test binary down.

mod common;

use common::in_child;

use std::path::PathBuf;

use rocm_llama::gguf::{Value, ValueType};
use rocm_llama::synth::{f16_writer, find_shape};
use rocm_llama::{Batch, Context, ContextConfig, Engine, EngineConfig, Error, LoadConfig, Model, Sampler};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rocm-llama-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn token(model: &Model, text: &str) -> i32 {
    let t = model.vocab().tokenize(text, false, false).unwrap();
    assert_eq!(t.len(), 1, "{text:?} is one token in the test model: {t:?}");
    t[0]
}

#[test]
fn grammar_accept_refuses_what_llama_cpp_would_throw_on() {
    in_child("grammar_accept_refuses_what_llama_cpp_would_throw_on", || {
        let Some(model) = common::model() else { return };
        let n_vocab = model.vocab().n_tokens();
        let grammar = r#"root ::= "yes" | "no""#;
        let mut s = Sampler::builder(model).grammar(grammar, "root").greedy().build().unwrap();
        assert!(matches!(s.accept(n_vocab), Err(Error::InvalidToken { .. })));
        assert!(matches!(s.accept(n_vocab + 1000), Err(Error::InvalidToken { .. })));
        assert!(matches!(s.accept(-1), Err(Error::InvalidToken { .. })));
        assert!(matches!(s.accept(token(model, "banana")), Err(Error::Grammar(_))));
        // An end-of-generation token before the grammar can end.
        let eos = model.vocab().eos().unwrap();
        assert!(matches!(s.accept(eos), Err(Error::Grammar(_))));
        // The state is unchanged by refused tokens: "yes" is still accepted, then the end.
        s.accept(token(model, "yes")).unwrap();
        s.accept(eos).unwrap();
        // Other chains check ids too (DRY and penalties read them later).
        let mut plain = rocm_llama::SamplingParams::default().repeat_penalty(1.1).build(model).unwrap();
        assert!(matches!(plain.accept(n_vocab), Err(Error::InvalidToken { .. })));
    });
}

#[test]
fn sample_logits_takes_exactly_one_logit_per_token() {
    in_child("sample_logits_takes_exactly_one_logit_per_token", || {
        let Some(model) = common::model() else { return };
        let n = model.vocab().n_tokens() as usize;
        let chains = [
            Sampler::builder(model).grammar(r#"root ::= "yes" | "no""#, "root").greedy().build().unwrap(),
            Sampler::greedy(model).unwrap(),
            rocm_llama::SamplingParams::default().build(model).unwrap(),
        ];
        for mut s in chains {
            for len in [0, 1, n - 1, n + 1, n + 100] {
                let logits = vec![0.5f32; len];
                assert!(matches!(s.sample_logits(&logits), Err(Error::InvalidArgument { .. })), "len {len}");
            }
            let mut logits = vec![0.0f32; n];
            logits[token(model, "yes") as usize] = 5.0;
            let t = s.sample_logits(&logits).unwrap();
            assert!((0..n as i32).contains(&t));
        }
        // A grammar chain picks what the grammar allows even when the logits say otherwise.
        let mut g = Sampler::builder(model).grammar(r#"root ::= "no""#, "root").greedy().build().unwrap();
        let mut logits = vec![0.0f32; n];
        logits[token(model, "yes") as usize] = 50.0;
        let t = g.sample_logits(&logits).unwrap();
        let text = model.vocab().detokenize(&[t], false, false).unwrap();
        assert!(!text.is_empty() && "no".starts_with(&text), "{text:?}");
    });
}

#[test]
fn batch_smaller_than_the_sequence_count_is_an_invalid_argument() {
    in_child("batch_smaller_than_the_sequence_count_is_an_invalid_argument", || {
        let Some(model) = common::model() else { return };
        let cfg = ContextConfig::default().n_ctx(512).threads(1).n_seq_max(8).n_batch(4);
        assert!(matches!(Context::new(model, &cfg), Err(Error::InvalidArgument { .. })));
        // n_batch above n_ctx is capped by llama.cpp at n_ctx: the same check applies.
        let cfg = ContextConfig::default().n_ctx(8).threads(1).n_seq_max(16);
        assert!(matches!(Context::new(model, &cfg), Err(Error::InvalidArgument { .. })));
        let shared = std::sync::Arc::new(Model::load(common::model_path().unwrap(), &LoadConfig::default()).unwrap());
        let engine = Engine::start(shared, EngineConfig::default().n_batch(1).threads(Some(1)));
        assert!(matches!(engine, Err(Error::InvalidArgument { .. })));
    });
}

#[test]
fn batches_too_large_to_allocate_are_errors() {
    in_child("batches_too_large_to_allocate_are_errors", || {
        assert!(matches!(Batch::new(100_000, 1 << 30), Err(Error::InvalidArgument { .. })));
        let started = std::time::Instant::now();
        assert!(matches!(Batch::new(1 << 30, 1 << 30), Err(Error::InvalidArgument { .. })));
        assert!(started.elapsed().as_secs() < 5);
    });
}

#[test]
fn repeated_positions_and_huge_shifts_are_refused() {
    in_child("repeated_positions_and_huge_shifts_are_refused", || {
        let Some(model) = common::model() else { return };
        let mut ctx = common::context(model);
        let mut b = Batch::new(8, 1).unwrap();
        let t = token(model, "yes");
        for pos in [0, 0, 1] {
            b.add(t, pos, &[0], false).unwrap();
        }
        match ctx.decode(&b) {
            Err(Error::InvalidBatch(why)) => assert!(why.contains("position 0 after position 0"), "{why}"),
            other => panic!("{other:?}"),
        }
        b.clear();
        b.add_sequence(&[t, t, t], 0, 0, true).unwrap();
        ctx.decode(&b).unwrap();
        assert!(matches!(ctx.seq_shift(0, .., i32::MAX), Err(Error::InvalidPosition { .. })));
        assert!(matches!(ctx.seq_shift(0, .., i32::MIN), Err(Error::InvalidPosition { .. })));
        // Positions 0..=2 shifted by n_ctx_seq - 2 would end at n_ctx_seq: one too far.
        let room = ctx.n_ctx_seq() as i32 - 2;
        assert!(matches!(ctx.seq_shift(0, .., room), Err(Error::InvalidPosition { .. })));
        ctx.seq_shift(0, .., room - 1).unwrap();
        assert_eq!(ctx.seq_pos_max(0).unwrap(), Some(ctx.n_ctx_seq() as i32 - 1));
    });
}

/// Loading `path` must fail as a bad file whose reason mentions `needle`.
fn refused(path: &std::path::Path, needle: &str) {
    match Model::load(path, &LoadConfig::default()) {
        Err(Error::NotGguf { reason, .. }) => assert!(reason.contains(needle), "{reason}"),
        other => panic!("{}: {:?}", path.display(), other.map(|_| ())),
    }
}

/// A tiny synthetic model's writer with one metadata value replaced.
fn patched(name: &str, key: &str, value: Value) -> PathBuf {
    let shape = find_shape("tiny").unwrap();
    let path = tmp(name);
    f16_writer(shape, 1, None).set_meta(key, value).write_to(&path).unwrap();
    path
}

#[test]
fn files_llama_cpp_would_assert_on_are_refused() {
    in_child("files_llama_cpp_would_assert_on_are_refused", || {
        let arch = find_shape("tiny").unwrap().arch;
        for (what, layers) in [("zero", 0u64), ("huge", 4_000_000_000), ("over-512", 513)] {
            let path = patched(&format!("layers-{what}.gguf"), &format!("{arch}.block_count"), Value::UInt(layers));
            match Model::load(&path, &LoadConfig::default()) {
                Err(Error::NotGguf { reason, .. }) => assert!(reason.contains("block_count"), "{reason}"),
                Err(e) => panic!("{what}: {e:?}"),
                Ok(_) => panic!("{what}: loaded"),
            }
            // `fit` (what `run` does before loading) reads the same number.
            assert!(LoadConfig::fit(&path, &Default::default()).is_err());
        }
        // Hyper-parameters llama.cpp asserts on (a negative or NaN norm epsilon, RoPE
        // dimensions past the head size or odd, KV heads that do not divide the heads, too
        // many experts) or spins on (RoPE of 0 dimensions): issue 26, found by flipping one
        // byte of the real test model (offset 625, xor 0x80: the epsilon's sign).
        let hparams = [
            ("attention.layer_norm_rms_epsilon", Value::Float(-1e-6), "epsilon"),
            ("attention.layer_norm_rms_epsilon", Value::Float(f64::NAN), "finite"),
            ("rope.dimension_count", Value::UInt(0), "RoPE"),
            ("rope.dimension_count", Value::UInt(65), "RoPE"),
            ("rope.dimension_count", Value::UInt(128), "RoPE"),
            ("attention.head_count_kv", Value::UInt(3), "KV head"),
            ("attention.head_count_kv", Value::UInt(0), "KV head"),
            ("expert_count", Value::UInt(513), "expert_count"),
            ("rope.scaling.type", Value::String("sideways".into()), "rope.scaling.type"),
            ("rope.freq_base", Value::Float(0.0), "base frequency"),
        ];
        for (i, (suffix, value, needle)) in hparams.into_iter().enumerate() {
            let path = patched(&format!("hparam-{i}.gguf"), &format!("{arch}.{suffix}"), value);
            refused(&path, needle);
        }
        // Two vocabulary entries with the same text; then two that differ only after a NUL
        // byte, the same text to llama.cpp (found by tests/fuzz.rs, seed 1011: a mutated
        // vocabulary hit the assert).
        let n_vocab = find_shape("tiny").unwrap().n_vocab as usize;
        for (name, at, text) in [("duplicate-token.gguf", 7, "t3"), ("nul-token.gguf", 9, "t3\0x")] {
            let mut tokens: Vec<Value> = (0..n_vocab).map(|i| Value::String(format!("t{i}"))).collect();
            tokens[at] = Value::String(text.into());
            let values = Value::Array { elem: ValueType::String, len: n_vocab as u64, values: Some(tokens) };
            let path = patched(name, "tokenizer.ggml.tokens", values);
            refused(&path, "twice");
        }
        // A SentencePiece vocabulary without a byte token: llama.cpp's tokenizer throws
        // std::out_of_range through FFI ("Rust cannot catch foreign exceptions") the first time
        // text needs that byte (found by tests/fuzz.rs, seed 5033 of the GGUF driver).
        let ok = tmp("tiny-vocab-source.gguf");
        f16_writer(find_shape("tiny").unwrap(), 1, None).write_to(&ok).unwrap();
        let opts = rocm_llama::gguf::ReadOptions { max_array_len: 1 << 20, ..Default::default() };
        let file = rocm_llama::gguf::GgufFile::open_with(&ok, opts).unwrap();
        let Some(Value::Array { values: Some(mut tokens), len, .. }) = file.get("tokenizer.ggml.tokens").cloned()
        else {
            panic!("the tiny model has a vocabulary")
        };
        let at = tokens.iter().position(|t| t.as_str() == Some("<0x41>")).expect("byte tokens in the tiny vocabulary");
        tokens[at] = Value::String("no-longer-a-byte".into());
        let path = patched(
            "no-byte-token.gguf",
            "tokenizer.ggml.tokens",
            Value::Array { elem: ValueType::String, len, values: Some(tokens) },
        );
        refused(&path, "byte 0x41");
        // The unpatched file loads.
        let ok = tmp("tiny-ok.gguf");
        f16_writer(find_shape("tiny").unwrap(), 1, None).write_to(&ok).unwrap();
        Model::load(&ok, &LoadConfig::default()).unwrap();
    });
}

/// Found by tests/fuzz.rs (seed 5, 2026-11-28): a partial `seq_copy` between sequences of a
/// context with one KV buffer per sequence hit llama.cpp's "seq_cp() is only supported for
/// full KV buffers" assert.
#[test]
fn partial_copies_between_separate_kv_buffers_are_refused() {
    in_child("partial_copies_between_separate_kv_buffers_are_refused", || {
        let Some(model) = common::model() else { return };
        let mut cfg = ContextConfig::default().n_ctx(512).threads(1).n_seq_max(2);
        cfg.kv_unified = false;
        let mut ctx = Context::new(model, &cfg).unwrap();
        let mut b = Batch::new(8, 1).unwrap();
        b.add_sequence(&[token(model, "yes"); 3], 0, 0, true).unwrap();
        ctx.decode(&b).unwrap();
        assert!(matches!(ctx.seq_copy(0, 1, 1..2), Err(Error::Unsupported(_))));
        assert!(matches!(ctx.seq_copy(0, 1, ..2), Err(Error::Unsupported(_))));
        ctx.seq_copy(0, 1, ..).unwrap();
        assert_eq!(ctx.seq_pos_max(1).unwrap(), Some(2));
        // One shared buffer takes any range.
        let mut ctx = Context::new(model, &ContextConfig::default().n_ctx(512).threads(1).n_seq_max(2)).unwrap();
        ctx.decode(&b).unwrap();
        ctx.seq_copy(0, 1, 1..2).unwrap();
    });
}

/// Found by tests/fuzz.rs (2026-11-28): a penalty or DRY look-back of i32::MAX made llama.cpp
/// allocate its 8 GB window up front (41 s, and an abort where the memory is not there).
#[test]
fn huge_penalty_windows_are_refused() {
    in_child("huge_penalty_windows_are_refused", || {
        let Some(model) = common::model() else { return };
        for last_n in [i32::MAX, rocm_llama::sampler::MAX_LOOKBACK + 1, -2] {
            let b = Sampler::builder(model).penalties(last_n, 1.1, 0.0, 0.0).greedy().build();
            assert!(matches!(b, Err(Error::InvalidArgument { .. })), "penalties {last_n}");
            let b = Sampler::builder(model).dry(0.8, 1.75, 2, last_n, &["\n"]).greedy().build();
            assert!(matches!(b, Err(Error::InvalidArgument { .. })), "DRY {last_n}");
        }
        // -1 is the model's context, not "off".
        Sampler::builder(model).penalties(-1, 1.1, 0.0, 0.0).dry(0.8, 1.75, 2, -1, &["\n"]).greedy().build().unwrap();
    });
}

/// Found by tests/fuzz.rs (seed 73, 2026-11-28): shifting positions in a BF16 K cache ran
/// ggml's CPU RoPE on BF16, which aborts ("fatal error" in ops.cpp).
#[test]
fn shifting_a_bf16_k_cache_is_refused() {
    in_child("shifting_a_bf16_k_cache_is_refused", || {
        let Some(model) = common::model() else { return };
        let mut cfg = ContextConfig::default().n_ctx(256).threads(1);
        cfg.type_k = rocm_llama::KvType::BF16;
        let mut ctx = Context::new(model, &cfg).unwrap();
        let mut b = Batch::new(8, 1).unwrap();
        b.add_sequence(&[token(model, "yes"); 3], 0, 0, true).unwrap();
        ctx.decode(&b).unwrap();
        assert!(matches!(ctx.seq_shift(0, .., 5), Err(Error::Unsupported(_))));
        // The next decode still works.
        b.clear();
        b.add(token(model, "yes"), 3, &[0], true).unwrap();
        ctx.decode(&b).unwrap();
    });
}

/// A positive control for `scripts/test/asan.sh`, not a test of this crate: hands llama.cpp a
/// text length 64 bytes past the end of a heap buffer, which AddressSanitizer must report from
/// inside llama_tokenize (its memcpy). Ignored in normal runs; the ASan script runs it and
/// checks for the report, so "0 reports" there means the sanitizer was watching.
#[test]
#[ignore = "run by scripts/test/asan.sh as a control"]
fn asan_control_reports_an_overflow_inside_llama_cpp() {
    let case = "asan_control_reports_an_overflow_inside_llama_cpp";
    if std::env::var("ROCM_LLAMA_CHILD_CASE").as_deref() == Ok(case) {
        let Some(model) = common::model() else { return };
        // On the heap on purpose: ASan watches heap blocks (Rust's stack is not instrumented).
        #[allow(clippy::useless_vec)]
        let text = vec![b'a'; 16];
        let mut out = vec![0i32; 256];
        // SAFETY: deliberately not: the length runs past `text` (that is the point).
        unsafe {
            rocm_llama::sys::llama_tokenize(
                rocm_llama::sys::llama_model_get_vocab(model.as_ptr()),
                text.as_ptr().cast(),
                text.len() as i32 + 64,
                out.as_mut_ptr(),
                out.len() as i32,
                false,
                false,
            );
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([case, "--exact", "--nocapture", "--test-threads=1", "--ignored"])
        .env("ROCM_LLAMA_CHILD_CASE", case)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("AddressSanitizer: heap-buffer-overflow"), "no ASan report:\n{stderr}");
}

/// Issue 26: a JSON schema of 100 nested arrays (2.6 KB) grew the grammar to gigabytes and
/// `serve` was killed for memory; a grammar nested deep enough overflows llama.cpp's
/// recursive parser. Deep schemas and grammars are errors; a deep but accepted schema makes a
/// grammar llama.cpp parses, and a grammar it refuses says why.
#[test]
fn deep_schemas_and_grammars_are_refused_before_llama_cpp() {
    in_child("deep_schemas_and_grammars_are_refused_before_llama_cpp", || {
        let Some(model) = common::model() else { return };
        let nested = |levels: usize| {
            let mut schema = serde_json::json!({"type": "integer"});
            for _ in 0..levels {
                schema = serde_json::json!({"type": "array", "items": schema});
            }
            schema
        };
        let mut ctx = common::context(model);
        let opts = |levels| rocm_llama::GenerateOptions::greedy(4).json_schema(nested(levels));
        assert!(matches!(ctx.generate("[", &opts(100)).map(|g| g.count()), Err(Error::JsonSchema(_))));
        let made = ctx.generate("[", &opts(60)).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        assert!(!made.is_empty());
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(100_000), ")".repeat(100_000));
        let err = Sampler::builder(model).grammar(&deep, "root").greedy().build().err().unwrap();
        assert!(matches!(&err, Error::Grammar(m) if m.contains("nests")), "{err}");
        let err = Sampler::builder(model).grammar("root ::= \"a\" | (", "root").greedy().build().err().unwrap();
        assert!(matches!(&err, Error::Grammar(m) if m.contains("GBNF parser") && !m.contains("log target")), "{err}");
    });
}
