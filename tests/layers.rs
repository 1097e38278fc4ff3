//! The dependency rule of `src/`, checked on the sources: each module names only modules of its
//! own layer or a lower one, and no two modules name each other (with one exception, below).
//! One crate rather than a workspace: the rule is this test, which reads every `crate::`
//! path, so it needs no crate boundaries (CONTRIBUTING.md says why).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first. A module may name modules of its own layer and those before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation: no llama.cpp objects",
        &[
            "error",
            "config",
            "build_info",
            "init",
            "gguf",
            "checksum",
            "gbnf",
            "schema",
            "reasoning",
            "tools",
            "threads",
            "accounting",
        ],
    ),
    ("the machine", &["devices", "rpc"]),
    ("the safe llama.cpp layer", &["vocab", "batch", "model", "adapter", "context", "sampler", "memory", "seq_state"]),
    (
        "generation and fitting",
        &["chat", "logprobs", "options", "request", "generate", "session", "draft", "speculative", "fit"],
    ),
    ("embeddings and classification", &["embed", "classify"]),
    ("the engine", &["engine"]),
    ("tools and the server", &["inventory", "pull", "synth", "bench", "server"]),
];

/// Pairs that name each other on purpose: a context carries the samplers attached to its
/// sequences and a sampler samples from a context, as in llama.h.
const MUTUAL: &[(&str, &str)] = &[("context", "sampler")];

/// Folders that only group modules: a file below them is the module its own name says.
const LAYER_FOLDERS: &[&str] = &["llama", "generation", "embedding", "files"];

fn module_of(rel: &Path) -> String {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let in_layer_folder = LAYER_FOLDERS.contains(&parts[0].as_str()) && parts.len() > 1 && parts[1] != "mod.rs";
    let first = if in_layer_folder { &parts[1] } else { &parts[0] };
    first.trim_end_matches(".rs").to_string()
}

/// The modules a source text names through `crate::NAME` or `use crate::{NAME::...}`, outside
/// line comments and its unit tests.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let item = item.trim();
                if item.contains("::") {
                    out.insert(ident(item));
                }
            }
        } else {
            let name = ident(rest);
            if rest[name.len()..].starts_with("::") {
                out.insert(name);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&src).unwrap().to_path_buf();
            if rel.starts_with("bin") || rel == Path::new("lib.rs") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = module_of(&rel);
                if LAYER_FOLDERS.contains(&module.as_str()) {
                    continue; // a layer folder's mod.rs only declares its modules
                }
                let names = named_modules(&std::fs::read_to_string(&path).unwrap());
                graph.entry(module.clone()).or_default().extend(names.into_iter().filter(|n| *n != module));
            }
        }
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = graph().into_keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules missing from LAYERS in tests/layers.rs: {unplaced:?}");
}

#[test]
fn no_module_names_a_higher_layer() {
    let mut wrong = Vec::new();
    for (module, names) in graph() {
        let Some(own) = layer_of(&module) else { continue };
        for name in names {
            if let Some(theirs) = layer_of(&name).filter(|&l| l > own) {
                wrong.push(format!("{module} ({}) names {name} ({})", LAYERS[own].0, LAYERS[theirs].0));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_import_circles() {
    let graph = graph();
    let allowed = |a: &str, b: &str| MUTUAL.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
    // A circle is a path back to where it started; the allowed pairs' edges are left out.
    let mut circles = Vec::new();
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        let mut seen = BTreeSet::new();
        fn walk(
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            seen: &mut BTreeSet<String>,
            start: &str,
            allowed: &dyn Fn(&str, &str) -> bool,
            circles: &mut Vec<String>,
        ) {
            let here = path.last().unwrap().clone();
            for next in graph.get(&here).into_iter().flatten() {
                if allowed(&here, next) {
                    continue;
                }
                if next == start {
                    circles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    path.push(next.clone());
                    walk(graph, path, seen, start, allowed, circles);
                    path.pop();
                }
            }
        }
        walk(&graph, &mut path, &mut seen, start, &allowed, &mut circles);
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_check_reads_paths_as_written() {
    let text = "use crate::{batch::Batch, error::Result};\nuse crate::vocab::Token;\nlet x = crate::rpc::attach();\n// crate::engine::x\nfn f() -> crate::Result<()> {}";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["batch", "error", "rpc", "vocab"]);
}
