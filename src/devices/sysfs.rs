//! AMD GPUs from the kernel's KFD topology and DRM sysfs files, without any ROCm tool.
//!
//! Everything is read below a root path (`/` on a real system, a temporary tree in tests).
//! Missing and malformed files become entries in [`SysfsScan::problems`], never a panic.

use std::path::{Path, PathBuf};

/// One GPU node of `/sys/class/kfd/kfd/topology/nodes/*`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AmdGpu {
    /// The KFD node number.
    pub node: u32,
    /// The gfx target, e.g. `gfx1101`.
    pub gfx: String,
    /// The raw `gfx_target_version` (decimal MMmmss).
    pub gfx_target_version: u32,
    /// PCI vendor id (0x1002 for AMD).
    pub vendor_id: u32,
    /// PCI device id.
    pub device_id: u32,
    /// The PCI bus id (`0000:03:00.0`) from the node's `domain` and `location_id`: how a
    /// Vulkan or HIP device of llama.cpp is matched to this card.
    pub pci_bus: Option<String>,
    /// `renderD<minor>` of the DRM device.
    pub render_minor: Option<u32>,
    /// `mem_info_vram_total` in bytes.
    pub vram_total: Option<u64>,
    /// `mem_info_vram_used` in bytes.
    pub vram_used: Option<u64>,
    /// `mem_info_gtt_total` in bytes.
    pub gtt_total: Option<u64>,
    /// An integrated GPU (APU) rather than a discrete card.
    pub integrated: bool,
    /// `product_name`, when the driver provides one.
    pub product_name: Option<String>,
}

impl AmdGpu {
    /// VRAM not in use according to the driver (total - used).
    pub fn vram_free(&self) -> Option<u64> {
        Some(self.vram_total?.saturating_sub(self.vram_used?))
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SysfsScan {
    /// `/dev/kfd` exists (the amdgpu compute interface).
    pub kfd: bool,
    /// GPU nodes, in node order.
    pub gpus: Vec<AmdGpu>,
    /// Files that were missing or malformed.
    pub problems: Vec<String>,
}

/// `gfx_target_version` (decimal MMmmss) to a gfx name: 110001 -> gfx1101, 90010 -> gfx90a.
pub fn gfx_name(version: u32) -> Option<String> {
    if version == 0 {
        return None;
    }
    let major = version / 10_000;
    let minor = (version / 100) % 100;
    let step = version % 100;
    if minor > 15 || step > 15 {
        return None;
    }
    Some(format!("gfx{major}{minor:x}{step:x}"))
}

/// Parses `HSA_OVERRIDE_GFX_VERSION` (`11.0.0`, `10.3.0`, `9.0.10`) to a gfx name.
pub fn override_gfx_name(value: &str) -> Option<String> {
    let mut parts = value.trim().split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    gfx_name(a * 10_000 + b * 100 + c)
}

/// A PCI bus id as ggml writes it (`domain:bus:device.function`, lower-case hex) from KFD's
/// `domain` and `location_id` (`bus << 8 | device << 3 | function`).
pub fn pci_bus_id(domain: u64, location_id: u64) -> String {
    format!("{:04x}:{:02x}:{:02x}.{:x}", domain, (location_id >> 8) & 0xff, (location_id >> 3) & 0x1f, location_id & 7)
}

fn properties(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter_map(|l| l.trim().split_once(char::is_whitespace)).map(|(k, v)| (k, v.trim())).collect()
}

fn read_u64(path: &Path, problems: &mut Vec<String>) -> Option<u64> {
    match std::fs::read_to_string(path) {
        Ok(s) => match s.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                problems.push(format!("{}: not a number ({:?})", path.display(), s.trim()));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            None
        }
    }
}

/// Scans KFD nodes and their DRM devices below `root`.
pub fn scan(root: &Path) -> SysfsScan {
    let mut out = SysfsScan { kfd: root.join("dev/kfd").exists(), ..Default::default() };
    let nodes_dir = root.join("sys/class/kfd/kfd/topology/nodes");
    let entries = match std::fs::read_dir(&nodes_dir) {
        Ok(e) => e,
        Err(e) => {
            if out.kfd || e.kind() != std::io::ErrorKind::NotFound {
                out.problems.push(format!("{}: {e}", nodes_dir.display()));
            }
            return out;
        }
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .collect();
    nodes.sort();
    for (node, dir) in nodes {
        let props_path = dir.join("properties");
        let text = match std::fs::read_to_string(&props_path) {
            Ok(t) => t,
            Err(e) => {
                out.problems.push(format!("{}: {e}", props_path.display()));
                continue;
            }
        };
        let props = properties(&text);
        let get = |k: &str| props.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        let Some(version) = num("gfx_target_version") else {
            out.problems.push(format!("{}: no readable gfx_target_version", props_path.display()));
            continue;
        };
        if version == 0 {
            continue; // a CPU node
        }
        let Some(gfx) = u32::try_from(version).ok().and_then(gfx_name) else {
            out.problems.push(format!("{}: gfx_target_version {version} is not MMmmss", props_path.display()));
            continue;
        };
        let render_minor = num("drm_render_minor").and_then(|m| u32::try_from(m).ok());
        let mut gpu = AmdGpu {
            node,
            gfx,
            gfx_target_version: version as u32,
            vendor_id: num("vendor_id").unwrap_or(0) as u32,
            device_id: num("device_id").unwrap_or(0) as u32,
            pci_bus: num("location_id").map(|loc| pci_bus_id(num("domain").unwrap_or(0), loc)),
            render_minor,
            vram_total: None,
            vram_used: None,
            gtt_total: None,
            integrated: false,
            product_name: None,
        };
        if let Some(minor) = render_minor {
            let dev = root.join(format!("sys/class/drm/renderD{minor}/device"));
            if !dev.exists() {
                out.problems.push(format!("{}: missing (node {node})", dev.display()));
            } else {
                gpu.vram_total = read_u64(&dev.join("mem_info_vram_total"), &mut out.problems);
                gpu.vram_used = read_u64(&dev.join("mem_info_vram_used"), &mut out.problems);
                gpu.gtt_total = read_u64(&dev.join("mem_info_gtt_total"), &mut out.problems);
                gpu.product_name = std::fs::read_to_string(dev.join("product_name"))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty());
                let has_vendor_info = dev.join("mem_info_vram_vendor").exists() || dev.join("board_info").exists();
                // An APU carves a small VRAM window out of system memory and relies on a large GTT.
                let small_vram_big_gtt = match (gpu.vram_total, gpu.gtt_total) {
                    (Some(v), Some(g)) => v <= (2u64 << 30) && g >= 4 * v,
                    _ => false,
                };
                gpu.integrated = !has_vendor_info || small_vram_big_gtt;
            }
        } else {
            out.problems.push(format!("{}: no drm_render_minor", props_path.display()));
        }
        out.gpus.push(gpu);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfx_names() {
        assert_eq!(gfx_name(110001).as_deref(), Some("gfx1101"));
        assert_eq!(gfx_name(110000).as_deref(), Some("gfx1100"));
        assert_eq!(gfx_name(110003).as_deref(), Some("gfx1103"));
        assert_eq!(gfx_name(90010).as_deref(), Some("gfx90a"));
        assert_eq!(gfx_name(90402).as_deref(), Some("gfx942"));
        assert_eq!(gfx_name(100300).as_deref(), Some("gfx1030"));
        assert_eq!(gfx_name(0), None);
        assert_eq!(gfx_name(119999), None);
        assert_eq!(override_gfx_name("11.0.0").as_deref(), Some("gfx1100"));
        assert_eq!(override_gfx_name("10.3.0").as_deref(), Some("gfx1030"));
        assert_eq!(override_gfx_name("9.0.10").as_deref(), Some("gfx90a"));
        assert_eq!(override_gfx_name("11.0"), None);
        assert_eq!(override_gfx_name("eleven"), None);
    }

    #[test]
    fn pci_bus_ids_are_written_as_ggml_writes_them() {
        // bus 0x03, device 0, function 0; bus 0xc1, device 0, function 0; a function on device 2.
        assert_eq!(pci_bus_id(0, 0x300), "0000:03:00.0");
        assert_eq!(pci_bus_id(0, 0xc100), "0000:c1:00.0");
        assert_eq!(pci_bus_id(1, 0x0a11), "0001:0a:02.1");
    }
}
