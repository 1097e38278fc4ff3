// Locating ROCm and reading its HIP version, shared by build.rs and the unit tests
// (src/build_info.rs includes this file under #[cfg(test)]). Pure std, no dependencies.

use std::path::{Path, PathBuf};

/// The oldest HIP that ggml-hip builds with.
pub const MIN_HIP: (u32, u32) = (6, 1);

/// A HIP version found in a ROCm tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HipVersion {
    pub major: u32,
    pub minor: u32,
    /// Where the version was read from.
    pub source: PathBuf,
}

/// Candidate ROCm roots in the order they are tried: `ROCM_PATH`, `HIP_PATH` (and its parent,
/// since HIP_PATH often points at `<rocm>/hip`), then `/opt/rocm`.
pub fn candidate_roots(rocm_path: Option<&str>, hip_path: Option<&str>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for p in [rocm_path, hip_path].into_iter().flatten() {
        if p.is_empty() {
            continue;
        }
        let p = PathBuf::from(p);
        if let Some(parent) = p.parent().filter(|_| p.ends_with("hip")) {
            roots.push(p.clone());
            roots.push(parent.to_path_buf());
        } else {
            roots.push(p);
        }
    }
    roots.push(PathBuf::from("/opt/rocm"));
    roots.dedup();
    roots
}

/// Reads `#define HIP_VERSION_MAJOR n` / `HIP_VERSION_MINOR n` from `include/hip/hip_version.h`,
/// or the first `major.minor` of `.info/version`.
pub fn read_hip_version(root: &Path) -> Option<HipVersion> {
    let header = root.join("include/hip/hip_version.h");
    if let Ok(text) = std::fs::read_to_string(&header) {
        let get = |name: &str| {
            text.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                match (it.next(), it.next(), it.next()) {
                    (Some("#define"), Some(n), Some(v)) if n == name => v.parse::<u32>().ok(),
                    _ => None,
                }
            })
        };
        if let (Some(major), Some(minor)) = (get("HIP_VERSION_MAJOR"), get("HIP_VERSION_MINOR")) {
            return Some(HipVersion { major, minor, source: header });
        }
    }
    let info = root.join(".info/version");
    let text = std::fs::read_to_string(&info).ok()?;
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(HipVersion { major, minor, source: info })
}

/// Finds the first root holding a HIP version and checks it is new enough.
/// The error text names what is missing and how to fix it.
pub fn find_hip(roots: &[PathBuf]) -> Result<(PathBuf, HipVersion), String> {
    for root in roots {
        if let Some(v) = read_hip_version(root) {
            if (v.major, v.minor) < MIN_HIP {
                return Err(format!(
                    "ROCm at {} has HIP {}.{} (read from {}), but llama.cpp's HIP backend needs HIP >= {}.{}. \
                     Install ROCm 6.1 or newer and point ROCM_PATH at it, or build without `--features hip`.",
                    root.display(),
                    v.major,
                    v.minor,
                    v.source.display(),
                    MIN_HIP.0,
                    MIN_HIP.1
                ));
            }
            return Ok((root.clone(), v));
        }
    }
    let tried: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(format!(
        "`--features hip` needs ROCm >= {}.{}, but no ROCm installation was found (looked for \
         include/hip/hip_version.h or .info/version under: {}). Install ROCm (e.g. AMD's `rocm-hip-sdk` \
         package) and set ROCM_PATH to its folder, e.g. `ROCM_PATH=/opt/rocm-6.1.2 cargo build --features hip`.",
        MIN_HIP.0,
        MIN_HIP.1,
        tried.join(", ")
    ))
}
