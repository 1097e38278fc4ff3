//! What GPUs this machine has and what they hold: [`devices`] and [`available`].
//!
//! Two views are matched: AMD GPUs found through the kernel (KFD topology and DRM sysfs,
//! [`sysfs`]), which needs no ROCm tool, and the devices this build of llama.cpp can use
//! (ggml's backend registry). Free VRAM on AMD cards is the lower of the HIP runtime's
//! `hipMemGetInfo` and the driver's `mem_info_vram_total - mem_info_vram_used`:
//! `hipMemGetInfo` over-reports free memory on discrete cards under desktop or other
//! graphics load (llama.cpp issue 24906), and the report says which source was lower.

pub mod hip;
pub mod sysfs;
pub mod vulkan;

use std::ffi::CStr;
use std::path::Path;

use llama_cpp_sys_2 as sys;

pub use hip::HipRuntime;
pub use sysfs::{AmdGpu, SysfsScan};
pub use vulkan::{VulkanDevice, VulkanStatus};

use crate::accounting::gib;

/// A ggml device that lives on another machine: its server, and whether the link to it failed.
pub(crate) struct RemoteDevice {
    pub(crate) server: String,
    pub(crate) failed: bool,
}

/// How [`backend_devices`] tells remote devices from local ones. `devices` sits below
/// [`crate::rpc`] and does not call into it: `rpc` installs this lookup when it attaches its
/// first server, and without it every device is local.
static REMOTE_LOOKUP: std::sync::OnceLock<fn(sys::ggml_backend_dev_t) -> Option<RemoteDevice>> =
    std::sync::OnceLock::new();

/// Installs the lookup of remote devices (once per process; later calls change nothing).
pub(crate) fn set_remote_lookup(lookup: fn(sys::ggml_backend_dev_t) -> Option<RemoteDevice>) {
    let _ = REMOTE_LOOKUP.set(lookup);
}

/// The kind of a ggml backend device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DeviceKind {
    /// The CPU.
    Cpu,
    /// A discrete GPU.
    Gpu,
    /// An integrated GPU sharing host memory.
    IntegratedGpu,
    /// An accelerator (e.g. BLAS).
    Accelerator,
}

/// A device llama.cpp can use in this build (`ggml_backend_dev_*`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendDevice {
    /// Index in ggml's device registry.
    pub index: usize,
    /// Name such as `ROCm0`, `CUDA0`, `CPU`.
    pub name: String,
    /// Description (the GPU's product name, the CPU model).
    pub description: String,
    /// The backend that provides it (`ROCm`, `CUDA`, `CPU`, ...).
    pub backend: String,
    /// Its kind.
    pub kind: DeviceKind,
    /// Free bytes (`hipMemGetInfo` on ROCm, `cudaMemGetInfo` on CUDA, host memory on the CPU).
    pub free: u64,
    /// Total bytes.
    pub total: u64,
    /// For a device on an RPC server ([`crate::rpc`]): the server, `HOST:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The card's PCI bus id (`0000:03:00.0`, lower case) where the backend knows it: the
    /// same card seen through two backends (`ROCm0` and `Vulkan0` in a `hip,vulkan` build)
    /// has the same id, and llama.cpp offloads to the first of them only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_bus: Option<String>,
}

impl BackendDevice {
    /// Whether this device and `other` are the same card reached through two backends (the
    /// same PCI bus id).
    pub fn same_card(&self, other: &BackendDevice) -> bool {
        self.index != other.index && self.pci_bus.is_some() && self.pci_bus == other.pci_bus
    }
}

/// The local devices llama.cpp offloads to by default, in its order: every discrete GPU, or
/// the integrated ones (of one backend) when there is none. A card that a build reaches
/// through two backends (`hip,vulkan`, `cuda,vulkan`) counts once, through the backend
/// registered first (HIP or CUDA before Vulkan), as llama.cpp itself skips the second: see
/// [`same_card_skipped`]. Remote devices ([`crate::rpc`]) are not among them: a model uses
/// those only when its [`LoadConfig::rpc`](crate::LoadConfig::rpc) names their server.
pub fn offload_devices(devices: &[BackendDevice]) -> Vec<&BackendDevice> {
    let local = |kind| devices.iter().filter(move |d| d.kind == kind && d.remote.is_none());
    let mut discrete: Vec<&BackendDevice> = Vec::new();
    for d in local(DeviceKind::Gpu) {
        if !discrete.iter().any(|kept| kept.same_card(d)) {
            discrete.push(d);
        }
    }
    if !discrete.is_empty() {
        return discrete;
    }
    // llama.cpp takes integrated GPUs from the backend of the first one only: an APU seen by
    // two backends would otherwise count twice (and without a PCI id to tell).
    let mut integrated = local(DeviceKind::IntegratedGpu).peekable();
    let Some(backend) = integrated.peek().map(|d| d.backend.clone()) else { return Vec::new() };
    integrated.filter(|d| d.backend == backend).collect()
}

/// The local GPUs llama.cpp leaves out because an earlier backend already has the same card,
/// each with the device it uses instead: `(skipped, used)`.
pub fn same_card_skipped(devices: &[BackendDevice]) -> Vec<(&BackendDevice, &BackendDevice)> {
    let used = offload_devices(devices);
    devices
        .iter()
        .filter(|d| matches!(d.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu) && d.remote.is_none())
        .filter(|d| !used.iter().any(|u| u.index == d.index))
        .filter_map(|d| used.iter().find(|u| u.same_card(d)).map(|u| (d, *u)))
        .collect()
}

/// The devices named by `names` (llama.cpp's `--device`: `Vulkan0`, `ROCm0,ROCm1`, any case;
/// `none` alone for no offloading), in the order named. What
/// [`LoadConfig::devices`](crate::LoadConfig::devices) resolves to.
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a name this build does not
/// have (the message lists those it has), the CPU, a remote device (name its server in
/// [`LoadConfig::rpc`](crate::LoadConfig::rpc) instead), a name given twice, or two names of
/// one card (`ROCm0` and `Vulkan0` of the same PCI bus id: a model must not count its memory
/// twice).
pub fn pick_devices<'a>(devices: &'a [BackendDevice], names: &[String]) -> crate::Result<Vec<&'a BackendDevice>> {
    let bad = |why: String| crate::Error::invalid("devices", why);
    let names: Vec<&str> = names.iter().map(|n| n.trim()).collect();
    if names.len() == 1 && names[0].eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let offerable: Vec<&BackendDevice> = devices
        .iter()
        .filter(|d| matches!(d.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu) && d.remote.is_none())
        .collect();
    let listing = || {
        if offerable.is_empty() {
            "this build has no GPU device here (only the CPU)".to_string()
        } else {
            let names: Vec<String> = offerable.iter().map(|d| format!("{} ({})", d.name, d.description)).collect();
            format!("this build has: {}", names.join(", "))
        }
    };
    let mut picked: Vec<&BackendDevice> = Vec::new();
    for name in names {
        if name.is_empty() {
            return Err(bad("an empty device name".into()));
        }
        if name.eq_ignore_ascii_case("none") {
            return Err(bad("`none` (no offloading) cannot be listed with other devices".into()));
        }
        let Some(d) = devices.iter().find(|d| d.name.eq_ignore_ascii_case(name)) else {
            return Err(bad(format!("there is no device {name:?}: {}", listing())));
        };
        if let Some(server) = &d.remote {
            return Err(bad(format!("{} is on the RPC server {server}: name the server with --rpc instead", d.name)));
        }
        if !offerable.iter().any(|o| o.index == d.index) {
            return Err(bad(format!("{} is not a GPU (use -ngl 0 to keep a model on the CPU): {}", d.name, listing())));
        }
        if picked.iter().any(|p| p.index == d.index) {
            return Err(bad(format!("{} is named twice", d.name)));
        }
        if let Some(p) = picked.iter().find(|p| p.same_card(d)) {
            return Err(bad(format!(
                "{} and {} are the same card (PCI {}) through two backends: name one of them",
                p.name,
                d.name,
                d.pci_bus.as_deref().unwrap_or_default()
            )));
        }
        picked.push(d);
    }
    Ok(picked)
}

/// The devices of ggml's backend registry. Wraps `ggml_backend_dev_count`/`_get`/`_memory`.
pub fn backend_devices() -> Vec<BackendDevice> {
    registry(true)
}

/// The registry's devices without their memory (`free` and `total` 0): asking a remote
/// device's memory is a round trip to its server, which picking devices does not need.
pub(crate) fn backend_devices_unmeasured() -> Vec<BackendDevice> {
    registry(false)
}

fn registry(with_memory: bool) -> Vec<BackendDevice> {
    crate::init::init();
    let text = |p: *const std::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: ggml returns NUL-terminated strings owned by the registry.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: plain registry queries after backend init.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .filter_map(|i| {
            // SAFETY: `i < count`.
            let dev = unsafe { sys::ggml_backend_dev_get(i) };
            if dev.is_null() {
                return None;
            }
            // A device on an RPC server: named by its server; one whose server failed is gone.
            let remote = REMOTE_LOOKUP.get().and_then(|lookup| lookup(dev));
            if remote.as_ref().is_some_and(|r| r.failed) {
                return None;
            }
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: `dev` is a registered device; the out pointers are valid.
            let (name, desc, kind, reg) = unsafe {
                if with_memory {
                    sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
                }
                (
                    sys::ggml_backend_dev_name(dev),
                    sys::ggml_backend_dev_description(dev),
                    sys::ggml_backend_dev_type(dev),
                    sys::ggml_backend_dev_backend_reg(dev),
                )
            };
            // A local device's PCI bus id (its props; a remote one's would be a round trip).
            let pci_bus = if remote.is_none() {
                // SAFETY: the props struct is plain data (integers, pointers, bools) for which
                // all zeroes is a valid value.
                let mut props: sys::ggml_backend_dev_props = unsafe { std::mem::zeroed() };
                // SAFETY: `dev` is a registered device; ggml fills `props`, whose strings are
                // owned by the device, which lives as long as the registry.
                unsafe { sys::ggml_backend_dev_get_props(dev, &mut props) };
                Some(text(props.device_id)).filter(|id| !id.is_empty()).map(|id| id.to_ascii_lowercase())
            } else {
                None
            };
            let backend = if reg.is_null() {
                String::new()
            } else {
                // SAFETY: a registered backend.
                text(unsafe { sys::ggml_backend_reg_name(reg) })
            };
            #[allow(clippy::unnecessary_cast)]
            let kind = match kind as u32 {
                k if k == sys::GGML_BACKEND_DEVICE_TYPE_CPU as u32 => DeviceKind::Cpu,
                k if k == sys::GGML_BACKEND_DEVICE_TYPE_GPU as u32 => DeviceKind::Gpu,
                k if k == sys::GGML_BACKEND_DEVICE_TYPE_IGPU as u32 => DeviceKind::IntegratedGpu,
                _ => DeviceKind::Accelerator,
            };
            Some(BackendDevice {
                index: i,
                name: text(name),
                // ggml describes a remote device by the relay's local address; the server is
                // what a user knows.
                description: remote.as_ref().map_or_else(|| text(desc), |r| format!("device on {}", r.server)),
                backend,
                kind,
                free: free as u64,
                total: total as u64,
                remote: remote.map(|r| r.server),
                pci_bus,
            })
        })
        .collect()
}

/// Whether this build can run on a GPU here (any GPU among the backend devices).
pub fn available() -> bool {
    backend_devices().iter().any(|d| matches!(d.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu))
}

/// The GPU-related environment variables that change what is visible or how it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GpuEnv {
    /// `HIP_VISIBLE_DEVICES`.
    pub hip_visible_devices: Option<String>,
    /// `ROCR_VISIBLE_DEVICES`.
    pub rocr_visible_devices: Option<String>,
    /// `HSA_OVERRIDE_GFX_VERSION`.
    pub hsa_override_gfx_version: Option<String>,
    /// `GGML_CUDA_ENABLE_UNIFIED_MEMORY` (any value, even empty, turns it on).
    pub ggml_cuda_enable_unified_memory: Option<String>,
    /// `GGML_VK_VISIBLE_DEVICES`: the Vulkan devices ggml uses, by the loader's index (it
    /// also admits CPU devices such as llvmpipe, which ggml otherwise skips).
    pub ggml_vk_visible_devices: Option<String>,
    /// `VK_DRIVER_FILES` (or the older `VK_ICD_FILENAMES`): which Vulkan drivers the loader
    /// opens, e.g. RADV's or AMDVLK's ICD file.
    pub vk_driver_files: Option<String>,
}

impl GpuEnv {
    /// Reads them from this process's environment.
    pub fn from_process() -> GpuEnv {
        let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        GpuEnv {
            hip_visible_devices: var("HIP_VISIBLE_DEVICES"),
            rocr_visible_devices: var("ROCR_VISIBLE_DEVICES"),
            hsa_override_gfx_version: var("HSA_OVERRIDE_GFX_VERSION"),
            ggml_cuda_enable_unified_memory: var("GGML_CUDA_ENABLE_UNIFIED_MEMORY"),
            ggml_vk_visible_devices: var("GGML_VK_VISIBLE_DEVICES"),
            vk_driver_files: var("VK_DRIVER_FILES").or_else(|| var("VK_ICD_FILENAMES")),
        }
    }
}

/// Which source gave the free-VRAM figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VramSource {
    /// `hipMemGetInfo` (the lower, or the only one).
    HipMemGetInfo,
    /// ggml's Vulkan backend: the driver's memory budget (`VK_EXT_memory_budget`) where it
    /// has one, else the device-local heap.
    Vulkan,
    /// `mem_info_vram_total - mem_info_vram_used` from sysfs.
    Sysfs,
}

/// Free and total VRAM of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Vram {
    /// Free bytes: the lower of the sources.
    pub free: u64,
    /// Total bytes.
    pub total: u64,
    /// Which source was lower.
    pub source: VramSource,
    /// What the GPU runtime said (HIP's `hipMemGetInfo`, or the Vulkan backend's figure:
    /// [`Vram::runtime`] says which).
    pub runtime_free: Option<u64>,
    /// The runtime that gave [`Vram::runtime_free`].
    pub runtime: VramSource,
    /// What sysfs said.
    pub sysfs_free: Option<u64>,
}

/// Combines the two free-VRAM readings, a GPU runtime's (`(free, total)` from `runtime`) and
/// the driver's sysfs files: the lower wins.
pub fn combine_vram(
    reading: Option<(u64, u64)>,
    runtime: VramSource,
    sysfs_total: Option<u64>,
    sysfs_used: Option<u64>,
) -> Option<Vram> {
    let sysfs_free = match (sysfs_total, sysfs_used) {
        (Some(t), Some(u)) => Some(t.saturating_sub(u)),
        _ => None,
    };
    let total = reading.map(|h| h.1).or(sysfs_total)?;
    let runtime_free = reading.map(|h| h.0);
    let (free, source) = match (runtime_free, sysfs_free) {
        (Some(h), Some(s)) if s < h => (s, VramSource::Sysfs),
        (Some(h), _) => (h, runtime),
        (None, Some(s)) => (s, VramSource::Sysfs),
        (None, None) => return None,
    };
    Some(Vram { free, total, source, runtime_free, runtime, sysfs_free })
}

/// One AMD GPU as the kernel sees it, matched with what HIP and llama.cpp see.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gpu {
    /// Kernel facts.
    pub amd: AmdGpu,
    /// Its HIP device index after ROCR_/HIP_VISIBLE_DEVICES, or `None` when hidden.
    pub hip_index: Option<u32>,
    /// The gfx target ROCm will run: `HSA_OVERRIDE_GFX_VERSION`'s when set, else the native one.
    pub effective_gfx: String,
    /// The llama.cpp device that offloads to this card (`ROCm0` in a HIP build, `Vulkan0` in
    /// a Vulkan build; the first-registered backend's where a build has both).
    pub backend_device: Option<String>,
    /// The card's other llama.cpp devices, which llama.cpp skips unless named
    /// ([`LoadConfig::devices`](crate::LoadConfig::devices)): `Vulkan0` beside `ROCm0`.
    pub other_backend_devices: Vec<String>,
    /// Free and total VRAM.
    pub vram: Option<Vram>,
}

/// What the HIP runtime said when asked for its devices: the answer a user needs when a
/// HIP build finds no GPU ("no ROCm-capable device is detected", a missing `/dev/kfd`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HipStatus {
    /// The library that was opened (`libamdhip64.so.6`, ...), or `None` when none could be.
    pub library: Option<String>,
    /// `hipRuntimeGetVersion` as `major.minor` (HIP encodes it as major * 10^7 + minor * 10^5 + patch).
    pub version: Option<String>,
    /// `hipGetDeviceCount` when it succeeded.
    pub device_count: Option<u32>,
    /// Why there are no devices: the failing call, its code and the runtime's message, or
    /// why the library could not be opened.
    pub error: Option<String>,
}

impl HipStatus {
    /// Opens the HIP runtime and asks it for its devices. Never fails: what went wrong is in
    /// [`HipStatus::error`].
    pub fn probe() -> HipStatus {
        match HipRuntime::load() {
            Ok(rt) => HipStatus::of(&rt),
            Err(e) => HipStatus::unavailable(&e),
        }
    }

    /// No runtime could be opened, for this reason.
    fn unavailable(e: &crate::error::Error) -> HipStatus {
        HipStatus { library: None, version: None, device_count: None, error: Some(e.to_string()) }
    }

    /// Asks an opened runtime for its version and device count.
    pub fn of(rt: &HipRuntime) -> HipStatus {
        let version =
            rt.runtime_version().ok().filter(|v| *v > 0).map(|v| format!("{}.{}", v / 10_000_000, (v / 100_000) % 100));
        let (device_count, error) = match rt.device_count() {
            Ok(0) => (Some(0), Some("hipGetDeviceCount returned 0 devices".to_string())),
            Ok(n) => (Some(n), None),
            Err(e) => (None, Some(e.to_string())),
        };
        HipStatus { library: Some(rt.library().to_string()), version, device_count, error }
    }

    /// One line: `libamdhip64.so (HIP 6.4): <error>` or `... : 2 devices`.
    pub fn summary(&self) -> String {
        let lib = match (&self.library, &self.version) {
            (Some(l), Some(v)) => format!("{l} (HIP {v})"),
            (Some(l), None) => l.clone(),
            (None, _) => "HIP runtime".to_string(),
        };
        match (&self.error, self.device_count) {
            (Some(e), _) => format!("{lib}: {e}"),
            (None, Some(n)) => format!("{lib}: {n} device{}", if n == 1 { "" } else { "s" }),
            (None, None) => lib,
        }
    }
}

/// Everything [`devices`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceReport {
    /// `/dev/kfd` exists.
    pub kfd: bool,
    /// The HIP runtime's own answer, when it was asked: always in a build with the `hip`
    /// feature, otherwise only where the kernel shows AMD GPUs.
    pub hip: Option<HipStatus>,
    /// The Vulkan loader's own answer (its drivers' devices, or why none), asked in a build
    /// with the `vulkan` feature.
    pub vulkan: Option<VulkanStatus>,
    /// AMD GPUs found through sysfs.
    pub gpus: Vec<Gpu>,
    /// Devices this build of llama.cpp can use.
    pub backend_devices: Vec<BackendDevice>,
    /// The environment that shaped the above.
    pub env: GpuEnv,
    /// Things the user should know (overrides, unified memory, hidden devices).
    pub warnings: Vec<String>,
    /// Missing or malformed files, runtime errors.
    pub problems: Vec<String>,
}

/// Parses a `*_VISIBLE_DEVICES` list of indices; entries that are not indices are reported.
fn visible_list(value: &str, what: &str, warnings: &mut Vec<String>) -> Vec<usize> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| match s.parse::<usize>() {
            Ok(i) => Some(i),
            Err(_) => {
                warnings.push(format!("{what}: entry {s:?} is not a device index (UUIDs are not matched here)"));
                None
            }
        })
        .collect()
}

/// Builds the report from its inputs (a sysfs root, the environment, llama.cpp's devices and
/// an optional HIP runtime). [`devices`] calls it with the real ones; tests pass fakes.
pub fn report(
    root: &Path,
    env: &GpuEnv,
    backend_devices: Vec<BackendDevice>,
    hip: Option<&HipRuntime>,
) -> DeviceReport {
    let scan = sysfs::scan(root);
    let mut warnings = Vec::new();
    let mut problems = scan.problems.clone();
    if !scan.kfd && !scan.gpus.is_empty() {
        problems.push("AMD GPU nodes exist but /dev/kfd does not: is the amdgpu driver loaded?".into());
    }

    // ROCR_VISIBLE_DEVICES picks among all GPU nodes; HIP_VISIBLE_DEVICES then indexes what is left.
    let mut order: Vec<usize> = (0..scan.gpus.len()).collect();
    for (value, what) in
        [(&env.rocr_visible_devices, "ROCR_VISIBLE_DEVICES"), (&env.hip_visible_devices, "HIP_VISIBLE_DEVICES")]
    {
        if let Some(v) = value {
            let picks = visible_list(v, what, &mut warnings);
            let mut next = Vec::new();
            for p in picks {
                match order.get(p) {
                    Some(&g) if !next.contains(&g) => next.push(g),
                    Some(_) => {}
                    None => warnings.push(format!("{what}={v}: there is no GPU {p} (only {} visible)", order.len())),
                }
            }
            order = next;
        }
    }

    let override_gfx = env.hsa_override_gfx_version.as_deref().map(|v| (v, sysfs::override_gfx_name(v)));
    if let Some((v, None)) = &override_gfx {
        warnings.push(format!(
            "HSA_OVERRIDE_GFX_VERSION={v:?} is not of the form 11.0.0 and will be ignored or rejected by ROCm"
        ));
    }
    let forced = override_gfx.as_ref().and_then(|(_, g)| g.clone());

    let is_rocm = |d: &BackendDevice| d.backend.eq_ignore_ascii_case("rocm") || d.name.starts_with("ROCm");
    let rocm_devices: Vec<&BackendDevice> = backend_devices.iter().filter(|d| is_rocm(d)).collect();
    let mut gpus = Vec::new();
    for (i, amd) in scan.gpus.iter().enumerate() {
        let hip_index = order.iter().position(|&g| g == i).map(|p| p as u32);
        // The card's llama.cpp devices: by PCI bus id where both sides know it (any backend),
        // else the ROCm device at its HIP index.
        let mut mine: Vec<&BackendDevice> = backend_devices
            .iter()
            .filter(|d| d.remote.is_none() && d.pci_bus.is_some() && d.pci_bus == amd.pci_bus)
            .collect();
        if !mine.iter().any(|d| is_rocm(d)) {
            if let Some(d) = hip_index.and_then(|h| rocm_devices.get(h as usize).copied()) {
                if d.pci_bus.is_none() || d.pci_bus == amd.pci_bus {
                    mine.push(d);
                }
            }
        }
        mine.sort_by_key(|d| d.index);
        let backend = mine.first().copied();
        let (reading, runtime) = match (backend, hip_index, hip) {
            (Some(d), _, _) if d.total > 0 => {
                let runtime = if is_rocm(d) { VramSource::HipMemGetInfo } else { VramSource::Vulkan };
                (Some((d.free, d.total)), runtime)
            }
            (_, Some(h), Some(rt)) => match rt.mem_info(h) {
                Ok(m) => (Some(m), VramSource::HipMemGetInfo),
                Err(e) => {
                    problems.push(format!("GPU {h} ({}): {e}", amd.gfx));
                    (None, VramSource::HipMemGetInfo)
                }
            },
            _ => (None, VramSource::HipMemGetInfo),
        };
        gpus.push(Gpu {
            effective_gfx: forced.clone().unwrap_or_else(|| amd.gfx.clone()),
            backend_device: backend.map(|d| d.name.clone()),
            other_backend_devices: mine.iter().skip(1).map(|d| d.name.clone()).collect(),
            vram: combine_vram(reading, runtime, amd.vram_total, amd.vram_used),
            hip_index,
            amd: amd.clone(),
        });
    }

    if let Some(target) = &forced {
        let visible: Vec<&Gpu> = gpus.iter().filter(|g| g.hip_index.is_some()).collect();
        let mut natives: Vec<&str> = visible.iter().map(|g| g.amd.gfx.as_str()).collect();
        natives.sort();
        natives.dedup();
        if natives.len() > 1 {
            for g in visible.iter().filter(|g| &g.amd.gfx != target) {
                warnings.push(format!(
                    "HSA_OVERRIDE_GFX_VERSION={} forces {} onto every GPU, also GPU {} ({}{}), which is a different \
                     target; hide it with HIP_VISIBLE_DEVICES if it is not meant to run this code",
                    env.hsa_override_gfx_version.as_deref().unwrap_or_default(),
                    target,
                    g.hip_index.unwrap_or_default(),
                    g.amd.gfx,
                    if g.amd.integrated { ", integrated" } else { "" }
                ));
            }
        }
    }
    if let Some(v) = &env.ggml_cuda_enable_unified_memory {
        warnings.push(format!(
            "GGML_CUDA_ENABLE_UNIFIED_MEMORY is set (to {v:?}): llama.cpp turns unified memory on when the variable \
             exists at all, whatever its value; RDNA discrete cards lack XNACK, so unset it unless you mean it"
        ));
    }
    if let Some(v) = &env.ggml_vk_visible_devices {
        if v.split(',').map(str::trim).any(|s| !s.is_empty() && s.parse::<usize>().is_err()) {
            warnings.push(format!(
                "GGML_VK_VISIBLE_DEVICES={v:?} holds an entry that is not a device index: ggml's Vulkan backend \
                 reads the list only up to it"
            ));
        }
    }
    DeviceReport {
        kfd: scan.kfd,
        hip: hip.map(HipStatus::of),
        vulkan: None,
        gpus,
        backend_devices,
        env: env.clone(),
        warnings,
        problems,
    }
}

/// Detects GPUs on this machine: sysfs below `/`, this process's environment, llama.cpp's
/// devices, and the HIP runtime when one can be opened.
///
/// ```
/// let report = rocm_llama::devices();
/// // The CPU is always there; GPUs when the build and the machine have them.
/// assert!(!report.backend_devices.is_empty());
/// print!("{}", report.table());
/// ```
pub fn devices() -> DeviceReport {
    let env = GpuEnv::from_process();
    let root = Path::new("/");
    // A HIP build always asks the runtime it links (its answer explains a missing GPU); other
    // builds only where the kernel shows AMD GPUs.
    let want_hip = cfg!(feature = "hip") || !sysfs::scan(root).gpus.is_empty();
    let hip = want_hip.then(HipRuntime::load);
    let mut r = report(root, &env, backend_devices(), hip.as_ref().and_then(|h| h.as_ref().ok()));
    if let Some(Err(e)) = &hip {
        r.hip = Some(HipStatus::unavailable(e));
    }
    if cfg!(feature = "vulkan") {
        let status = VulkanStatus::probe();
        if let (Some(v), None) = (&env.ggml_vk_visible_devices, &status.error) {
            let n = status.devices.len();
            let beyond: Vec<&str> =
                v.split(',').map(str::trim).filter(|s| s.parse::<usize>().is_ok_and(|i| i >= n)).collect();
            if !beyond.is_empty() {
                r.warnings.push(format!(
                    "GGML_VK_VISIBLE_DEVICES={v:?} names device {} but the Vulkan loader lists {n}: ggml's Vulkan \
                     backend then takes no device at all",
                    beyond.join(", ")
                ));
            }
        }
        r.vulkan = Some(status);
    }
    r
}

impl DeviceReport {
    /// Free and total memory of the device llama.cpp would use first for offloading, or of
    /// the host when there is no GPU: `(free, total, device name)`.
    pub fn primary_memory(&self) -> Option<(u64, u64, String)> {
        if let Some(g) = self.gpus.iter().find(|g| g.backend_device.is_some()) {
            let v = g.vram.as_ref()?;
            return Some((v.free, v.total, g.backend_device.clone().unwrap_or_default()));
        }
        if let Some(d) = offload_devices(&self.backend_devices).first() {
            return Some((d.free, d.total, d.name.clone()));
        }
        self.backend_devices.iter().find(|d| d.kind == DeviceKind::Cpu).map(|d| (d.free, d.total, d.name.clone()))
    }

    /// The GPUs llama.cpp spreads a model's layers over by default, in its order, with their
    /// free memory: `(device name, free bytes)`. Every discrete GPU; integrated GPUs only
    /// when there is no discrete one (llama.cpp's own choice). For an AMD GPU the free memory is the report's (the
    /// lower of HIP's and the driver's figures). Empty in a CPU-only build.
    pub fn split_gpus(&self) -> Vec<(String, u64)> {
        offload_devices(&self.backend_devices).into_iter().map(|d| (d.name.clone(), self.free_of(d))).collect()
    }

    /// What [`DeviceReport::split_gpus`] gives for the devices `names` picks instead
    /// ([`pick_devices`]; [`LoadConfig::devices`](crate::LoadConfig::devices)).
    pub fn named_gpus(&self, names: &[String]) -> crate::Result<Vec<(String, u64)>> {
        Ok(pick_devices(&self.backend_devices, names)?.into_iter().map(|d| (d.name.clone(), self.free_of(d))).collect())
    }

    /// A device's free memory: for an AMD card, the report's (the lower of the runtime's and
    /// the driver's figures), else the backend's.
    fn free_of(&self, d: &BackendDevice) -> u64 {
        self.gpus
            .iter()
            .find(|g| g.backend_device.as_deref() == Some(d.name.as_str()) || g.other_backend_devices.contains(&d.name))
            .and_then(|g| g.vram.as_ref())
            .map_or(d.free, |v| v.free.min(if d.total > 0 { d.free } else { v.free }))
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.gpus.is_empty() {
            out.push_str(&format!("AMD GPUs: none found (/dev/kfd {})\n", if self.kfd { "present" } else { "absent" }));
            if let Some(h) = &self.hip {
                out.push_str(&format!("HIP runtime: {}\n", h.summary()));
            }
        } else {
            out.push_str(&format!(
                "{:<4} {:<5} {:<18} {:<10} {:<28} {:>22} {:<14} {}\n",
                "HIP", "NODE", "GFX", "KIND", "PRODUCT", "VRAM FREE / TOTAL", "FREE FROM", "LLAMA.CPP"
            ));
            for g in &self.gpus {
                let gfx = if g.effective_gfx != g.amd.gfx {
                    format!("{} (as {})", g.amd.gfx, g.effective_gfx)
                } else {
                    g.amd.gfx.clone()
                };
                let (mem, src) = match &g.vram {
                    Some(v) => (
                        format!("{} / {}", gib(v.free), gib(v.total)),
                        match v.source {
                            VramSource::HipMemGetInfo => "hipMemGetInfo",
                            VramSource::Vulkan => "Vulkan",
                            VramSource::Sysfs => "sysfs",
                        },
                    ),
                    None => ("-".into(), "-"),
                };
                out.push_str(&format!(
                    "{:<4} {:<5} {:<18} {:<10} {:<28} {:>22} {:<14} {}\n",
                    g.hip_index.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    g.amd.node,
                    gfx,
                    if g.amd.integrated { "integrated" } else { "discrete" },
                    g.amd.product_name.as_deref().unwrap_or("-").chars().take(28).collect::<String>(),
                    mem,
                    src,
                    g.backend_device.as_deref().unwrap_or("-")
                ));
            }
        }
        out.push_str("\nllama.cpp devices in this build:\n");
        for d in &self.backend_devices {
            out.push_str(&format!(
                "  {:<8} {:<6} {:<15} {:>22}  {}\n",
                d.name,
                d.backend,
                format!("{:?}", d.kind),
                format!("{} / {}", gib(d.free), gib(d.total)),
                d.description
            ));
        }
        let has_rocm = self.backend_devices.iter().any(|d| d.name.starts_with("ROCm"));
        if cfg!(feature = "hip") && !has_rocm {
            out.push_str("  (this build has the hip backend, but it found no AMD GPU: llama.cpp runs on the CPU)\n");
        }
        let has_vulkan = self.backend_devices.iter().any(|d| d.backend.eq_ignore_ascii_case("vulkan"));
        if let (Some(v), false) = (&self.vulkan, has_vulkan) {
            out.push_str(&format!(
                "  (this build has the vulkan backend, but it found no Vulkan GPU: {})\n",
                v.why_none()
            ));
        }
        for (skipped, used) in same_card_skipped(&self.backend_devices) {
            out.push_str(&format!(
                "  {} is the same card as {} (PCI {}): llama.cpp offloads to {}; --device {} picks {} instead\n",
                skipped.name,
                used.name,
                used.pci_bus.as_deref().unwrap_or_default(),
                used.name,
                skipped.name,
                skipped.backend
            ));
        }
        let split = self.split_gpus();
        if !split.is_empty() {
            let names: Vec<&str> = split.iter().map(|(n, _)| n.as_str()).collect();
            if split.len() > 1 {
                let names = names.join(", ");
                out.push_str(&format!("\na model's layers are split over: {names} (one GPU: --split-mode none)\n"));
            } else {
                out.push_str(&format!("\nmodels are offloaded to: {}\n", names[0]));
            }
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        for p in &self.problems {
            out.push_str(&format!("note: {p}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_free_figure_wins() {
        let gib = 1u64 << 30;
        let v =
            combine_vram(Some((15 * gib, 16 * gib)), VramSource::HipMemGetInfo, Some(16 * gib), Some(4 * gib)).unwrap();
        assert_eq!((v.free, v.source), (12 * gib, VramSource::Sysfs));
        let v = combine_vram(Some((10 * gib, 16 * gib)), VramSource::HipMemGetInfo, Some(16 * gib), Some(gib)).unwrap();
        assert_eq!((v.free, v.source), (10 * gib, VramSource::HipMemGetInfo));
        let v = combine_vram(None, VramSource::Vulkan, Some(16 * gib), Some(gib)).unwrap();
        assert_eq!((v.free, v.total, v.source), (15 * gib, 16 * gib, VramSource::Sysfs));
        assert_eq!(combine_vram(None, VramSource::Vulkan, None, None), None);
        assert_eq!(combine_vram(None, VramSource::Vulkan, Some(gib), None), None);
    }

    #[test]
    fn hip_status_says_why_there_is_no_gpu() {
        let none = HipStatus {
            library: Some("libamdhip64.so".into()),
            version: Some("6.4".into()),
            device_count: None,
            error: Some("hipGetDeviceCount failed: no ROCm-capable device is detected (100)".into()),
        };
        assert_eq!(
            none.summary(),
            "libamdhip64.so (HIP 6.4): hipGetDeviceCount failed: no ROCm-capable device is detected (100)"
        );
        let two = HipStatus { error: None, device_count: Some(2), ..none.clone() };
        assert_eq!(two.summary(), "libamdhip64.so (HIP 6.4): 2 devices");
        let unloadable =
            HipStatus { library: None, version: None, device_count: None, error: Some("not found".into()) };
        assert_eq!(unloadable.summary(), "HIP runtime: not found");
    }

    #[test]
    fn the_cpu_is_always_a_backend_device() {
        let devs = backend_devices();
        let cpu = devs.iter().find(|d| d.kind == DeviceKind::Cpu).expect("a CPU device");
        assert!(cpu.total > 0 && cpu.free <= cpu.total, "{cpu:?}");
    }
}
