//! The tokenizer against llama.cpp's own test vocabularies (`models/ggml-vocab-*.gguf` with
//! their reference tokenizations, fetched at test time by scripts/test/vocabs.sh), and long
//! runs of one character class, which once overflowed the stack inside llama.cpp's
//! `std::regex` pre-tokenizers and killed the process.

mod common;

use common::in_child;

use std::path::{Path, PathBuf};

use rocm_llama::{LoadConfig, Model};

/// Every vocabulary file in the test folder, sorted.
fn vocab_files() -> Vec<PathBuf> {
    let dir = common::vocabs_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "expected llama.cpp's test vocabularies in {}", dir.display());
    files
}

fn load_vocab(path: &Path) -> Model {
    Model::load(path, &LoadConfig::default().vocab_only(true)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The (text, token ids) pairs of a vocabulary's `.inp`/`.out` files, as llama.cpp's
/// test-tokenizer-0 reads them: texts separated by a marker line, one line of ids per text.
fn reference_cases(vocab: &Path) -> Option<Vec<(String, Vec<i32>)>> {
    let inp = std::fs::read_to_string(format!("{}.inp", vocab.display())).ok()?;
    let out = std::fs::read_to_string(format!("{}.out", vocab.display())).ok()?;
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let ids: Vec<Vec<i32>> = out.lines().map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "{}: texts and reference lines differ in number", vocab.display());
    Some(texts.into_iter().map(String::from).zip(ids).collect())
}

#[test]
fn reference_tokenizations_of_llama_cpps_test_vocabularies_match_exactly() {
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for file in vocab_files() {
        let Some(cases) = reference_cases(&file) else { continue };
        let model = load_vocab(&file);
        for (text, want) in cases {
            let got = model.vocab().tokenize(&text, false, false).unwrap();
            if got != want {
                mismatches.push(format!("{}: {text:?}\n  want {want:?}\n  got  {got:?}", file.display()));
            }
            checked += 1;
        }
    }
    assert!(mismatches.is_empty(), "{} of {checked} differ:\n{}", mismatches.len(), mismatches.join("\n"));
    assert!(checked >= 600, "only {checked} reference cases found");
}

/// Texts that are one long run of a character class (what a single regex match covers).
fn long_runs(bytes: usize) -> Vec<(&'static str, String)> {
    let run = |unit: &str| unit.repeat(bytes / unit.len());
    vec![
        ("letters", run("a")),
        ("digits", run("7")),
        ("spaces", run(" ")),
        ("newlines", run("\n")),
        ("punctuation", run("!")),
        ("CJK", run("中")),
        ("spaces then a letter", format!("{}x", run(" "))),
    ]
}

#[test]
fn long_runs_of_one_character_class_tokenize_with_every_vocabulary() {
    in_child("long_runs_of_one_character_class_tokenize_with_every_vocabulary", || {
        // 100,000 bytes overflowed an 8 MiB main-thread stack with the std::regex
        // pre-tokenizers (deepseek, falcon, gpt-neox, aquila); 8,000 a 2 MiB server thread.
        let texts = long_runs(100_000);
        for file in vocab_files() {
            let model = load_vocab(&file);
            for (what, text) in &texts {
                // From a thread with a small stack, as a server's worker would call it.
                let tokens = std::thread::scope(|s| {
                    std::thread::Builder::new()
                        .stack_size(256 << 10)
                        .spawn_scoped(s, || model.vocab().tokenize(text, false, false))
                        .unwrap()
                        .join()
                        .unwrap()
                });
                let tokens = tokens.unwrap_or_else(|e| panic!("{} {what}: {e}", file.display()));
                // (WordPiece vocabularies drop whitespace.)
                assert!(!tokens.is_empty() || text.trim().is_empty(), "{} {what}: no tokens", file.display());
            }
        }
    });
}

#[test]
fn long_texts_tokenize_to_the_same_tokens_as_their_short_parts_would_suggest() {
    // The tokenizer thread changes where the work runs, not its result: a long text made of
    // one short text repeated with a separator the pre-tokenizers always split at gives the
    // short text's tokens repeated (for a vocabulary that adds nothing at the start).
    let file = vocab_files().into_iter().find(|f| f.ends_with("ggml-vocab-deepseek-llm.gguf")).unwrap();
    let model = load_vocab(&file);
    let unit = "Hello world, 1234 is a number.\n";
    let one = model.vocab().tokenize(unit, false, false).unwrap();
    let many = model.vocab().tokenize(&unit.repeat(200), false, false).unwrap();
    assert!(unit.len() * 200 > rocm_llama::vocab::INLINE_TOKENIZE_BYTES);
    assert_eq!(many, one.repeat(200));
}
