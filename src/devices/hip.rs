//! The HIP runtime (`libamdhip64`), opened at run time: free and total VRAM per device from
//! `hipMemGetInfo`, in any build of this crate and without linking ROCm.
//!
//! With no AMD GPU (or no `/dev/kfd`) the runtime loads but its calls fail: that is a typed
//! [`Error::Hip`], never a crash.

use std::ffi::{c_char, c_int, CStr};

use crate::error::{Error, Result};

type HipError = c_int;
type GetDeviceCount = unsafe extern "C" fn(*mut c_int) -> HipError;
type SetDevice = unsafe extern "C" fn(c_int) -> HipError;
type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> HipError;
type RuntimeGetVersion = unsafe extern "C" fn(*mut c_int) -> HipError;
type GetErrorString = unsafe extern "C" fn(HipError) -> *const c_char;

/// Library names tried by [`HipRuntime::load`], newest first.
pub const LIBRARY_NAMES: [&str; 4] = ["libamdhip64.so", "libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5"];

/// An opened HIP runtime.
pub struct HipRuntime {
    name: String,
    get_device_count: GetDeviceCount,
    set_device: SetDevice,
    mem_get_info: MemGetInfo,
    runtime_get_version: RuntimeGetVersion,
    get_error_string: GetErrorString,
    // Keeps the function pointers above valid; dropped last.
    _lib: libloading::Library,
}

impl std::fmt::Debug for HipRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HipRuntime").field("library", &self.name).finish()
    }
}

impl HipRuntime {
    /// Opens the first HIP runtime found among [`LIBRARY_NAMES`].
    pub fn load() -> Result<HipRuntime> {
        let mut tried = Vec::new();
        for name in LIBRARY_NAMES {
            match Self::load_from(name) {
                Ok(rt) => return Ok(rt),
                Err(e) => tried.push(format!("{name}: {e}")),
            }
        }
        Err(Error::HipUnavailable(format!("no HIP runtime library could be opened ({})", tried.join("; "))))
    }

    /// Opens a HIP runtime by library name or path.
    pub fn load_from(name: &str) -> Result<HipRuntime> {
        // SAFETY: opening a shared library runs its initialisers; libamdhip64's only set up
        // its own state and do not require a GPU.
        let lib = unsafe { libloading::Library::new(name) }.map_err(|e| Error::HipUnavailable(e.to_string()))?;
        // SAFETY: each symbol is looked up with the signature HIP's public header declares.
        unsafe {
            let sym = |s: &[u8]| -> Result<*const ()> {
                lib.get::<*const ()>(s).map(|p| *p).map_err(|e| Error::HipUnavailable(format!("{name}: {e}")))
            };
            Ok(HipRuntime {
                name: name.to_string(),
                get_device_count: std::mem::transmute::<*const (), GetDeviceCount>(sym(b"hipGetDeviceCount\0")?),
                set_device: std::mem::transmute::<*const (), SetDevice>(sym(b"hipSetDevice\0")?),
                mem_get_info: std::mem::transmute::<*const (), MemGetInfo>(sym(b"hipMemGetInfo\0")?),
                runtime_get_version: std::mem::transmute::<*const (), RuntimeGetVersion>(sym(
                    b"hipRuntimeGetVersion\0",
                )?),
                get_error_string: std::mem::transmute::<*const (), GetErrorString>(sym(b"hipGetErrorString\0")?),
                _lib: lib,
            })
        }
    }

    /// The library that was opened.
    pub fn library(&self) -> &str {
        &self.name
    }

    fn check(&self, call: &'static str, code: HipError) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: hipGetErrorString returns a static string for any code (or null).
        let p = unsafe { (self.get_error_string)(code) };
        let message = if p.is_null() {
            String::new()
        } else {
            // SAFETY: non-null static C string from the runtime.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        };
        Err(Error::Hip { call, code, message })
    }

    /// `hipRuntimeGetVersion`, e.g. 50221153 for ROCm 5.2.
    pub fn runtime_version(&self) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: valid out pointer.
        self.check("hipRuntimeGetVersion", unsafe { (self.runtime_get_version)(&mut v) })?;
        Ok(v)
    }

    /// Number of visible HIP devices (`hipGetDeviceCount`); an error when there are none.
    pub fn device_count(&self) -> Result<u32> {
        let mut n: c_int = 0;
        // SAFETY: valid out pointer.
        self.check("hipGetDeviceCount", unsafe { (self.get_device_count)(&mut n) })?;
        Ok(n.max(0) as u32)
    }

    /// Free and total bytes of a device (`hipSetDevice` + `hipMemGetInfo`). Note that this
    /// makes `device` current on the calling thread.
    pub fn mem_info(&self, device: u32) -> Result<(u64, u64)> {
        let count = self.device_count()?;
        if device >= count {
            return Err(Error::Hip { call: "hipSetDevice", code: 101, message: format!("device {device} of {count}") });
        }
        // SAFETY: the index was checked against the device count.
        self.check("hipSetDevice", unsafe { (self.set_device)(device as c_int) })?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out pointers.
        self.check("hipMemGetInfo", unsafe { (self.mem_get_info)(&mut free, &mut total) })?;
        Ok((free as u64, total as u64))
    }
}
