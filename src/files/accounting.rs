//! Memory accounting: what a model and its contexts hold on each device, from llama.cpp's own
//! buffer reports, and this process's totals and peak.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in one named llama.cpp buffer (`CPU_Mapped`, `ROCm0`, `CUDA0`, `CUDA_Host`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Buffer {
    /// llama.cpp's buffer (type) name.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
}

impl Buffer {
    /// Whether the buffer lives in host memory (CPU buffers and pinned `*_Host` buffers).
    pub fn is_host(&self) -> bool {
        is_host_buffer(&self.name)
    }
}

/// Whether a buffer name denotes host memory.
pub fn is_host_buffer(name: &str) -> bool {
    name.starts_with("CPU") || name.ends_with("_Host") || name.eq_ignore_ascii_case("host")
}

/// What one model (weights) or context (KV cache, compute and output buffers) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryBreakdown {
    /// Weight buffers.
    pub weights: Vec<Buffer>,
    /// KV cache buffers.
    pub kv: Vec<Buffer>,
    /// Compute (scratch) and output buffers.
    pub compute: Vec<Buffer>,
}

fn sum(bufs: &[Buffer], host: Option<bool>) -> u64 {
    bufs.iter().filter(|b| host.is_none_or(|h| b.is_host() == h)).map(|b| b.bytes).sum()
}

impl MemoryBreakdown {
    /// Parses llama.cpp's "`<name>` model/KV/compute/output buffer size = `<x>` MiB" log lines.
    pub fn from_log(lines: &[String]) -> MemoryBreakdown {
        let mut m = MemoryBreakdown::default();
        for line in lines {
            let Some((head, size)) = line.split_once(" buffer size =") else { continue };
            let Some(mib) = size.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else { continue };
            let bytes = (mib * 1024.0 * 1024.0).round() as u64;
            let mut words = head.rsplit(char::is_whitespace).filter(|w| !w.is_empty());
            let (Some(kind), Some(name)) = (words.next(), words.next()) else { continue };
            let buf = Buffer { name: name.trim_end_matches(':').to_string(), bytes };
            let list = match kind {
                "model" => &mut m.weights,
                "KV" => &mut m.kv,
                "compute" | "output" => &mut m.compute,
                _ => continue,
            };
            match list.iter_mut().find(|b| b.name == buf.name) {
                Some(b) => b.bytes += buf.bytes,
                None => list.push(buf),
            }
        }
        m
    }

    /// Adds another breakdown (e.g. a context's to its model's).
    pub fn merge(&mut self, other: &MemoryBreakdown) {
        for (mine, theirs) in
            [(&mut self.weights, &other.weights), (&mut self.kv, &other.kv), (&mut self.compute, &other.compute)]
        {
            for b in theirs {
                match mine.iter_mut().find(|m| m.name == b.name) {
                    Some(m) => m.bytes += b.bytes,
                    None => mine.push(b.clone()),
                }
            }
        }
    }

    /// Weight bytes (all devices).
    pub fn weight_bytes(&self) -> u64 {
        sum(&self.weights, None)
    }
    /// KV cache bytes.
    pub fn kv_bytes(&self) -> u64 {
        sum(&self.kv, None)
    }
    /// Compute and output buffer bytes.
    pub fn compute_bytes(&self) -> u64 {
        sum(&self.compute, None)
    }
    /// Bytes on GPUs (not host buffers).
    pub fn device_bytes(&self) -> u64 {
        sum(&self.weights, Some(false)) + sum(&self.kv, Some(false)) + sum(&self.compute, Some(false))
    }
    /// Bytes in host memory.
    pub fn host_bytes(&self) -> u64 {
        sum(&self.weights, Some(true)) + sum(&self.kv, Some(true)) + sum(&self.compute, Some(true))
    }
    /// Everything.
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes() + self.kv_bytes() + self.compute_bytes()
    }

    /// One line like `weights 4.6 GiB on ROCm0, KV 0.5 GiB, compute 0.3 GiB` (the weights alone
    /// while no context has been made).
    pub fn summary(&self) -> String {
        let where_ = |bufs: &[Buffer]| {
            let mut names: Vec<&str> = bufs.iter().filter(|b| b.bytes > 0).map(|b| b.name.as_str()).collect();
            names.dedup();
            if names.is_empty() {
                String::new()
            } else {
                format!(" on {}", names.join("+"))
            }
        };
        if self.kv.is_empty() && self.compute.is_empty() {
            return format!("weights {}{}", gib(self.weight_bytes()), where_(&self.weights));
        }
        format!(
            "weights {}{}, KV {}{}, compute {}{}",
            gib(self.weight_bytes()),
            where_(&self.weights),
            gib(self.kv_bytes()),
            where_(&self.kv),
            gib(self.compute_bytes()),
            where_(&self.compute)
        )
    }
}

/// Formats bytes as GiB (or MiB below 1 GiB).
pub fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

static DEVICE_NOW: AtomicU64 = AtomicU64::new(0);
static DEVICE_PEAK: AtomicU64 = AtomicU64::new(0);
static HOST_NOW: AtomicU64 = AtomicU64::new(0);

/// GPU and host memory held by this process's models and contexts (llama.cpp's buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    /// Bytes on GPUs now.
    pub device_bytes: u64,
    /// The most GPU bytes held at once since the process started.
    pub peak_device_bytes: u64,
    /// Bytes of llama.cpp buffers in host memory now (mapped weights included).
    pub host_bytes: u64,
}

/// This process's totals, like go-mlx's active/peak memory.
pub fn process_memory() -> ProcessMemory {
    ProcessMemory {
        device_bytes: DEVICE_NOW.load(Ordering::SeqCst),
        peak_device_bytes: DEVICE_PEAK.load(Ordering::SeqCst),
        host_bytes: HOST_NOW.load(Ordering::SeqCst),
    }
}

/// Records a breakdown as allocated (`true`) or freed (`false`).
pub(crate) fn account(b: &MemoryBreakdown, allocated: bool) {
    let (dev, host) = (b.device_bytes(), b.host_bytes());
    if allocated {
        let now = DEVICE_NOW.fetch_add(dev, Ordering::SeqCst) + dev;
        DEVICE_PEAK.fetch_max(now, Ordering::SeqCst);
        HOST_NOW.fetch_add(host, Ordering::SeqCst);
    } else {
        let _ = DEVICE_NOW.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_sub(dev)));
        let _ = HOST_NOW.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| Some(v.saturating_sub(host)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_cpp_buffer_lines() {
        let lines: Vec<String> = [
            "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB",
            "load_tensors:   CPU_REPACK model buffer size =    12.66 MiB",
            "load_tensors:        ROCm0 model buffer size =  4403.50 MiB",
            "llama_context:        CPU  output buffer size =     1.00 MiB",
            "llama_kv_cache:        ROCm0 KV buffer size =     3.00 MiB",
            "llama_kv_cache:        ROCm0 KV buffer size =    15.00 MiB",
            "sched_reserve:      ROCm0 compute buffer size =   521.53 MiB",
            "sched_reserve:  ROCm_Host compute buffer size =    10.01 MiB",
            "something else entirely",
            "broken: X model buffer size = lots MiB",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = MemoryBreakdown::from_log(&lines);
        assert_eq!(m.weights.len(), 3);
        assert_eq!(m.kv, vec![Buffer { name: "ROCm0".into(), bytes: 18 * 1024 * 1024 }]);
        assert_eq!(m.compute.len(), 3);
        let mib = |x: f64| (x * 1048576.0).round() as u64;
        assert_eq!(m.weight_bytes(), mib(235.16) + mib(12.66) + mib(4403.50));
        assert_eq!(m.device_bytes(), mib(4403.50) + mib(18.0) + mib(521.53));
        assert_eq!(m.host_bytes(), mib(235.16) + mib(12.66) + mib(1.0) + mib(10.01));
        let s = m.summary();
        assert!(s.starts_with("weights 4.5 GiB on CPU_Mapped+CPU_REPACK+ROCm0, KV 18 MiB on ROCm0"), "{s}");
        let weights_only = MemoryBreakdown { weights: m.weights.clone(), ..Default::default() };
        assert_eq!(weights_only.summary(), "weights 4.5 GiB on CPU_Mapped+CPU_REPACK+ROCm0");
    }

    #[test]
    fn host_buffer_names() {
        for h in ["CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "ROCm_Host"] {
            assert!(is_host_buffer(h), "{h}");
        }
        for d in ["ROCm0", "CUDA1", "Vulkan0"] {
            assert!(!is_host_buffer(d), "{d}");
        }
    }
}
