//! The `rocm-llama` binary end to end.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rocm-llama"))
}

#[test]
fn default_build_links_llama_cpp_statically() {
    if cfg!(feature = "dynamic-link") || !cfg!(target_os = "linux") {
        return;
    }
    let out = Command::new("ldd").arg(env!("CARGO_BIN_EXE_rocm-llama")).output().expect("ldd runs");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(!libs.contains("libllama") && !libs.contains("libggml"), "{libs}");
    assert!(libs.contains("libc.so"), "{libs}");
}

#[test]
fn info_reports_the_build() {
    let out = bin().args(["info", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["backends"].as_array().unwrap().iter().any(|b| b == "cpu"));
    assert_eq!(v["llama_cpp_sys_version"], "0.1.161");
}

#[test]
fn run_streams_text_and_prints_a_summary() {
    let Some(model) = common::model_path() else { return };
    let out = bin()
        .args([
            "run",
            "The capital of France is",
            "--temp",
            "0",
            "-n",
            "12",
            "--threads",
            "1",
            "--no-progress",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!text.trim().is_empty());
    assert!(err.contains("generated 12 tokens") && err.contains("decode"), "{err}");

    // --json gives the same greedy text plus the summary.
    let out = bin()
        .args(["run", "The capital of France is", "--temp", "0", "-n", "12", "--threads", "1", "--json", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"].as_str().unwrap(), text.trim_end_matches('\n'));
    assert_eq!(v["generated_tokens"], 12);
    assert_eq!(v["stop_reason"], "MaxTokens");
}

/// `--prompt-cache FILE` as llama-cli has it: the second run with the same start computes only
/// what is new; `--prompt-cache-ro` leaves the file as it was; a damaged file is an error that
/// says which flag and what to do.
#[test]
fn prompt_cache_keeps_the_state_between_runs() {
    let Some(model) = common::model_path() else { return };
    let file = std::env::temp_dir().join(format!("rocm-llama-cli-prompt-cache-{}.kv", std::process::id()));
    let run = |prompt: &str, extra: &[&str]| {
        bin()
            .args(["run", prompt, "--temp", "0", "-n", "6", "-t", "1", "--json", "--prompt-cache"])
            .arg(&file)
            .args(extra)
            .arg("-m")
            .arg(&model)
            .output()
            .unwrap()
    };
    let prompt = "A list of the longest rivers in Europe, with their lengths: the Volga,";
    let first = run(prompt, &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(first["cached_prompt_tokens"], 0);
    let saved = std::fs::read(&file).unwrap();

    let longer = format!("{prompt} the Danube,");
    let second = run(&longer, &["--prompt-cache-ro"]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let second: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let (cached, total) = (second["cached_prompt_tokens"].as_u64().unwrap(), second["prompt_tokens"].as_u64().unwrap());
    assert!(cached + 1 >= first["prompt_tokens"].as_u64().unwrap() && cached < total, "{second}");
    assert_eq!(std::fs::read(&file).unwrap(), saved, "--prompt-cache-ro wrote the file");

    let mut damaged = saved.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    let out = run(prompt, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prompt-cache") && err.contains("checksum"), "{err}");
    let _ = std::fs::remove_file(&file);
}

/// `chat` with a base model (the test model has no chat template) says so in one line, with
/// the built-in format it falls back to and what to do instead.
#[test]
fn chat_with_a_base_model_says_what_it_is() {
    let Some(model) = common::model_path() else { return };
    let out = bin()
        .args(["chat", "Name three rivers", "--temp", "0", "-n", "2", "-t", "1", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let note: Vec<&str> = err.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(note.len(), 1, "{err}");
    assert!(
        note[0].contains("no chat template") && note[0].contains("\"gemma\"") && note[0].contains("instruction-tuned")
    );
    // Not with a template given.
    let out = bin()
        .args(["chat", "Hi", "--chat-template", "chatml", "-n", "1", "-t", "1", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("note:"));
}

/// `template` prints the exact prompt a conversation renders to, from the vocabulary alone: a
/// file cut short after its header works; `--tokens` adds the ids `chat` would compute.
#[test]
fn template_prints_the_rendered_prompt() {
    let Some(model) = common::model_path() else { return };
    let messages = r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]"#;
    let out = bin().args(["template", messages, "--tokens", "-m"]).arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"),
        "{stdout}"
    );
    let ids: Vec<i64> = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(ids[0], 2, "BOS first, once");
    assert_eq!(ids.iter().filter(|&&t| t == 2).count(), 1);

    // From standard input, another format, on a copy cut short after its header.
    let cut = std::env::temp_dir().join(format!("rocm-llama-template-cut-{}.gguf", std::process::id()));
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&cut, &bytes[..20_000_000]).unwrap();
    let mut child = bin()
        .args(["template", "--chat-template", "chatml", "-m"])
        .arg(&cut)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), br#"[{"role": "user", "content": "Hi"}]"#).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    let _ = std::fs::remove_file(&cut);

    let out = bin().args(["template", r#"{"role": "user"}"#, "-m"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("messages"));
}

#[test]
fn chat_repl_keeps_the_conversation() {
    let Some(model) = common::model_path() else { return };
    use std::io::Write;
    let mut child = bin()
        .args(["chat", "--temp", "0", "-n", "8", "--threads", "1", "--json", "--model"])
        .arg(&model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello there\nTell me more\n/exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let turns: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(turns.len(), 2);
    // The second turn's prompt holds the first exchange, served from the cache.
    assert!(turns[1]["prompt_tokens"].as_u64() > turns[0]["prompt_tokens"].as_u64());
    assert!(turns[1]["cached_prompt_tokens"].as_u64().unwrap() >= turns[0]["prompt_tokens"].as_u64().unwrap() - 1);
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // The reader is gone before the first write (`rocm-llama info | true`): no panic message.
    let mut child =
        bin().arg("info").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn errors_are_reported_not_crashes() {
    let out = bin().args(["run", "hi", "--model", "/nonexistent/model.gguf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("no such file"));
    let dir = std::env::temp_dir().join(format!("rocm-llama-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a model").unwrap();
    let out = bin().args(["run", "hi", "--model"]).arg(&junk).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid GGUF model"));
    let out = bin().args(["synth", "--tokenizer-only", "-o"]).arg(dir.join("t.gguf")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap: --tokenizer-only needs --tokenizer-from");
    let mut synth = bin();
    synth.args(["synth", "--shape", "tiny", "--tokenizer-from"]).arg(&junk).arg("-o").arg(dir.join("t.gguf"));
    let out = synth.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid GGUF model"));
    assert!(!dir.join("t.gguf").exists());
    let Some(model) = common::model_path() else { return };
    // Bad values of enumerated flags are usage errors (clap's exit code 2) that list the
    // possible values.
    let out = bin().args(["run", "hi", "--flash-attn", "sometimes", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: auto, on, off"), "{out:?}");
    let out = bin().args(["run", "hi", "--split-mode", "sideways", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--split-mode"));
    let out = bin().args(["run", "hi", "-ngl", "gl", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`all` or `auto`"), "{out:?}");
    // A model folder that is not there is an error on stderr.
    let out = bin().args(["models", "--dir", "/nonexistent/models"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/models is not a folder"), "{out:?}");
    // --device (llama.cpp's -dev): a device this build lacks, and the CPU, are refused with
    // what there is; `none` keeps the model on the CPU and runs.
    for (flag, name, says) in
        [("--device", "Vulkan9", "there is no device \"Vulkan9\""), ("-dev", "CPU", "CPU is not a GPU")]
    {
        let out = bin().args(["run", "hi", "-n", "2", flag, name, "--model"]).arg(&model).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && !err.contains("panicked"), "{err}");
    }
    let out = bin().args(["run", "hi", "-n", "2", "--temp", "0", "-dev", "none", "--model"]).arg(&model).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("on CPU"), "{out:?}");
    if rocm_llama::devices::offload_devices(&rocm_llama::devices::backend_devices()).len() == 1 {
        let out = bin().args(["run", "hi", "--split-mode", "none", "--main-gpu", "7", "--model"]).arg(&model).output();
        let out = out.unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("main_gpu 7 does not exist"), "{out:?}");
    }
}

#[test]
fn models_and_show_list_the_model_folder() {
    let Some(model) = common::model_path() else { return };
    let dir = std::env::temp_dir().join(format!("rocm-llama-cli-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&model, dir.join("gemma-3-270m-q4_k_m.gguf")).unwrap();
    std::fs::write(dir.join("broken.gguf"), "nope").unwrap();

    let out = bin().args(["models", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME") && table.contains("gemma3") && table.contains("Q4_K_M"), "{table}");
    assert!(table.contains("broken") && table.contains("unreadable"), "{table}");

    let out = bin().args(["models", "--json", "--dir"]).arg(&dir).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v[0]["error"].as_str().unwrap().contains("not a valid GGUF"));
    assert_eq!(v[1]["info"]["architecture"], "gemma3");

    let out = bin().args(["show", "gemma-3", "--json", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["general.architecture"], "gemma3");
    assert_eq!(v["metadata"]["gemma3.block_count"], 18);
    assert_eq!(v["tensor_count"], 236);

    // --model takes an inventory name.
    let out = bin()
        .env("ROCM_MODEL_DIR", &dir)
        .args(["run", "Hello", "--model", "gemma-3-270m", "-n", "2", "--temp", "0", "--threads", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The flags llama.cpp's and Ollama's users type work as they do there.
#[test]
fn llama_cpp_flags_are_understood() {
    let Some(model) = common::model_path() else { return };
    let dir = std::env::temp_dir().join(format!("rocm-llama-cli-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompt_file = dir.join("prompt.txt");
    std::fs::write(&prompt_file, "The capital of France is").unwrap();
    let greedy = |extra: &[&str]| {
        let out =
            bin().args(["run", "--temp", "0", "-t", "1", "--json", "-m"]).arg(&model).args(extra).output().unwrap();
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let positional = greedy(&["The capital of France is", "-n", "6"]);
    // -p, -f, -ngl, -c, -b, -ub, -fa, -ctk/-ctv, -s: the same greedy text.
    let flags = greedy(&[
        "-p",
        "The capital of France is",
        "-n",
        "6",
        "-ngl",
        "0",
        "-c",
        "512",
        "-b",
        "256",
        "-ub",
        "128",
        "-fa",
        "on",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "-s",
        "7",
    ]);
    let file = greedy(&["-f", prompt_file.to_str().unwrap(), "--predict=6", "--n-gpu-layers=all", "--ctx-size", "512"]);
    assert_eq!(positional["generated_tokens"], 6);
    assert_eq!(positional["text"], file["text"]);
    assert_eq!(flags["generated_tokens"], 6);
    // Without -n, generation runs to its end (an end-of-generation token or the context).
    let unlimited = greedy(&["Say OK.", "-c", "64"]);
    let reason = unlimited["stop_reason"].as_str().unwrap();
    assert!(reason == "Eos" || reason == "ContextFull", "{unlimited}");
    assert!(unlimited["generated_tokens"].as_u64().unwrap() > 0);
    // --ignore-eos: nothing ends it but the context.
    let to_the_end = greedy(&["Say OK.", "-c", "64", "--ignore-eos"]);
    assert_eq!(to_the_end["stop_reason"], "ContextFull", "{to_the_end}");
}

/// More of llama.cpp's command line: a repeated flag takes its last value; -sys, -r, -e,
/// -no-cnv and the sampling flags that map onto the library work; flags with no meaning here
/// are accepted with a one-line note; those that would change the model and are not supported
/// are refused with a reason; -hf downloads (here: fails to, with an error) instead of printing
/// the help.
#[test]
fn more_llama_cpp_flags_map_or_say_why_not() {
    let Some(model) = common::model_path() else { return };
    let run = |extra: &[&str]| {
        bin().args(["run", "--temp", "0", "-t", "1", "--json", "-m"]).arg(&model).args(extra).output().unwrap()
    };
    let json = |out: &std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The last -n wins.
    assert_eq!(json(&run(&["-p", "One, two, three,", "-n", "6", "-n", "3"]))["generated_tokens"], 3);
    // -r stops at the text.
    let v = json(&run(&["-p", "1, 2, 3, 4, 5, 6,", "-n", "20", "-r", ","]));
    assert_eq!(v["stop_reason"], serde_json::json!({"StopString": ","}), "{v}");
    // -e turns \n into a line break.
    let literal = json(&run(&["-p", "x\\n\\n\\n\\ny", "-n", "1"]))["prompt_tokens"].as_u64().unwrap();
    let escaped = json(&run(&["-p", "x\\n\\n\\n\\ny", "-n", "1", "-e"]))["prompt_tokens"].as_u64().unwrap();
    assert!(escaped < literal, "{escaped} tokens escaped, {literal} as written");
    // Sampling flags that map, and an inline grammar.
    let v = json(&run(&[
        "-p",
        "Answer yes or no:",
        "-n",
        "4",
        "--presence-penalty",
        "0.5",
        "--frequency-penalty",
        "0.2",
        "--repeat-last-n",
        "32",
        "--typical",
        "0.9",
        "--dry-multiplier",
        "0.8",
        "--grammar",
        r#"root ::= "yes" | "no""#,
    ]));
    assert!(v["text"] == "yes" || v["text"] == "no", "{v}");
    // Accepted with a note each.
    let out = run(&[
        "-p",
        "Hi",
        "-n",
        "1",
        "--no-mmap",
        "--mlock",
        "--no-warmup",
        "--keep",
        "4",
        "-no-cnv",
        "--samplers",
        "top_k;temp",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for flag in ["--mlock", "--no-warmup", "--keep", "--samplers"] {
        assert!(err.lines().any(|l| l.starts_with("note: ") && l.contains(flag)), "{flag}: {err}");
    }
    // Refused with a reason (exit 1, never the help).
    for (extra, says) in [
        (&["--mirostat", "2"][..], "mirostat"),
        (&["--override-kv", "x=int:1"][..], "--override-kv"),
        (&["-ot", "blk=CPU"][..], "-ot"),
        (&["-cnv"][..], "chat"),
    ] {
        let out = run(&[&["-p", "Hi", "-n", "1"][..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    let out = bin().args(["chat", "Hi", "-no-cnv", "-m"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // -sys is the system prompt.
    let out = bin()
        .args(["chat", "Hi", "-sys", "Be brief.", "-n", "2", "--temp", "0", "-t", "1", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // -hf downloads; with no hub to reach it is an error, not the help.
    let out = bin()
        .args(["run", "Hi", "-n", "1", "-hf", "org/repo:Q4_K_M", "--no-progress"])
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("ROCM_MODEL_DIR", std::env::temp_dir().join(format!("rocm-llama-hf-{}", std::process::id())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("Usage:"), "{err}");
}

#[test]
fn the_default_model_comes_from_the_model_folder() {
    let Some(model) = common::model_path() else { return };
    let dir = std::env::temp_dir().join(format!("rocm-llama-cli-default-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |dir: &std::path::Path| {
        bin()
            .env_remove("ROCM_LLAMA_MODEL")
            .env("ROCM_MODEL_DIR", dir)
            .args(["run", "Hi", "-n", "1", "--temp", "0", "-t", "1", "--json"])
            .output()
            .unwrap()
    };
    let out = run(&dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model"), "{out:?}");
    std::os::unix::fs::symlink(&model, dir.join("only.gguf")).unwrap();
    let out = run(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Two models and neither is the default: the error names both.
    std::os::unix::fs::symlink(&model, dir.join("other.gguf")).unwrap();
    let out = run(&dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only") && err.contains("other") && err.contains("-m NAME"), "{err}");
    // ROCM_LLAMA_MODEL comes before the folder.
    let out = bin()
        .env("ROCM_LLAMA_MODEL", &model)
        .env("ROCM_MODEL_DIR", &dir)
        .args(["run", "Hi", "-n", "1", "--temp", "0", "-t", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn completions_for_each_shell() {
    for (shell, needle) in
        [("bash", "complete -F _rocm__llama"), ("zsh", "#compdef rocm-llama"), ("fish", "complete -c rocm-llama")]
    {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(needle), "{shell}: {}", &script[..script.len().min(200)]);
        assert!(script.contains("n-gpu-layers"), "{shell}");
    }
}

#[test]
fn help_lists_enumerated_values() {
    let out = bin().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in
        ["--flash-attn", "Possible values:", "--cache-type-k", "[possible values: f32, f16, bf16, q8_0", "--ctx-size"]
    {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

/// `bench -o` prints llama-bench's formats: the same tests as Markdown, CSV, JSON and JSONL.
#[test]
fn bench_prints_llama_bench_formats() {
    let model = rocm_llama::synth::tiny_model().unwrap();
    let bench = |format: &str| {
        let out = bin()
            .args(["bench", "-p", "16", "-n", "4", "-d", "0", "-r", "1", "-fa", "off", "--concurrency", "0", "-t", "1"])
            .args(["-o", format, "-m"])
            .arg(&model)
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&bench("json")).unwrap();
    let rows = json.as_array().unwrap();
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert!(tests.contains(&"pp16") && tests.contains(&"tg4"), "{tests:?}");
    let pp = rows.iter().find(|r| r["test"] == "pp16").unwrap();
    assert_eq!((pp["n_prompt"].as_u64(), pp["n_gen"].as_u64()), (Some(16), Some(0)));
    assert!(pp["avg_ts"].as_f64().unwrap() > 0.0);
    assert_eq!(pp["flash_attn"], "off");
    // True values: the layers the load put on a GPU (none in a CPU build), the run's time as
    // its rate says (16 tokens at avg_ts), no invented commit.
    if !rocm_llama::available() {
        assert_eq!(pp["n_gpu_layers"], 0);
    }
    let ns = pp["avg_ns"].as_f64().unwrap();
    let from_rate = 16.0 / pp["avg_ts"].as_f64().unwrap() * 1e9;
    assert!((ns - from_rate).abs() <= from_rate * 1e-6 + 1.0, "{ns} vs {from_rate}");
    assert_eq!(pp["samples_ns"].as_array().unwrap().len(), 1);
    assert_eq!(pp["build_commit"], "unknown");
    assert!(pp["build_source"].as_str().unwrap().starts_with("llama-cpp-sys-2 "));
    let jsonl = bench("jsonl");
    assert_eq!(jsonl.lines().count(), rows.len());
    let csv = bench("csv");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for field in [
        "model_filename",
        "n_prompt",
        "n_gen",
        "n_depth",
        "avg_ns",
        "avg_ts",
        "stddev_ts",
        "n_gpu_layers",
        "flash_attn",
    ] {
        assert!(header.contains(&field), "{field} missing from {header:?}");
    }
    assert_eq!(csv.lines().count(), rows.len() + 1);
    let md = bench("md");
    assert!(md.starts_with("| model | size | params | backend | ngl | fa | test | t/s |"), "{md}");
    assert!(md.contains("| pp16 |"), "{md}");

    // Run as llama-bench is run: -d applies to generation too, and nothing else is added (no
    // engine concurrency unless asked).
    let out = bin()
        .args(["bench", "-p", "16", "-n", "4", "-d", "0,32", "-r", "1", "-t", "1", "--json", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let whole: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &whole["report"];
    let at = |test: &str, depth: u64| {
        report["measurements"].as_array().unwrap().iter().any(|m| m["test"] == test && m["depth"] == depth)
    };
    assert!(at("pp16", 0) && at("pp16", 32) && at("tg4", 0) && at("tg4", 32), "{report}");
    assert_eq!(report["concurrency"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["config"]["repetitions"], 1);
}

/// `-p 0` and `-n 0` skip the single-stream tests (as llama-bench's), leaving the engine's
/// concurrency test alone; with nothing left to measure it is a clear error, not empty rows.
#[test]
fn bench_zero_skips_tests() {
    let model = rocm_llama::synth::tiny_model().unwrap();
    let base = ["bench", "-p", "0", "-n", "0", "-r", "1", "-fa", "on", "-t", "1", "--concurrent-tokens", "4"];
    let out = bin().args(base).args(["--concurrency", "2", "--json", "-m"]).arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let whole: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &whole["report"];
    assert_eq!(report["measurements"].as_array().map(Vec::len), Some(0), "{report}");
    assert_eq!(report["host_overhead_us"].as_array().map(Vec::len), Some(0), "{report}");
    let rows = report["concurrency"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0]["engine_tokens_per_s"].as_f64().unwrap() > 0.0, "{report}");

    // The table: no empty single-stream header, and the engine's settings beside its rows.
    let out = bin()
        .args(base)
        .args(["--concurrency", "2", "--sampling", "host", "--greedy", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(!table.contains("depth"), "{table}");
    assert!(table.contains("engine sampling: host, greedy"), "{table}");

    let out = bin().args(base).args(["--concurrency", "0", "-m"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to measure"), "{err}");
}

#[test]
fn no_color_means_no_escape_codes() {
    // Errors and logs on stderr carry no ANSI escapes when NO_COLOR is set (and none when
    // stderr is not a terminal, as here).
    let out = bin().env("NO_COLOR", "1").args(["-vv", "run", "hi", "-m", "/nonexistent.gguf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.contains(&0x1b), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Ctrl-C while a reply is written stops that reply and the conversation goes on; the
/// process exits 0 when its input ends.
#[test]
fn ctrl_c_stops_the_reply_not_the_chat() {
    let Some(model) = common::model_path() else { return };
    use std::io::{BufRead, Write};
    let mut child = bin()
        .args(["chat", "--temp", "0", "-t", "1", "-n", "1000", "--json", "-m"])
        .arg(&model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A reply of up to 1000 tokens takes far longer than the 3 s before the Ctrl-C.
    stdin.write_all(b"Count from one to ten thousand, one number per line.\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["stop_reason"], "Cancelled", "{first}");
    // The next message is answered.
    stdin.write_all(b"Say hi.\n").unwrap();
    drop(stdin);
    let mut second = String::new();
    stdout.read_line(&mut second).unwrap();
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert!(second["generated_tokens"].as_u64().unwrap() > 0, "{second}");
    assert!(child.wait().unwrap().success());
}

/// A second Ctrl-C (or one while no reply is being written) exits with 130.
#[test]
fn ctrl_c_outside_a_reply_exits() {
    let Some(model) = common::model_path() else { return };
    let mut child = bin()
        .args(["chat", "-t", "1", "-m"])
        .arg(&model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Loaded and waiting for a line once the memory line is on stderr.
    use std::io::BufRead;
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[test]
fn devices_lists_the_cpu() {
    let out = bin().args(["devices", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["backend_devices"].as_array().unwrap().iter().any(|d| d["kind"] == "Cpu"));
    let out = bin().arg("devices").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama.cpp devices"));
}

#[test]
fn tokenize_reads_the_vocabulary_alone() {
    let Some(model) = common::model_path() else { return };
    let out = bin().args(["tokenize", "--json", "Hello world", "--model"]).arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(v["count"], tokens.len());
    assert_eq!(tokens[0]["id"], 2, "gemma's BOS first");
    assert_eq!(tokens[0]["piece"], "<bos>");
    let text: String = tokens[1..].iter().map(|t| t["piece"].as_str().unwrap()).collect();
    assert_eq!(text.replace('▁', " ").trim(), "Hello world");

    // --ids as llama-tokenize prints them (a list); -p and --no-bos as there.
    let out =
        bin().args(["tokenize", "--ids", "--no-bos", "-p", "Hello world", "--model"]).arg(&model).output().unwrap();
    let ids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
    let json_ids: Vec<i64> = tokens[1..].iter().map(|t| t["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, json_ids, "the same tokens without BOS");
    // Lines of `id -> 'piece'` and the count, from a file.
    let file = std::env::temp_dir().join(format!("rocm-llama-tokenize-{}.txt", std::process::id()));
    std::fs::write(&file, "Hello world").unwrap();
    let out = bin().args(["tokenize", "--show-count", "-f"]).arg(&file).arg("--model").arg(&model).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "     2 -> '<bos>'", "{stdout}");
    assert_eq!(lines.last().unwrap(), &format!("Total number of tokens: {}", tokens.len()));
    let _ = std::fs::remove_file(&file);

    // Control-token text is one token, or plain text with --no-parse-special.
    let count = |extra: &[&str]| {
        let out = bin()
            .args(["tokenize", "--ids", "--no-special"])
            .args(extra)
            .arg("--model")
            .arg(&model)
            .arg("<start_of_turn>")
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<i64>>(&out.stdout).unwrap().len()
    };
    assert_eq!(count(&[]), 1);
    assert!(count(&["--no-parse-special"]) > 1);
}

#[test]
fn chat_takes_a_jinja_template_file_and_its_variables() {
    let Some(model) = common::model_path() else { return };
    let templates = common::templates_dir();
    let gemma3 = templates.join("axolotl/gemma3.jinja");
    let chat = |extra: &[&str]| {
        bin()
            .args([
                "chat",
                "Name a colour.",
                "--system",
                "Be brief.",
                "--temp",
                "0",
                "-n",
                "8",
                "--threads",
                "1",
                "--json",
            ])
            .args(extra)
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap()
    };
    // Gemma 3's own Jinja template gives the prompt llama.cpp's built-in format gives, so the
    // same greedy reply.
    let builtin = chat(&[]);
    assert!(builtin.status.success(), "{}", String::from_utf8_lossy(&builtin.stderr));
    let jinja = chat(&["--chat-template", gemma3.to_str().unwrap()]);
    assert!(jinja.status.success(), "{}", String::from_utf8_lossy(&jinja.stderr));
    let text = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["text"].as_str().unwrap().to_string(), v["prompt_tokens"].clone())
    };
    assert_eq!(text(&builtin), text(&jinja));
    // Template variables reach a Jinja template...
    let kw =
        chat(&["--chat-template", gemma3.to_str().unwrap(), "--chat-template-kwargs", r#"{"enable_thinking": false}"#]);
    assert!(kw.status.success(), "{}", String::from_utf8_lossy(&kw.stderr));
    // ...but a built-in format cannot take them, and bad arguments are clear errors.
    for (args, says) in [
        (vec!["--chat-template-kwargs", r#"{"enable_thinking": false}"#], "built-in"),
        (vec!["--chat-template-kwargs", "[1]"], "JSON object"),
        (vec!["--chat-template-kwargs", "{"], "not JSON"),
        (vec!["--chat-template", "no-such-format"], "neither a file nor a built-in format"),
    ] {
        let out = chat(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let bad = std::env::temp_dir().join(format!("rocm-llama-bad-template-{}.jinja", std::process::id()));
    std::fs::write(&bad, "{% for m in messages %}\n{{ m.content }\n").unwrap();
    let out = chat(&["--chat-template", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 2"), "{err}");
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn logprobs_come_with_each_token_in_json() {
    let Some(model) = common::model_path() else { return };
    let out = bin()
        .args([
            "run",
            "The capital of France is",
            "--temp",
            "0",
            "-n",
            "4",
            "--threads",
            "1",
            "--json",
            "--logprobs",
            "3",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4);
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, v["text"].as_str().unwrap());
    for t in tokens {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most probable one.
        assert_eq!(top[0]["id"], t["id"]);
        assert_eq!(top[0]["logprob"], t["logprob"]);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
    // --logprobs needs --json.
    let out = bin().args(["run", "x", "--logprobs", "3", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_schema_flag_constrains_the_output() {
    let Some(model) = common::model_path() else { return };
    let schema = r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["ok", "n"]}"#;
    let file = std::env::temp_dir().join(format!("rocm-llama-schema-{}.json", std::process::id()));
    std::fs::write(&file, schema).unwrap();
    for arg in [schema, file.to_str().unwrap()] {
        let out = bin()
            .args(["run", "JSON:", "-n", "40", "--threads", "1", "--json", "-s", "1", "-j", arg, "--model"])
            .arg(&model)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let reply: serde_json::Value = serde_json::from_str(v["text"].as_str().unwrap()).unwrap();
        assert!(reply["ok"].is_boolean(), "{reply}");
        assert!((1..=9).contains(&reply["n"].as_i64().unwrap()), "{reply}");
    }
    let _ = std::fs::remove_file(&file);
    for (arg, says) in [(r#"{"type": "string", "pattern": "x"}"#, "pattern"), ("{nope", "neither a file nor JSON")] {
        let out = bin().args(["run", "x", "-j", arg, "--model"]).arg(&model).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

/// Runs the binary with `stdin` as standard input.
fn with_input(args: &[&str], model: &std::path::Path, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .args(["--threads", "1", "--no-progress", "--model"])
        .arg(model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn jsonl(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn embed_classify_and_rerank_read_lines_and_write_jsonl() {
    let Some(model) = common::model_path() else { return };
    let v = jsonl(&with_input(&["embed", "--pooling", "mean"], &model, "first text\nsecond text\nthird\n"));
    assert_eq!(v.len(), 3);
    assert_eq!(v[2]["index"], 2);
    let e = v[0]["embedding"].as_array().unwrap();
    let norm: f64 = e.iter().map(|x| x.as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    // JSONL input: strings or objects with "text".
    let v = jsonl(&with_input(&["embed", "--pooling", "last", "--jsonl"], &model, "\"a\"\n{\"text\": \"b\"}\n"));
    assert_eq!(v.len(), 2);
    // The model declares no pooling: a clear error, exit status 1, nothing on stdout.
    let out = with_input(&["embed"], &model, "x\n");
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("declares no pooling"));
    let out = with_input(&["embed", "--pooling", "mean", "--jsonl"], &model, "{\"txt\": 1}\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"), "{}", String::from_utf8_lossy(&out.stderr));

    let v = jsonl(&with_input(
        &["classify", "--labels", "positive,negative", "--chat"],
        &model,
        "I loved it, wonderful!\nTerrible. I want my money back.\n",
    ));
    assert_eq!(v.len(), 2);
    let p: f64 = v[0]["probs"].as_object().unwrap().values().map(|x| x.as_f64().unwrap()).sum();
    assert!((p - 1.0).abs() < 1e-9);
    assert_eq!((v[0]["label"].as_str(), v[1]["label"].as_str()), (Some("positive"), Some("negative")));
    let out = with_input(&["classify", "--labels", "a,a"], &model, "x\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("twice"));

    let reranker = rocm_llama::synth::tiny_reranker().unwrap();
    let v =
        jsonl(&with_input(&["rerank", "--query", "t1 t2", "--n-gpu-layers", "0"], &reranker, "t3 t4\nt5\nt6 t7 t8\n"));
    assert_eq!(v.iter().map(|x| x["index"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2]);
    let out = with_input(&["rerank", "--query", "q"], &model, "d\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("classifier head"));
}

/// `bench-embed` runs its raw-FFI baseline beside the library (the raw vectors are compared
/// with the library's inside the run, which fails if they differ).
#[test]
fn bench_embed_runs_the_raw_baseline() {
    let Some(model) = common::model_path() else { return };
    let out = bin()
        .args(["bench-embed", "--batches", "1,4", "--texts", "8", "--text-tokens", "16", "--classify", "0"])
        .args(["-t", "1", "--json", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["report"]["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(r["texts_per_s"].as_f64().unwrap() > 0.0 && r["raw_texts_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// A command with nothing to drain or cancel (here a long `bench`) ends at once on SIGTERM
/// with the status a shell expects (143): the one signal thread's default.
#[test]
fn sigterm_ends_a_command_at_once() {
    let model = rocm_llama::synth::tiny_model().unwrap();
    let mut child = bin()
        .args(["bench", "-p", "64", "-n", "64", "-r", "1000", "-t", "1", "-o", "json", "-m"])
        .arg(&model)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
}

/// `run --lora`, `--lora-scaled FILE:SCALE` and `--control-vector` (llama.cpp's flags) change
/// the model's distribution; scale 0 is no adapter; bad files and layer ranges are errors
/// naming why. On the tiny synthetic model, through `--json --logprobs`.
#[test]
fn run_takes_lora_adapters_and_control_vectors() {
    use rocm_llama::synth::{self, LoraSpec};
    let model = synth::tiny_model().unwrap();
    let shape = synth::find_shape("tiny").unwrap();
    let dir = std::env::temp_dir().join(format!("rocm-llama-cli-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lora = dir.join("lora.gguf");
    synth::lora_writer(shape, &LoraSpec::default()).unwrap().write_to(&lora).unwrap();
    let cvec = dir.join("cvec.gguf");
    synth::control_vector_writer(shape, &[1, 2, 3], 5, 2.0).write_to(&cvec).unwrap();
    let run = |extra: &[&str]| {
        bin()
            .args(["run", "Hello there", "-n", "3", "--temp", "0", "-t", "1", "--json", "--logprobs", "3", "-m"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap()
    };
    let tokens = |extra: &[&str]| {
        let out = run(extra);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["tokens"].to_string()
    };
    let (l, c) = (lora.to_str().unwrap(), cvec.to_str().unwrap());
    let base = tokens(&[]);
    assert!(base.contains("logprob"), "{base}");
    assert_ne!(tokens(&["--lora", l]), base, "--lora changed nothing");
    assert_eq!(tokens(&["--lora-scaled", &format!("{l}:0")]), base, "scale 0 is no adapter");
    assert_eq!(tokens(&["--lora", &format!("{l}:0")]), base, "--lora FILE:SCALE");
    assert_ne!(tokens(&["--control-vector", c]), base, "--control-vector changed nothing");
    assert_eq!(tokens(&["--control-vector-scaled", &format!("{c}:0")]), base, "strength 0");
    for (extra, needle) in [
        (vec!["--lora", model.to_str().unwrap()], "not a LoRA adapter"),
        (vec!["--lora-scaled", l], "FILE:SCALE"),
        (
            vec!["--control-vector", c, "--control-vector-layer-range", "1", "9"],
            "layers with a control vector are 1 to 3",
        ),
        (vec!["--control-vector-layer-range", "1", "2"], "no --control-vector"),
    ] {
        let out = run(&extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{extra:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --spec-type ngram-simple` and `-md FILE` (llama.cpp's flags): on a prompt whose reply
/// copies from it, the same greedy text as without, with guesses confirmed (`--json`'s
/// summary; the test model drafts for itself); tuning flags without a type, bad lengths and a
/// draft of another vocabulary stop with a reason.
#[test]
fn run_speculates_with_spec_type_ngram_simple() {
    let Some(model) = common::model_path() else { return };
    let prompt = "Paragraph: The old lighthouse stood on the northern cliff, its white tower cracked by a \
                  hundred winters.\nThe same paragraph, copied exactly:\nParagraph: The old lighthouse";
    let run = |extra: &[&str]| {
        bin()
            .args(["run", prompt, "-n", "24", "--temp", "0", "-t", "1", "--json", "-m"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap()
    };
    let json = |extra: &[&str]| -> serde_json::Value {
        let out = run(extra);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = json(&[]);
    let spec = json(&["--spec-type", "ngram-simple", "--draft-max", "8"]);
    let draft = json(&["-md", model.to_str().unwrap(), "--draft-p-min", "0"]);
    assert_eq!(draft["text"], plain["text"]);
    assert!(draft["draft_tokens_accepted"].as_u64().unwrap_or(0) > 5, "{draft}");
    let tiny = rocm_llama::synth::tiny_model().unwrap();
    assert_eq!(spec["text"], plain["text"]);
    let accepted = spec["draft_tokens_accepted"].as_u64().unwrap_or(0);
    assert!(accepted > 5, "{spec}");
    assert_eq!(plain["draft_tokens"].as_u64(), Some(0), "{plain}");
    for (extra, needle) in [
        (vec!["--draft-max", "4"], "need --spec-type"),
        (vec!["--spec-type", "ngram-simple", "--spec-draft-n-max", "0"], "draft_max 0"),
        (vec!["--spec-type", "ngram-simple", "--draft-max", "2", "--draft-min", "3"], "draft_min 3"),
        (vec!["--spec-type", "draft-simple"], "needs a draft model"),
        (vec!["-md", tiny.to_str().unwrap()], "--model-draft"),
    ] {
        let out = run(&extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{extra:?}: {err}");
    }
}
