//! Checks GPU toolchains before llama.cpp's long CMake build starts, and records build
//! facts that `rocm_llama::build_info()` reports at run time.

#[allow(dead_code)]
mod rocm {
    include!("build_support/rocm.rs");
}

use std::env;

fn main() {
    for var in [
        "ROCM_PATH",
        "HIP_PATH",
        "CMAKE_HIP_ARCHITECTURES",
        "CMAKE_CUDA_ARCHITECTURES",
        "AMDGPU_TARGETS",
        "GPU_TARGETS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build_support/rocm.rs");

    let feature = |name: &str| env::var_os(format!("CARGO_FEATURE_{name}")).is_some();
    let mut backends = vec!["cpu"];
    let mut gpu_targets = String::new();
    let mut hip_version = String::new();

    if feature("HIP") {
        backends.push("hip");
        let roots = rocm::candidate_roots(env::var("ROCM_PATH").ok().as_deref(), env::var("HIP_PATH").ok().as_deref());
        match rocm::find_hip(&roots) {
            Ok((root, v)) => {
                hip_version = format!("{}.{}", v.major, v.minor);
                // llama.cpp's CMake finds HIP through ROCM_PATH / CMAKE_PREFIX_PATH.
                println!("cargo:warning=rocm-llama: using ROCm at {} (HIP {hip_version})", root.display());
            }
            Err(msg) => {
                eprintln!("error: {msg}");
                println!("cargo:warning={msg}");
                std::process::exit(1);
            }
        }
        gpu_targets = env::var("CMAKE_HIP_ARCHITECTURES")
            .or_else(|_| env::var("AMDGPU_TARGETS"))
            .or_else(|_| env::var("GPU_TARGETS"))
            .unwrap_or_default();
    }
    if feature("CUDA") {
        backends.push("cuda");
        if gpu_targets.is_empty() {
            gpu_targets = env::var("CMAKE_CUDA_ARCHITECTURES").unwrap_or_else(|_| "llama.cpp default".into());
        }
    }
    if feature("VULKAN") {
        backends.push("vulkan");
    }
    let linkage = if feature("DYNAMIC_LINK") { "dynamic" } else { "static" };

    println!("cargo:rustc-env=ROCM_LLAMA_BACKENDS={}", backends.join(","));
    println!("cargo:rustc-env=ROCM_LLAMA_GPU_TARGETS={gpu_targets}");
    println!("cargo:rustc-env=ROCM_LLAMA_HIP_VERSION={hip_version}");
    println!("cargo:rustc-env=ROCM_LLAMA_LINKAGE={linkage}");
    println!("cargo:rustc-env=ROCM_LLAMA_TARGET={}", env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=ROCM_LLAMA_TARGET_FEATURES={}", env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default());
}
