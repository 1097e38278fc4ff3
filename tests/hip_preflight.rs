//! The HIP preflight that `.cargo/config.toml` hands to llama.cpp's CMake: a missing ROCm, a
//! too-old HIP, a missing HIP compiler and a ROCM_PATH without device libraries each stop
//! the configure with one message saying what to do. Runs the real file in CMake's script
//! mode against fake ROCm trees (CMake is a build prerequisite, so it is here wherever the
//! crate builds).

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cmake;

mod common;

const PREFLIGHT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/build_support/hip-preflight.cmake");

fn tree(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("rocm-llama-preflight-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    #[cfg(unix)]
    if rel.starts_with("bin/") || rel.contains("/bin/") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Runs the preflight with `GGML_HIP=ON`, this environment and extra `-D` definitions;
/// returns (success, everything it printed).
fn run(cmake: &Path, env: &[(&str, &Path)], defs: &[String]) -> (bool, String) {
    let mut c = Command::new(cmake);
    c.env_clear().env("PATH", "/nonexistent").arg("-DGGML_HIP=ON");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(defs).arg("-P").arg(PREFLIGHT);
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // CMake wraps long messages: compare with the line breaks folded.
    (out.status.success(), text.split_whitespace().collect::<Vec<_>>().join(" "))
}

const HIP_64: &str = "#define HIP_VERSION_MAJOR 6\n#define HIP_VERSION_MINOR 4\n#define HIP_VERSION_PATCH 1\n";

#[test]
fn off_unless_ggml_hip_is_on() {
    let Some(cmake) = cmake() else { return };
    let out = Command::new(&cmake).env("ROCM_PATH", "/nonexistent").arg("-P").arg(PREFLIGHT).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_missing_rocm_names_where_it_looked() {
    let Some(cmake) = cmake() else { return };
    if Path::new("/opt/rocm").exists() || Path::new("/usr/include/hip/hip_version.h").exists() {
        assert!(std::env::var_os("CI").is_none(), "CI's machine has no ROCm install; this one has one");
        eprintln!("SKIPPED: this machine has ROCm, so a missing one cannot be staged");
        return;
    }
    let (ok, text) = run(&cmake, &[("ROCM_PATH", Path::new("/nonexistent/rocm"))], &[]);
    assert!(!ok);
    assert!(text.contains("needs ROCm >= 6.1, but no ROCm was found"), "{text}");
    assert!(text.contains("/nonexistent/rocm, /opt/rocm, /usr"), "{text}");
    assert!(text.contains("HIP_PATH"), "{text}");
}

#[test]
fn an_old_hip_is_refused_with_its_version() {
    let Some(cmake) = cmake() else { return };
    let root = tree("old");
    write(&root, ".info/version", "5.7.1-98\n");
    let (ok, text) = run(&cmake, &[("ROCM_PATH", &root)], &[]);
    assert!(!ok);
    assert!(text.contains("has HIP 5.7") && text.contains("needs HIP >= 6.1"), "{text}");
}

#[test]
fn a_missing_hip_compiler_says_what_to_install() {
    let Some(cmake) = cmake() else { return };
    let root = tree("nocompiler");
    write(&root, "include/hip/hip_version.h", HIP_64);
    let (ok, text) = run(&cmake, &[("HIP_PATH", &root)], &[]);
    assert!(!ok);
    assert!(text.contains("ROCm 6.4 is at") && text.contains("no HIP compiler"), "{text}");
    assert!(text.contains("hipcc") && text.contains("CMAKE_HIP_COMPILER"), "{text}");
    // A compiler named but absent.
    let (ok, text) = run(&cmake, &[("HIP_PATH", &root)], &["-DCMAKE_HIP_COMPILER=/nonexistent/clang++".into()]);
    assert!(!ok);
    assert!(text.contains("`/nonexistent/clang++` (CMAKE_HIP_COMPILER or HIPCXX) does not exist"), "{text}");
}

#[test]
fn hipconfig_finds_a_distribution_s_clang() {
    let Some(cmake) = cmake() else { return };
    let root = tree("debian");
    write(&root, "include/hip/hip_version.h", HIP_64);
    let clang_dir = root.join("lib/llvm-21/bin");
    write(&root, "lib/llvm-21/bin/clang++", "");
    write(&root, "bin/hipconfig", &format!("#!/bin/sh\necho {}\n", clang_dir.display()));
    let (ok, text) = run(&cmake, &[("HIP_PATH", &root)], &[]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("HIP compiler {}/clang++", clang_dir.display())), "{text}");
}

#[test]
fn rocm_path_without_device_libraries_is_explained() {
    let Some(cmake) = cmake() else { return };
    let root = tree("nobitcode");
    write(&root, "include/hip/hip_version.h", HIP_64);
    write(&root, "llvm/bin/clang++", "");
    let (ok, text) = run(&cmake, &[("ROCM_PATH", &root)], &[]);
    assert!(!ok);
    assert!(text.contains("holds no device libraries") && text.contains("HIP_PATH=/usr"), "{text}");
    // AMD's layout with its device libraries passes.
    write(&root, "amdgcn/bitcode/ocml.bc", "");
    let (ok, text) = run(&cmake, &[("ROCM_PATH", &root)], &[]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("ROCm 6.4 at {}", root.display())), "{text}");
}
