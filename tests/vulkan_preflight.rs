//! The Vulkan preflight that `.cargo/config.toml` hands to llama.cpp's CMake (through
//! build_support/preflight.cmake): missing headers, headers too old for the pinned llama.cpp
//! (Debian 12's), a missing glslc, missing SPIR-V headers and a missing loader library each
//! stop the configure with one message saying what to install. Runs the real file in CMake's
//! script mode against fake SDK trees, with the system's prefixes left out.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cmake;

mod common;

const PREFLIGHT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/build_support/preflight.cmake");

/// A fake SDK: `files` are the relative paths to create (glslc executable).
fn sdk(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("rocm-llama-vk-preflight-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (rel, text) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        if rel.starts_with("bin/") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Runs the preflight with GGML_VULKAN=ON and VULKAN_SDK=`sdk`, no system prefixes; returns
/// (success, what it printed with CMake's line wrapping folded).
fn run(cmake: &Path, sdk: &Path) -> (bool, String) {
    let out = Command::new(cmake)
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("VULKAN_SDK", sdk)
        .args(["-DGGML_VULKAN=ON", "-DROCM_LLAMA_VULKAN_SYSTEM_ROOTS=", "-P", PREFLIGHT])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.split_whitespace().collect::<Vec<_>>().join(" "))
}

const NEW_CORE: &str = "#define VK_HEADER_VERSION 309\n#define VK_EXT_layer_settings 1\n";
const OLD_CORE: &str = "#define VK_HEADER_VERSION 239\n";

fn complete() -> Vec<(&'static str, &'static str)> {
    vec![
        ("include/vulkan/vulkan_core.h", NEW_CORE),
        ("include/vulkan/vulkan.hpp", ""),
        ("bin/glslc", "#!/bin/sh\n"),
        ("share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake", ""),
        ("lib/libvulkan.so", ""),
    ]
}

#[test]
fn off_unless_ggml_vulkan_is_on() {
    let Some(cmake) = cmake() else { return };
    let out = Command::new(&cmake).env("VULKAN_SDK", "/nonexistent").arg("-P").arg(PREFLIGHT).output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_complete_sdk_passes_and_each_missing_piece_is_named() {
    let Some(cmake) = cmake() else { return };
    let (ok, text) = run(&cmake, &sdk("complete", &complete()));
    assert!(ok, "{text}");
    assert!(text.contains("(version 309)"), "{text}");

    let without = |name: &str, path: &str| {
        let files: Vec<_> = complete().into_iter().filter(|(p, _)| *p != path).collect();
        let (ok, text) = run(&cmake, &sdk(name, &files));
        assert!(!ok, "{name}: {text}");
        text
    };
    let t = without("no-headers", "include/vulkan/vulkan_core.h");
    assert!(t.contains("needs the Vulkan headers") && t.contains("libvulkan-dev"), "{t}");
    let t = without("no-hpp", "include/vulkan/vulkan.hpp");
    assert!(t.contains("vulkan.hpp"), "{t}");
    let t = without("no-glslc", "bin/glslc");
    assert!(t.contains("needs glslc") && t.contains("apt-get install glslc"), "{t}");
    let t = without("no-spirv", "share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake");
    assert!(t.contains("SPIR-V headers") && t.contains("spirv-headers"), "{t}");
    let t = without("no-loader", "lib/libvulkan.so");
    assert!(t.contains("no libvulkan.so was found"), "{t}");
}

#[test]
fn debian_12_headers_are_refused_with_the_way_out() {
    let Some(cmake) = cmake() else { return };
    let mut files = complete();
    files[0].1 = OLD_CORE;
    let (ok, text) = run(&cmake, &sdk("debian12", &files));
    assert!(!ok, "{text}");
    assert!(text.contains("header version 239") && text.contains("VK_EXT_layer_settings"), "{text}");
    assert!(text.contains("scripts/vulkan/sdk.sh") && text.contains("Debian 13"), "{text}");
}
