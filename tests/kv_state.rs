//! KV state that outlives its context: `Session::save` and `Session::load` with the real test
//! model. A round trip continues exactly as never leaving the context; a file of another
//! model, a truncated, changed, extended or foreign file is an `Error::StateFile`, and the
//! session goes on working.

mod common;

use rocm_llama::{ContextConfig, Error, GenerateOptions, LoadConfig, Model, Session};

fn config() -> ContextConfig {
    common::config().n_ctx(2048)
}

fn reply(session: &mut Session<'_>, prompt: &str, n: usize) -> (Vec<i32>, rocm_llama::Summary) {
    let mut ids = Vec::new();
    let mut summary = None;
    for ev in session.generate(prompt, &GenerateOptions::greedy(n)).unwrap() {
        match ev.unwrap() {
            rocm_llama::Event::Token { id, .. } => ids.push(id),
            rocm_llama::Event::Text(_) => {}
            rocm_llama::Event::Done(s) => summary = Some(s),
        }
    }
    (ids, summary.unwrap())
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(name: &str) -> TempFile {
    TempFile(std::env::temp_dir().join(format!("rocm-llama-kv-state-{}-{name}", std::process::id())))
}

#[test]
fn a_saved_session_continues_as_if_it_never_left() {
    let Some(model) = common::model() else { return };
    let first = "The history of the river Danube begins in the Black Forest, where".to_string();
    let second_part = " Later, the river";

    // Never leaving: one session, two turns.
    let mut stay = Session::new(model, &config()).unwrap();
    let (_, s1) = reply(&mut stay, &first, 12);
    let text = model.vocab().detokenize(stay.cached_tokens(), true, false).unwrap();
    let second = format!("{text}{second_part}");
    let (want, _) = reply(&mut stay, &second, 12);
    assert_eq!(s1.cached_prompt_tokens, 0);

    // Saved after the first turn, loaded into a new session, second turn there.
    let file = temp("roundtrip");
    let mut before = Session::new(model, &config()).unwrap();
    reply(&mut before, &first, 12);
    let bytes = before.save(&file.0).unwrap();
    assert_eq!(bytes, std::fs::metadata(&file.0).unwrap().len());
    drop(before);
    let mut after = Session::new(model, &config()).unwrap();
    let held = after.load(&file.0).unwrap();
    assert!(held > 12, "{held}");
    let (got, summary) = reply(&mut after, &second, 12);
    assert!(summary.cached_prompt_tokens >= held - 1, "{summary:?}");
    assert_eq!(got, want, "the loaded session continues differently");
}

#[test]
fn unusable_state_files_are_errors_and_leave_the_session_working() {
    let Some(model) = common::model() else { return };
    let file = temp("bad");
    let mut session = Session::new(model, &config()).unwrap();
    let prompt = "Rivers of Europe: the Rhine, the Elbe,";
    let (want, _) = reply(&mut session, prompt, 8);
    session.save(&file.0).unwrap();
    let good = std::fs::read(&file.0).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("one byte short", good[..good.len() - 1].to_vec()),
        ("extended", [good.clone(), vec![0]].concat()),
        ("empty", Vec::new()),
        ("not a state file", b"GGUF and then some bytes that are not a state".to_vec()),
    ];
    for at in [good.len() / 3, good.len() - 20, good.len() - 3] {
        let mut changed = good.clone();
        changed[at] ^= 0x10;
        cases.push(("one bit changed", changed));
    }
    // A header that announces an absurd state size (and a checksum that matches nothing).
    let mut huge = good.clone();
    if let Some(i) = huge.windows(14).position(|w| w == b"\"state_bytes\":") {
        huge[i + 14] = b'9';
    }
    cases.push(("absurd size", huge));
    for (what, bytes) in cases {
        std::fs::write(&file.0, &bytes).unwrap();
        let mut fresh = Session::new(model, &config()).unwrap();
        match fresh.load(&file.0) {
            Err(Error::StateFile { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert!(fresh.cached_tokens().is_empty(), "{what}");
        let (got, summary) = reply(&mut fresh, prompt, 8);
        assert_eq!(summary.cached_prompt_tokens, 0, "{what}");
        assert_eq!(got, want, "{what}: the session after a refused file");
    }

    // A file of another model.
    let other_path = rocm_llama::synth::tiny_model().unwrap();
    let other = Model::load(&other_path, &LoadConfig::default()).unwrap();
    let mut theirs = Session::new(&other, &common::config()).unwrap();
    theirs.generate("t1 t2 t3", &GenerateOptions::greedy(2)).unwrap().collect_text().unwrap();
    theirs.save(&file.0).unwrap();
    let mut fresh = Session::new(model, &config()).unwrap();
    let err = fresh.load(&file.0).unwrap_err();
    assert!(matches!(&err, Error::StateFile { reason, .. } if reason.contains("another model")), "{err}");
    // A missing file is an I/O error.
    assert!(matches!(fresh.load("/nonexistent/state.kv"), Err(Error::Io { .. })));
}
