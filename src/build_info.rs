//! What this binary was built with: [`build_info`].

use std::ffi::CStr;

use llama_cpp_sys_2 as sys;

/// Facts recorded at build time (by `build.rs`) and read from llama.cpp at run time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildInfo {
    /// This crate's version.
    pub version: &'static str,
    /// Backends: `cpu` plus any of `hip`, `cuda`, `vulkan`. Those compiled in; in a
    /// `dynamic` build, those of the llama.cpp libraries this process loaded (the same binary
    /// runs on whichever shared libraries it finds).
    pub backends: Vec<&'static str>,
    /// The pinned llama-cpp-sys-2 crate that carries llama.cpp.
    pub llama_cpp_sys_version: &'static str,
    /// llama.cpp's own version string (`llama_version`).
    pub llama_cpp_version: String,
    /// GPU targets compiled for (HIP gfx names or CUDA architectures), empty for CPU builds.
    pub gpu_targets: Vec<String>,
    /// HIP version found at build time (HIP builds only).
    pub hip_version: Option<&'static str>,
    /// `static` (llama.cpp linked in) or `dynamic` (shared libllama/libggml).
    pub linkage: &'static str,
    /// The Rust target triple.
    pub target: &'static str,
    /// CPU features llama.cpp uses (`llama_print_system_info`).
    pub cpu_features: String,
}

/// Reports how this library was built. Wraps `llama_version` and `llama_print_system_info`.
pub fn build_info() -> BuildInfo {
    crate::init::init();
    // SAFETY: both return static NUL-terminated strings (or null, handled).
    let (version, system) = unsafe { (sys::llama_version(), sys::llama_print_system_info()) };
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: non-null static C string from llama.cpp.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_string()
        }
    };
    let split = |s: &'static str| s.split([',', ';']).filter(|x| !x.is_empty()).collect::<Vec<_>>();
    BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        backends: if env!("ROCM_LLAMA_LINKAGE") == "dynamic" {
            loaded_backends()
        } else {
            split(env!("ROCM_LLAMA_BACKENDS"))
        },
        llama_cpp_sys_version: "0.1.161",
        llama_cpp_version: text(version),
        gpu_targets: split(env!("ROCM_LLAMA_GPU_TARGETS")).into_iter().map(String::from).collect(),
        hip_version: Some(env!("ROCM_LLAMA_HIP_VERSION")).filter(|v| !v.is_empty()),
        linkage: env!("ROCM_LLAMA_LINKAGE"),
        target: env!("ROCM_LLAMA_TARGET"),
        cpu_features: cpu_features(&text(system)),
    }
}

/// The backends registered by the llama.cpp libraries in this process, by this crate's
/// feature names (ggml registers HIP's as `ROCm`).
fn loaded_backends() -> Vec<&'static str> {
    let mut out = vec!["cpu"];
    // SAFETY: registry queries after backend init; names are static NUL-terminated strings.
    let n = unsafe { sys::ggml_backend_reg_count() };
    for i in 0..n {
        // SAFETY: `i < count`; a null registry or name is skipped.
        let name = unsafe {
            let reg = sys::ggml_backend_reg_get(i);
            if reg.is_null() {
                continue;
            }
            let name = sys::ggml_backend_reg_name(reg);
            if name.is_null() {
                continue;
            }
            CStr::from_ptr(name).to_bytes()
        };
        let ours = match name {
            b"CUDA" => "cuda",
            b"ROCm" | b"HIP" => "hip",
            b"Vulkan" => "vulkan",
            _ => continue,
        };
        if !out.contains(&ours) {
            out.push(ours);
        }
    }
    out
}

/// Keeps the `NAME = 1` entries of llama.cpp's system-info line.
fn cpu_features(system_info: &str) -> String {
    system_info
        .split('|')
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            let k = k.rsplit(':').next().unwrap_or(k);
            (v.trim() == "1").then(|| k.trim().to_string())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(dead_code)]
mod rocm_probe {
    include!("../build_support/rocm.rs");
}

#[cfg(test)]
mod tests {
    use super::rocm_probe::*;
    use super::*;
    use std::path::PathBuf;

    fn fake_rocm(name: &str, header: Option<&str>, info: Option<&str>) -> PathBuf {
        let root = std::env::temp_dir().join(format!("rocm-llama-fake-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("include/hip")).unwrap();
        std::fs::create_dir_all(root.join(".info")).unwrap();
        if let Some(h) = header {
            std::fs::write(root.join("include/hip/hip_version.h"), h).unwrap();
        }
        if let Some(i) = info {
            std::fs::write(root.join(".info/version"), i).unwrap();
        }
        root
    }

    #[test]
    fn build_info_reports_cpu_and_llama_version() {
        let info = build_info();
        assert!(info.backends.contains(&"cpu"));
        assert!(!info.llama_cpp_version.is_empty());
        assert_eq!(info.linkage, if cfg!(feature = "dynamic-link") { "dynamic" } else { "static" });
    }

    #[test]
    fn cpu_features_keep_enabled_flags() {
        assert_eq!(cpu_features("CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | REPACK = 1 |"), "SSE3 AVX REPACK");
    }

    #[test]
    fn hip_version_from_header_or_info() {
        let r = fake_rocm("hdr", Some("#define HIP_VERSION_MAJOR 6\n#define HIP_VERSION_MINOR 2\n"), None);
        let v = read_hip_version(&r).unwrap();
        assert_eq!((v.major, v.minor), (6, 2));
        let r = fake_rocm("info", None, Some("6.1.2-119\n"));
        assert_eq!(read_hip_version(&r).map(|v| (v.major, v.minor)), Some((6, 1)));
        let r = fake_rocm("none", None, Some("garbage"));
        assert_eq!(read_hip_version(&r), None);
    }

    #[test]
    fn old_or_missing_rocm_fails_with_a_fix() {
        let old = fake_rocm("old", None, Some("5.7.1"));
        let err = find_hip(&[old]).unwrap_err();
        assert!(err.contains("HIP 5.7") && err.contains(">= 6.1") && err.contains("ROCM_PATH"), "{err}");
        let err = find_hip(&[PathBuf::from("/nonexistent/rocm")]).unwrap_err();
        assert!(err.contains("no ROCm installation") && err.contains("/nonexistent/rocm"), "{err}");
        let ok = fake_rocm("ok", Some("#define HIP_VERSION_MAJOR 6\n#define HIP_VERSION_MINOR 4\n"), None);
        assert_eq!(find_hip(std::slice::from_ref(&ok)).unwrap().0, ok);
    }

    #[test]
    fn roots_follow_env_order() {
        let roots = candidate_roots(Some("/a/rocm"), Some("/b/rocm/hip"));
        assert_eq!(
            roots,
            vec![
                PathBuf::from("/a/rocm"),
                PathBuf::from("/b/rocm/hip"),
                PathBuf::from("/b/rocm"),
                PathBuf::from("/opt/rocm")
            ]
        );
    }
}
