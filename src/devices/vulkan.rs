//! The Vulkan loader (`libvulkan.so.1`), opened at run time and asked which physical devices
//! its drivers offer: the answer a user needs when a Vulkan build finds no GPU (no driver
//! installed, only a CPU device such as llvmpipe, a device below Vulkan 1.2).
//!
//! Only core Vulkan 1.0 calls are made (create an instance, list its devices, read their
//! properties, destroy it); any failure is a reason in [`VulkanStatus::error`], never a crash.

use std::ffi::{c_char, c_void, CStr};

/// Library names tried by [`VulkanStatus::probe`].
pub const LIBRARY_NAMES: [&str; 2] = ["libvulkan.so.1", "libvulkan.so"];

/// The Vulkan version ggml's Vulkan backend needs of a device (1.2).
pub const REQUIRED_API: (u32, u32) = (1, 2);

/// One physical device the loader listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VulkanDevice {
    /// The loader's index: what `GGML_VK_VISIBLE_DEVICES` takes.
    pub index: u32,
    /// `deviceName` (`AMD Radeon RX 7900 XTX (RADV NAVI31)`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// `deviceType`: `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub kind: String,
    /// `apiVersion` as `major.minor.patch`.
    pub api_version: String,
    /// PCI vendor id (0x1002 AMD, 0x10de NVIDIA, 0x8086 Intel).
    pub vendor_id: u32,
}

impl VulkanDevice {
    /// Whether ggml's Vulkan backend takes this device by default: GPUs of Vulkan 1.2 or
    /// later (a CPU device only when `GGML_VK_VISIBLE_DEVICES` names it).
    pub fn usable_by_default(&self) -> bool {
        self.kind != "cpu" && api_at_least(&self.api_version, REQUIRED_API)
    }
}

fn api_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// What the Vulkan loader said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VulkanStatus {
    /// The library that was opened, or `None` when none could be.
    pub library: Option<String>,
    /// The devices its drivers offer.
    pub devices: Vec<VulkanDevice>,
    /// Why there are no devices (no loader, no driver, the failing call and its code).
    pub error: Option<String>,
}

// The few Vulkan 1.0 types and calls used here, laid out as vulkan_core.h declares them.
type VkResult = i32;
type VkInstance = *mut c_void;
type VkPhysicalDevice = *mut c_void;
const VK_STRUCTURE_TYPE_APPLICATION_INFO: u32 = 0;
const VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO: u32 = 1;
const VK_ERROR_INCOMPATIBLE_DRIVER: VkResult = -9;
const VK_ERROR_INITIALIZATION_FAILED: VkResult = -3;
const VK_INCOMPLETE: VkResult = 5;

#[repr(C)]
struct VkApplicationInfo {
    s_type: u32,
    p_next: *const c_void,
    application_name: *const c_char,
    application_version: u32,
    engine_name: *const c_char,
    engine_version: u32,
    api_version: u32,
}

#[repr(C)]
struct VkInstanceCreateInfo {
    s_type: u32,
    p_next: *const c_void,
    flags: u32,
    application_info: *const VkApplicationInfo,
    enabled_layer_count: u32,
    enabled_layer_names: *const *const c_char,
    enabled_extension_count: u32,
    enabled_extension_names: *const *const c_char,
}

/// `VkPhysicalDeviceProperties` is 824 bytes on 64-bit targets; only its head is read
/// (apiVersion, driverVersion, vendorID, deviceID, deviceType, deviceName[256]).
#[repr(C, align(8))]
struct PropertiesBuffer([u8; 1024]);

type CreateInstance = unsafe extern "C" fn(*const VkInstanceCreateInfo, *const c_void, *mut VkInstance) -> VkResult;
type DestroyInstance = unsafe extern "C" fn(VkInstance, *const c_void);
type EnumeratePhysicalDevices = unsafe extern "C" fn(VkInstance, *mut u32, *mut VkPhysicalDevice) -> VkResult;
type GetPhysicalDeviceProperties = unsafe extern "C" fn(VkPhysicalDevice, *mut PropertiesBuffer);

fn version_text(v: u32) -> String {
    format!("{}.{}.{}", (v >> 22) & 0x7f, (v >> 12) & 0x3ff, v & 0xfff)
}

fn kind_text(t: u32) -> &'static str {
    match t {
        1 => "integrated",
        2 => "discrete",
        3 => "virtual",
        4 => "cpu",
        _ => "other",
    }
}

impl VulkanStatus {
    /// Opens the Vulkan loader and lists its devices. Never fails: what went wrong is in
    /// [`VulkanStatus::error`].
    pub fn probe() -> VulkanStatus {
        let mut tried = Vec::new();
        for name in LIBRARY_NAMES {
            // SAFETY: opening the Vulkan loader runs its initialisers, which only set up its
            // own state; drivers are opened later, by vkCreateInstance.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Self::of(name, &lib),
                Err(e) => tried.push(format!("{name}: {e}")),
            }
        }
        VulkanStatus {
            library: None,
            devices: Vec::new(),
            error: Some(format!("no Vulkan loader could be opened ({})", tried.join("; "))),
        }
    }

    fn of(name: &str, lib: &libloading::Library) -> VulkanStatus {
        let mut status = VulkanStatus { library: Some(name.to_string()), devices: Vec::new(), error: None };
        // SAFETY: each symbol is looked up with the signature vulkan_core.h declares; the
        // loader exports every Vulkan 1.0 command.
        let calls = unsafe {
            (|| -> Result<_, libloading::Error> {
                Ok((
                    *lib.get::<CreateInstance>(b"vkCreateInstance\0")?,
                    *lib.get::<DestroyInstance>(b"vkDestroyInstance\0")?,
                    *lib.get::<EnumeratePhysicalDevices>(b"vkEnumeratePhysicalDevices\0")?,
                    *lib.get::<GetPhysicalDeviceProperties>(b"vkGetPhysicalDeviceProperties\0")?,
                ))
            })()
        };
        let (create, destroy, enumerate, properties) = match calls {
            Ok(c) => c,
            Err(e) => {
                status.error = Some(format!("{name}: {e}"));
                return status;
            }
        };
        let app_name = c"rocm-llama";
        let app = VkApplicationInfo {
            s_type: VK_STRUCTURE_TYPE_APPLICATION_INFO,
            p_next: std::ptr::null(),
            application_name: app_name.as_ptr(),
            application_version: 0,
            engine_name: app_name.as_ptr(),
            engine_version: 0,
            api_version: (1 << 22) | (REQUIRED_API.1 << 12),
        };
        let info = VkInstanceCreateInfo {
            s_type: VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
            p_next: std::ptr::null(),
            flags: 0,
            application_info: &app,
            enabled_layer_count: 0,
            enabled_layer_names: std::ptr::null(),
            enabled_extension_count: 0,
            enabled_extension_names: std::ptr::null(),
        };
        let mut instance: VkInstance = std::ptr::null_mut();
        // SAFETY: valid create info (no layers or extensions), default allocator, an out pointer.
        let r = unsafe { create(&info, std::ptr::null(), &mut instance) };
        if r != 0 || instance.is_null() {
            status.error = Some(match r {
                VK_ERROR_INCOMPATIBLE_DRIVER => {
                    "vkCreateInstance: no Vulkan driver is installed (VK_ERROR_INCOMPATIBLE_DRIVER): \
                                                 on AMD install Mesa's RADV (mesa-vulkan-drivers)"
                        .to_string()
                }
                VK_ERROR_INITIALIZATION_FAILED => {
                    "vkCreateInstance failed (VK_ERROR_INITIALIZATION_FAILED): a driver could not start".to_string()
                }
                r => format!("vkCreateInstance failed (VkResult {r})"),
            });
            return status;
        }
        let mut count = 0u32;
        // SAFETY: a live instance; a null array asks for the count.
        let r = unsafe { enumerate(instance, &mut count, std::ptr::null_mut()) };
        let mut handles = vec![std::ptr::null_mut(); count.min(64) as usize];
        let mut filled = handles.len() as u32;
        let r = if r == 0 && filled > 0 {
            // SAFETY: `handles` has room for `filled` handles.
            unsafe { enumerate(instance, &mut filled, handles.as_mut_ptr()) }
        } else {
            r
        };
        if r != 0 && r != VK_INCOMPLETE {
            status.error = Some(format!("vkEnumeratePhysicalDevices failed (VkResult {r})"));
        } else {
            for (index, &device) in handles.iter().take(filled as usize).enumerate() {
                let mut buf = PropertiesBuffer([0; 1024]);
                // SAFETY: a device of this instance; the buffer is larger than the struct.
                unsafe { properties(device, &mut buf) };
                let word = |at: usize| u32::from_ne_bytes([buf.0[at], buf.0[at + 1], buf.0[at + 2], buf.0[at + 3]]);
                let name = CStr::from_bytes_until_nul(&buf.0[20..276])
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                status.devices.push(VulkanDevice {
                    index: index as u32,
                    name,
                    kind: kind_text(word(16)).to_string(),
                    api_version: version_text(word(0)),
                    vendor_id: word(8),
                });
            }
            if status.devices.is_empty() {
                status.error = Some("the Vulkan drivers offer no device".into());
            }
        }
        // SAFETY: the instance this function created; nothing else uses it.
        unsafe { destroy(instance, std::ptr::null()) };
        status
    }

    /// Why ggml's Vulkan backend has no device here, when it has none: the loader's error,
    /// or what the devices it lists lack.
    pub fn why_none(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let listed: Vec<String> = self
            .devices
            .iter()
            .map(|d| format!("{}: {} ({}, Vulkan {})", d.index, d.name, d.kind, d.api_version))
            .collect();
        let mut why = format!("the Vulkan loader lists {}", listed.join("; "));
        if self.devices.iter().all(|d| d.kind == "cpu") {
            why.push_str(
                ", CPU devices only, which ggml skips unless GGML_VK_VISIBLE_DEVICES names one \
                 (slower than the CPU backend)",
            );
        } else if !self.devices.iter().any(VulkanDevice::usable_by_default) {
            why.push_str(&format!(", none of Vulkan {}.{} or later", REQUIRED_API.0, REQUIRED_API.1));
        }
        why
    }

    /// One line: `libvulkan.so.1: 2 devices (...)` or `libvulkan.so.1: <error>`.
    pub fn summary(&self) -> String {
        let lib = self.library.as_deref().unwrap_or("Vulkan loader");
        match &self.error {
            Some(e) => format!("{lib}: {e}"),
            None => {
                let names: Vec<String> =
                    self.devices.iter().map(|d| format!("{} {} ({})", d.index, d.name, d.kind)).collect();
                format!("{lib}: {}", names.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(kind: &str, api: &str) -> VulkanDevice {
        VulkanDevice { index: 0, name: "x".into(), kind: kind.into(), api_version: api.into(), vendor_id: 0 }
    }

    #[test]
    fn versions_kinds_and_reasons() {
        assert_eq!(version_text((1 << 22) | (3 << 12) | 230), "1.3.230");
        assert_eq!(kind_text(2), "discrete");
        assert_eq!(kind_text(4), "cpu");
        assert!(device("discrete", "1.3.230").usable_by_default());
        assert!(!device("cpu", "1.3.230").usable_by_default());
        assert!(!device("integrated", "1.1.0").usable_by_default());
        let cpu_only = VulkanStatus {
            library: Some("libvulkan.so.1".into()),
            devices: vec![device("cpu", "1.3.230")],
            error: None,
        };
        assert!(cpu_only.why_none().contains("GGML_VK_VISIBLE_DEVICES"), "{}", cpu_only.why_none());
        let old = VulkanStatus { devices: vec![device("integrated", "1.1.0")], ..cpu_only.clone() };
        assert!(old.why_none().contains("none of Vulkan 1.2 or later"), "{}", old.why_none());
    }

    /// Whatever this machine has (no loader, no driver, llvmpipe, a GPU), the probe answers
    /// without crashing, with devices or a reason.
    #[test]
    fn the_probe_answers_here() {
        let status = VulkanStatus::probe();
        assert!(status.error.is_some() || !status.devices.is_empty(), "{status:?}");
        assert!(!status.summary().is_empty());
    }
}
