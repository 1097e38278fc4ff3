//! LoRA adapters and control vectors on synthetic models (no downloads): an adapter that
//! changes nothing leaves the logits as they were, a known adapter gives the logits of the
//! model with it merged into the weights, and every file llama.cpp would abort on or fail on
//! silently is refused with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocm_llama::gguf::{Value, Writer};
use rocm_llama::synth::{self, LoraSpec};
use rocm_llama::{Batch, Context, ContextConfig, ControlVector, Error, LoadConfig, LoraAdapter, Model};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("rocm-llama-adapters-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(w: &Writer, name: &str) -> PathBuf {
    let path = dir().join(name);
    w.write_to(&path).unwrap();
    path
}

fn tiny() -> Arc<Model> {
    Arc::new(Model::load(synth::tiny_model().unwrap(), &LoadConfig::default()).unwrap())
}

/// The logits after a fixed prompt, with `set` applied to the context first.
fn logits_with<'m>(model: &'m Model, set: impl FnOnce(&mut Context<'m>)) -> Vec<f32> {
    let mut ctx = Context::new(model, &ContextConfig::default().n_ctx(128).threads(2)).unwrap();
    set(&mut ctx);
    let tokens = [1, 300, 301, 302, 303, 304];
    let mut batch = Batch::new(tokens.len(), 1).unwrap();
    batch.add_sequence(&tokens, 0, 0, true).unwrap();
    ctx.decode(&batch).unwrap();
    ctx.logits(tokens.len() as i32 - 1).unwrap().to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn adapter_file(spec: &LoraSpec, name: &str) -> PathBuf {
    write(&synth::lora_writer(synth::find_shape("tiny").unwrap(), spec).unwrap(), name)
}

#[test]
fn an_adapter_that_changes_nothing_leaves_the_logits() {
    let model = tiny();
    let base = logits_with(&model, |_| {});
    let zero =
        LoraAdapter::load(&model, adapter_file(&LoraSpec { zero: true, ..LoraSpec::default() }, "zero.gguf")).unwrap();
    let real = LoraAdapter::load(&model, adapter_file(&LoraSpec::default(), "real.gguf")).unwrap();
    assert_eq!(real.n_weights(), 3 * 4);
    assert_eq!(real.rank(), 4);
    let with_zero = logits_with(&model, |c| c.set_lora(&[(zero.clone(), 1.0)]).unwrap());
    assert!(max_diff(&base, &with_zero) < 1e-5, "{}", max_diff(&base, &with_zero));
    let scale_zero = logits_with(&model, |c| c.set_lora(&[(real.clone(), 0.0)]).unwrap());
    assert!(max_diff(&base, &scale_zero) < 1e-5, "{}", max_diff(&base, &scale_zero));
    // Set, then removed: the base model again.
    let removed = logits_with(&model, |c| {
        c.set_lora(&[(real.clone(), 1.0)]).unwrap();
        c.set_lora(&[]).unwrap();
        assert!(c.lora().is_empty());
    });
    assert!(max_diff(&base, &removed) < 1e-5);
}

/// An adapter with known A and B gives the logits of a model file whose weights are
/// W + s·B·A (s = scale·alpha/rank), within rounding; and those differ clearly from the
/// base model's, so the comparison means something.
#[test]
fn a_known_adapter_gives_the_merged_models_logits() {
    let model = tiny();
    let shape = synth::find_shape("tiny").unwrap();
    let spec = LoraSpec {
        alpha: Some(8.0),
        targets: vec!["attn_q".into(), "ffn_up".into(), "attn_output".into()],
        ..LoraSpec::default()
    };
    let adapter = LoraAdapter::load(&model, adapter_file(&spec, "known.gguf")).unwrap();
    assert_eq!(adapter.alpha(), Some(8.0));
    let merged_path = write(&synth::merged_writer(shape, 1, &spec, 0.5).unwrap(), "merged.gguf");
    let merged = Arc::new(Model::load(&merged_path, &LoadConfig::default()).unwrap());
    let base = logits_with(&model, |_| {});
    let applied = logits_with(&model, |c| c.set_lora(&[(adapter.clone(), 0.5)]).unwrap());
    let expected = logits_with(&merged, |_| {});
    let (moved, off) = (max_diff(&base, &expected), max_diff(&applied, &expected));
    assert!(moved > 0.05, "the adapter hardly changes the model: {moved}");
    assert!(off < moved / 200.0, "adapter vs merged: {off}, adapter's effect: {moved}");
}

#[test]
fn two_adapters_add_up() {
    let model = tiny();
    let one =
        LoraAdapter::load(&model, adapter_file(&LoraSpec { seed: 1, ..LoraSpec::default() }, "one.gguf")).unwrap();
    let two =
        LoraAdapter::load(&model, adapter_file(&LoraSpec { seed: 2, ..LoraSpec::default() }, "two.gguf")).unwrap();
    let base = logits_with(&model, |_| {});
    let a = logits_with(&model, |c| c.set_lora(&[(one.clone(), 1.0)]).unwrap());
    let b = logits_with(&model, |c| c.set_lora(&[(two.clone(), 1.0)]).unwrap());
    let both = logits_with(&model, |c| c.set_lora(&[(one.clone(), 1.0), (two.clone(), 1.0)]).unwrap());
    assert!(max_diff(&a, &b) > 0.01);
    // Small adapters act almost linearly: both ≈ base + (a - base) + (b - base).
    let sum: Vec<f32> = base.iter().zip(&a).zip(&b).map(|((x, y), z)| y + z - x).collect();
    assert!(max_diff(&both, &sum) < max_diff(&both, &base) / 3.0);
}

fn expect_adapter_error(model: &Arc<Model>, path: &Path, words: &str) {
    match LoraAdapter::load(model, path) {
        Err(Error::Adapter { reason, .. }) => assert!(reason.contains(words), "{}: {reason}", path.display()),
        other => panic!("{}: {other:?}", path.display()),
    }
}

/// Files llama.cpp would abort on (a metadata value of another type, a tensor of three
/// dimensions) and ones it would only log about (another architecture, other shapes, a
/// missing half of a pair, not an adapter at all) are errors that say why.
#[test]
fn bad_adapter_files_are_refused_with_the_reason() {
    let model = tiny();
    let shape = synth::find_shape("tiny").unwrap();
    let qwen = synth::find_shape("tiny-qwen3").unwrap();
    let spec = LoraSpec::default();
    let good = || synth::lora_writer(shape, &spec).unwrap();
    let cases: Vec<(Writer, &str, &str)> = vec![
        (synth::lora_writer(qwen, &spec).unwrap(), "arch.gguf", "architecture"),
        (good().set_meta("general.type", Value::UInt(3)), "type-int.gguf", "not a string"),
        (good().set_meta("adapter.type", Value::String("ia3".into())), "ia3.gguf", "not a LoRA adapter"),
        (good().set_meta("adapter.lora.alpha", Value::String("8".into())), "alpha-str.gguf", "not an F32"),
        (
            good().meta(
                "adapter.alora.invocation_tokens",
                Value::Array { elem: rocm_llama::gguf::ValueType::U32, len: 1, values: Some(vec![Value::UInt(5)]) },
            ),
            "alora.gguf",
            "aLoRA",
        ),
        (good().tensor_f32("blk.0.attn_k.weight.lora_a", &[256, 4], &[0.0; 1024]), "half.gguf", "only one"),
        (
            good().tensor_f32("blk.0.attn_k.weight.lora_a", &[256, 2, 2], &[0.0; 1024]).tensor_f32(
                "blk.0.attn_k.weight.lora_b",
                &[4, 128],
                &[0.0; 512],
            ),
            "three-d.gguf",
            "matrices",
        ),
        (
            good().tensor_f32("blk.0.attn_k.weight.lora_a", &[256, 4], &[0.0; 1024]).tensor_f32(
                "blk.0.attn_k.weight.lora_b",
                &[4, 100],
                &[0.0; 400],
            ),
            "shape.gguf",
            "do not fit",
        ),
        (
            good().tensor_f32("blk.9.attn_k.weight.lora_a", &[256, 4], &[0.0; 1024]).tensor_f32(
                "blk.9.attn_k.weight.lora_b",
                &[4, 128],
                &[0.0; 512],
            ),
            "no-tensor.gguf",
            "no tensor",
        ),
        (good().tensor_f32("blk.0.attn_k.weight", &[4], &[0.0; 4]), "suffix.gguf", "neither"),
        (synth::control_vector_writer(shape, &[1], 1, 0.1), "not-lora.gguf", "not a LoRA adapter"),
    ];
    for (w, name, words) in cases {
        expect_adapter_error(&model, &write(&w, name), words);
    }
    let junk = dir().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0garbage").unwrap();
    assert!(matches!(LoraAdapter::load(&model, &junk), Err(Error::Adapter { .. })));
    let missing = LoraAdapter::load(&model, dir().join("missing.gguf")).unwrap_err();
    assert!(matches!(missing, Error::Adapter { .. }), "{missing}");

    // A vocabulary-only model has no weights to change.
    let vocab = Arc::new(Model::load(synth::tiny_model().unwrap(), &LoadConfig::default().vocab_only(true)).unwrap());
    let path = adapter_file(&spec, "for-vocab.gguf");
    assert!(matches!(LoraAdapter::load(&vocab, &path), Err(Error::InvalidState(_))));
    // An adapter loaded for one model cannot be set on another's context.
    let other = tiny();
    let adapter = LoraAdapter::load(&other, &path).unwrap();
    let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(64)).unwrap();
    assert!(matches!(ctx.set_lora(&[(adapter.clone(), 1.0)]), Err(Error::InvalidArgument { .. })));
    let own = LoraAdapter::load(&model, &path).unwrap();
    assert!(matches!(ctx.set_lora(&[(own, f32::NAN)]), Err(Error::InvalidArgument { .. })));
}

#[test]
fn control_vectors_steer_and_are_checked() {
    let model = tiny();
    let shape = synth::find_shape("tiny").unwrap();
    let path = write(&synth::control_vector_writer(shape, &[1, 2, 3], 5, 0.5), "cvec.gguf");
    let base = logits_with(&model, |_| {});
    let none = ControlVector::load(&model, &path, 0.0).unwrap();
    let weak = logits_with(&model, |c| c.set_control_vector(Some((&none, 1..=3))).unwrap());
    assert!(max_diff(&base, &weak) < 1e-5);
    let cv = ControlVector::load(&model, &path, 1.0).unwrap();
    let steered = logits_with(&model, |c| c.set_control_vector(Some((&cv, 1..=3))).unwrap());
    assert!(max_diff(&base, &steered) > 0.01, "{}", max_diff(&base, &steered));
    // Off again, and a vector plus its opposite is none.
    let off = logits_with(&model, |c| {
        c.set_control_vector(Some((&cv, 1..=3))).unwrap();
        c.set_control_vector(None).unwrap();
    });
    assert!(max_diff(&base, &off) < 1e-5);
    let cancelled = cv.clone().plus(&ControlVector::load(&model, &path, -1.0).unwrap()).unwrap();
    let zero = logits_with(&model, |c| c.set_control_vector(Some((&cancelled, 1..=3))).unwrap());
    assert!(max_diff(&base, &zero) < 1e-5);

    let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(64)).unwrap();
    for layers in [0..=2, 1..=4, 3..=9] {
        assert!(matches!(ctx.set_control_vector(Some((&cv, layers))), Err(Error::InvalidArgument { .. })));
    }
    for (w, name) in [
        (synth::control_vector_writer(shape, &[0], 1, 0.1), "cvec-0.gguf"),
        (synth::control_vector_writer(shape, &[4], 1, 0.1), "cvec-4.gguf"),
        (Writer::new().tensor_f32("direction.1", &[100], &[0.0; 100]), "cvec-width.gguf"),
        (Writer::new().tensor_f32("steer.1", &[256], &[0.0; 256]), "cvec-name.gguf"),
    ] {
        let got = ControlVector::load(&model, write(&w, name), 1.0);
        assert!(matches!(got, Err(Error::Adapter { .. })), "{name}: {got:?}");
    }
}

fn greedy_under(lora: Option<Vec<(LoraAdapter, f32)>>) -> rocm_llama::GenerateOptions {
    let mut o = rocm_llama::GenerateOptions::greedy(10);
    o.lora = lora;
    o
}

fn ids_of(events: impl IntoIterator<Item = rocm_llama::Result<rocm_llama::Event>>) -> Vec<i32> {
    events
        .into_iter()
        .filter_map(|e| match e.unwrap() {
            rocm_llama::Event::Token { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

/// The engine serves requests under different adapter sets side by side (a decode per set):
/// each gets exactly what it got alone, the sets give different text, and a prompt cached
/// under one set is never reused under another.
#[test]
fn the_engine_serves_each_request_under_its_own_adapters() {
    use rocm_llama::{Engine, EngineConfig};
    let model = tiny();
    let a = LoraAdapter::load(&model, adapter_file(&LoraSpec { seed: 11, ..LoraSpec::default() }, "engine-a.gguf"))
        .unwrap();
    let b = LoraAdapter::load(&model, adapter_file(&LoraSpec { seed: 12, ..LoraSpec::default() }, "engine-b.gguf"))
        .unwrap();
    let sets: [Option<Vec<(LoraAdapter, f32)>>; 3] = [None, Some(vec![(a, 4.0)]), Some(vec![(b, 4.0)])];
    let options = |k: usize| greedy_under(sets[k].clone());
    let config =
        EngineConfig::default().n_seq_max(4).n_ctx_per_seq(128).n_batch(64).threads(Some(2)).reproducible(true);
    let engine = Engine::start(model.clone(), config).unwrap();
    let prompt = "t1 t2 t3 t4 t5 t6";
    let alone: Vec<Vec<i32>> = (0..3).map(|k| ids_of(engine.generate(prompt, &options(k)).unwrap())).collect();
    assert!(alone[0] != alone[1] && alone[1] != alone[2] && alone[0] != alone[2], "{alone:?}");
    let together: Vec<(usize, Vec<i32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let (engine, options) = (engine.clone(), &options);
                s.spawn(move || (t % 3, ids_of(engine.generate(prompt, &options(t % 3)).unwrap())))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, ids) in together {
        assert_eq!(ids, alone[k], "set {k} beside the others");
    }
    // A session computes its cached prompt again under another set.
    let mut session = rocm_llama::Session::new(&model, &ContextConfig::default().n_ctx(128).threads(2)).unwrap();
    let fresh: Vec<Vec<i32>> = (0..3)
        .map(|k| {
            let mut ctx = Context::new(&model, &ContextConfig::default().n_ctx(128).threads(2)).unwrap();
            ids_of(ctx.generate(prompt, &greedy_under(Some(sets[k].clone().unwrap_or_default()))).unwrap())
        })
        .collect();
    for k in [1, 0, 2, 1] {
        let o = greedy_under(Some(sets[k].clone().unwrap_or_default()));
        assert_eq!(ids_of(session.generate(prompt, &o).unwrap()), fresh[k], "session under set {k}");
    }
}

/// An engine started with a control vector generates what a context with that vector set
/// generates, and something else than one without.
#[test]
fn an_engine_with_a_control_vector_steers_every_request() {
    use rocm_llama::{Engine, EngineConfig};
    let model = tiny();
    let shape = synth::find_shape("tiny").unwrap();
    let path = write(&synth::control_vector_writer(shape, &[1, 2, 3], 9, 2.0), "engine-cvec.gguf");
    let vector = ControlVector::load(&model, &path, 1.0).unwrap();
    let prompt = "t1 t2 t3 t4 t5 t6";
    let mut steered = Context::new(&model, &ContextConfig::default().n_ctx(128).threads(2)).unwrap();
    steered.set_control_vector(Some((&vector, 1..=3))).unwrap();
    let want = ids_of(steered.generate(prompt, &greedy_under(None)).unwrap());
    let mut plain = Context::new(&model, &ContextConfig::default().n_ctx(128).threads(2)).unwrap();
    let unsteered = ids_of(plain.generate(prompt, &greedy_under(None)).unwrap());
    assert_ne!(want, unsteered, "the vector changed nothing");
    let mut config = EngineConfig::default().n_seq_max(2).n_ctx_per_seq(128).threads(Some(2));
    config.control_vector = Some((vector.clone(), 1..=3));
    let engine = Engine::start(model.clone(), config).unwrap();
    assert_eq!(ids_of(engine.generate(prompt, &greedy_under(None)).unwrap()), want);
    // A range the model does not have fails the start.
    let mut config = EngineConfig::default().n_seq_max(2).n_ctx_per_seq(128).threads(Some(2));
    config.control_vector = Some((vector, 1..=4));
    assert!(matches!(Engine::start(model.clone(), config), Err(Error::InvalidArgument { .. })));
}
