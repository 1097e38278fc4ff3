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
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GGUF file"));
    let out = bin().args(["synth", "--tokenizer-only", "-o"]).arg(dir.join("t.gguf")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap: --tokenizer-only needs --tokenizer-from");
    let mut synth = bin();
    synth.args(["synth", "--shape", "tiny", "--tokenizer-from"]).arg(&junk).arg("-o").arg(dir.join("t.gguf"));
    let out = synth.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GGUF file"));
    assert!(!dir.join("t.gguf").exists());
    let Some(model) = common::model_path() else { return };
    let out = bin().args(["run", "hi", "--flash-attn", "sometimes", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = bin().args(["run", "hi", "--split-mode", "sideways", "--model"]).arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--split-mode"));
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
    assert!(v[0]["error"].as_str().unwrap().contains("not a GGUF"));
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

#[test]
fn devices_lists_the_cpu() {
    let out = bin().args(["devices", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["backend_devices"].as_array().unwrap().iter().any(|d| d["kind"] == "Cpu"));
    let out = bin().arg("devices").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama.cpp devices"));
}
