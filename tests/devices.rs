//! GPU detection against fake sysfs trees, and the HIP runtime library without a GPU.

use std::path::{Path, PathBuf};

use rocm_llama::devices::{self, BackendDevice, DeviceKind, GpuEnv, HipRuntime, VramSource};
use rocm_llama::Error;

#[cfg(feature = "hip")]
mod common;

const GIB: u64 = 1 << 30;

struct Node<'a> {
    gfx_target_version: u32,
    minor: Option<u32>,
    vram: Option<(u64, u64)>,
    gtt: Option<u64>,
    vendor_info: bool,
    product: &'a str,
    /// KFD's `location_id` (bus << 8 | device << 3 | function).
    location_id: Option<u32>,
}

fn tree(name: &str, kfd: bool, nodes: &[Node]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("rocm-llama-sysfs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("dev")).unwrap();
    if kfd {
        std::fs::write(root.join("dev/kfd"), "").unwrap();
    }
    let topo = root.join("sys/class/kfd/kfd/topology/nodes");
    // Node 0 is always the CPU.
    std::fs::create_dir_all(topo.join("0")).unwrap();
    std::fs::write(topo.join("0/properties"), "cpu_cores_count 16\nsimd_count 0\ngfx_target_version 0\nvendor_id 0\n")
        .unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let dir = topo.join((i + 1).to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let mut props = format!(
            "cpu_cores_count 0\nsimd_count 120\ngfx_target_version {}\nvendor_id 4098\ndevice_id 29822\n",
            n.gfx_target_version
        );
        if let Some(loc) = n.location_id {
            props.push_str(&format!("domain 0\nlocation_id {loc}\n"));
        }
        if let Some(m) = n.minor {
            props.push_str(&format!("drm_render_minor {m}\n"));
            let dev = root.join(format!("sys/class/drm/renderD{m}/device"));
            std::fs::create_dir_all(&dev).unwrap();
            if let Some((total, used)) = n.vram {
                std::fs::write(dev.join("mem_info_vram_total"), format!("{total}\n")).unwrap();
                std::fs::write(dev.join("mem_info_vram_used"), format!("{used}\n")).unwrap();
            }
            if let Some(g) = n.gtt {
                std::fs::write(dev.join("mem_info_gtt_total"), format!("{g}\n")).unwrap();
            }
            if n.vendor_info {
                std::fs::write(dev.join("mem_info_vram_vendor"), "samsung\n").unwrap();
                std::fs::write(dev.join("board_info"), "type : oam\n").unwrap();
            }
            std::fs::write(dev.join("product_name"), format!("{}\n", n.product)).unwrap();
        }
        std::fs::write(dir.join("properties"), props).unwrap();
    }
    root
}

fn rx7800xt() -> Node<'static> {
    Node {
        gfx_target_version: 110001,
        minor: Some(128),
        vram: Some((16 * GIB, GIB)),
        gtt: Some(32 * GIB),
        vendor_info: true,
        product: "AMD Radeon RX 7800 XT",
        location_id: None,
    }
}

fn igpu780m() -> Node<'static> {
    Node {
        gfx_target_version: 110003,
        minor: Some(129),
        vram: Some((GIB / 2, GIB / 8)),
        gtt: Some(16 * GIB),
        vendor_info: false,
        product: "AMD Radeon 780M",
        location_id: None,
    }
}

fn report(root: &Path, env: &GpuEnv) -> devices::DeviceReport {
    devices::report(root, env, Vec::new(), None)
}

#[test]
fn desktop_with_a_7800xt_and_a_780m_igpu() {
    let root = tree("desktop", true, &[rx7800xt(), igpu780m()]);
    let r = report(&root, &GpuEnv::default());
    assert!(r.kfd);
    assert_eq!(r.gpus.len(), 2, "{r:#?}");
    let (d, i) = (&r.gpus[0], &r.gpus[1]);
    assert_eq!((d.amd.gfx.as_str(), d.amd.integrated, d.hip_index), ("gfx1101", false, Some(0)));
    assert_eq!((i.amd.gfx.as_str(), i.amd.integrated, i.hip_index), ("gfx1103", true, Some(1)));
    assert_eq!(d.amd.vendor_id, 0x1002);
    assert_eq!(d.amd.product_name.as_deref(), Some("AMD Radeon RX 7800 XT"));
    let v = d.vram.as_ref().unwrap();
    assert_eq!((v.free, v.total, v.source), (15 * GIB, 16 * GIB, VramSource::Sysfs));
    assert!(r.warnings.is_empty() && r.problems.is_empty(), "{r:#?}");
    let table = r.table();
    assert!(
        table.contains("gfx1101") && table.contains("integrated") && table.contains("15.0 GiB / 16.0 GiB"),
        "{table}"
    );
}

#[test]
fn hsa_override_is_shown_and_warns_when_it_forces_the_igpu() {
    let root = tree("override", true, &[rx7800xt(), igpu780m()]);
    let env = GpuEnv { hsa_override_gfx_version: Some("11.0.1".into()), ..Default::default() };
    let r = report(&root, &env);
    assert_eq!(r.gpus[0].effective_gfx, "gfx1101");
    assert_eq!(r.gpus[1].effective_gfx, "gfx1101");
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].contains("gfx1103") && r.warnings[0].contains("integrated"), "{:?}", r.warnings);
    assert!(r.table().contains("gfx1103 (as gfx1101)"));

    // Hiding the iGPU removes the conflict.
    let env = GpuEnv { hip_visible_devices: Some("0".into()), ..env };
    let r = report(&root, &env);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.gpus[1].hip_index, None);

    // A lone card that needs the override is what the variable is for: no warning.
    let root = tree("override-lone", true, &[igpu780m()]);
    let r = report(&root, &GpuEnv { hsa_override_gfx_version: Some("11.0.0".into()), ..Default::default() });
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.gpus[0].effective_gfx, "gfx1100");
}

#[test]
fn visible_devices_and_unified_memory() {
    let root = tree("visible", true, &[rx7800xt(), igpu780m()]);
    let env = GpuEnv { rocr_visible_devices: Some("1".into()), ..Default::default() };
    let r = report(&root, &env);
    assert_eq!((r.gpus[0].hip_index, r.gpus[1].hip_index), (None, Some(0)));
    let env = GpuEnv { hip_visible_devices: Some("1,0,7,GPU-abc".into()), ..Default::default() };
    let r = report(&root, &env);
    assert_eq!((r.gpus[0].hip_index, r.gpus[1].hip_index), (Some(1), Some(0)));
    assert!(r.warnings.iter().any(|w| w.contains("no GPU 7")), "{:?}", r.warnings);
    assert!(r.warnings.iter().any(|w| w.contains("GPU-abc")), "{:?}", r.warnings);
    let env = GpuEnv { ggml_cuda_enable_unified_memory: Some("0".into()), ..Default::default() };
    let r = report(&root, &env);
    assert!(r.warnings.iter().any(|w| w.contains("GGML_CUDA_ENABLE_UNIFIED_MEMORY") && w.contains("XNACK")));
}

#[test]
fn a_lone_7900xtx() {
    let xtx = Node {
        gfx_target_version: 110000,
        minor: Some(128),
        vram: Some((24 * GIB, 2 * GIB)),
        gtt: Some(64 * GIB),
        vendor_info: true,
        product: "AMD Radeon RX 7900 XTX",
        location_id: None,
    };
    let root = tree("xtx", true, &[xtx]);
    let r = report(&root, &GpuEnv::default());
    assert_eq!(r.gpus.len(), 1);
    assert_eq!(r.gpus[0].amd.gfx, "gfx1100");
    assert!(!r.gpus[0].amd.integrated);
    assert_eq!(r.gpus[0].vram.as_ref().unwrap().free, 22 * GIB);
}

#[test]
fn a_cpu_only_machine() {
    let root = tree("cpu", false, &[]);
    let r = report(&root, &GpuEnv::default());
    assert!(!r.kfd && r.gpus.is_empty() && r.problems.is_empty(), "{r:#?}");
    assert!(r.table().contains("none found"));
    // No sysfs at all (containers): empty, not an error.
    let empty = std::env::temp_dir().join(format!("rocm-llama-sysfs-{}-nothing", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert!(report(&empty, &GpuEnv::default()).gpus.is_empty());
}

#[test]
fn missing_and_malformed_files_are_reported_not_fatal() {
    let no_drm = Node { minor: None, ..rx7800xt() };
    let no_vram = Node { vram: None, minor: Some(130), ..rx7800xt() };
    let root = tree("broken", true, &[no_drm, no_vram, rx7800xt()]);
    let topo = root.join("sys/class/kfd/kfd/topology/nodes");
    // A node whose properties are garbage, one without properties, one with a bad gfx version.
    std::fs::create_dir_all(topo.join("7")).unwrap();
    std::fs::write(topo.join("7/properties"), "\u{0}\u{1}garbage without numbers\n").unwrap();
    std::fs::create_dir_all(topo.join("8")).unwrap();
    std::fs::create_dir_all(topo.join("9")).unwrap();
    std::fs::write(topo.join("9/properties"), "gfx_target_version 119999\ndrm_render_minor 200\n").unwrap();
    std::fs::create_dir_all(topo.join("not-a-number")).unwrap();
    // A VRAM file that is not a number.
    std::fs::write(root.join("sys/class/drm/renderD128/device/mem_info_vram_used"), "lots\n").unwrap();
    let r = report(&root, &GpuEnv::default());
    assert_eq!(r.gpus.len(), 3, "{r:#?}");
    assert!(r.gpus[0].vram.is_none());
    assert!(r.gpus[1].vram.is_none());
    // Total known, used unreadable: no free figure rather than a wrong one.
    assert!(r.gpus[2].vram.is_none() && r.gpus[2].amd.vram_total == Some(16 * GIB));
    let p = r.problems.join("\n");
    for needle in ["no drm_render_minor", "nodes/7/properties", "nodes/8/properties", "119999", "not a number"] {
        assert!(p.contains(needle), "{needle} missing from:\n{p}");
    }
}

/// The HIP runtime from Debian's `libamdhip64-5`: its symbols load, and with no GPU its
/// calls return a typed error rather than crashing.
#[test]
fn hip_runtime_without_a_gpu_is_a_typed_error() {
    let rt = match HipRuntime::load() {
        Ok(rt) => rt,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI installs libamdhip64-5, but it could not be opened: {e}");
            }
            eprintln!("SKIPPED: {e} (apt-get install libamdhip64-5)");
            return;
        }
    };
    assert!(rt.library().starts_with("libamdhip64"));
    let count = rt.device_count();
    eprintln!("{}: runtime version {:?}, device count {count:?}", rt.library(), rt.runtime_version());
    match count {
        Ok(0) | Err(Error::Hip { .. }) => {}
        Ok(n) => eprintln!("this machine has {n} HIP devices"),
        Err(e) => panic!("unexpected error type: {e:?}"),
    }
    if !std::path::Path::new("/dev/kfd").exists() {
        assert!(matches!(rt.mem_info(0), Err(Error::Hip { .. })));
        // What `devices` shows: the library, its HIP version and the runtime's reason.
        let status = devices::HipStatus::of(&rt);
        eprintln!("HIP runtime: {}", status.summary());
        assert_eq!(status.library.as_deref(), Some(rt.library()));
        assert!(status.version.as_deref().is_some_and(|v| v.contains('.')), "{status:?}");
        assert!(status.error.is_some(), "{status:?}");
    }
    assert!(matches!(HipRuntime::load_from("libdefinitely-not-hip.so"), Err(Error::HipUnavailable(_))));
}

#[test]
fn this_machine_reports_without_panicking() {
    let r = rocm_llama::devices();
    assert!(!r.backend_devices.is_empty());
    assert!(r.primary_memory().is_some());
    let _ = r.table();
    let _ = rocm_llama::available();
}

fn backend(index: usize, name: &str, kind: DeviceKind, free: u64) -> BackendDevice {
    let backend = if name == "CPU" { "CPU" } else { "ROCm" };
    BackendDevice {
        index,
        name: name.into(),
        description: String::new(),
        backend: backend.into(),
        kind,
        free,
        total: 16 * GIB,
        remote: None,
        pci_bus: None,
    }
}

/// A device of another backend (`Vulkan`) on a given PCI bus.
fn on_bus(mut d: BackendDevice, backend: &str, bus: &str) -> BackendDevice {
    d.backend = backend.into();
    d.pci_bus = Some(bus.into());
    d
}

/// A `hip,vulkan` build on a machine with two cards: each card is ROCm<i> and Vulkan<i>.
/// llama.cpp offloads to the ROCm devices only (registered first), the fit counts each card
/// once, the report matches both names to the card by PCI bus id, and naming devices picks
/// per device or refuses with a reason.
#[test]
fn a_card_reached_through_two_backends_counts_once() {
    let env = GpuEnv::default();
    let mut first = rx7800xt();
    let mut second = Node { minor: Some(130), ..rx7800xt() };
    first.location_id = Some(0x0300);
    second.location_id = Some(0xc100);
    let root = tree("two-backends", true, &[first, second]);
    let devs = vec![
        on_bus(backend(0, "ROCm0", DeviceKind::Gpu, 14 * GIB), "ROCm", "0000:03:00.0"),
        on_bus(backend(1, "ROCm1", DeviceKind::Gpu, 14 * GIB), "ROCm", "0000:c1:00.0"),
        on_bus(backend(2, "Vulkan0", DeviceKind::Gpu, 13 * GIB), "Vulkan", "0000:03:00.0"),
        on_bus(backend(3, "Vulkan1", DeviceKind::Gpu, 13 * GIB), "Vulkan", "0000:c1:00.0"),
        backend(4, "CPU", DeviceKind::Cpu, 64 * GIB),
    ];
    let used: Vec<&str> = devices::offload_devices(&devs).iter().map(|d| d.name.as_str()).collect();
    assert_eq!(used, ["ROCm0", "ROCm1"]);
    let skipped: Vec<(&str, &str)> =
        devices::same_card_skipped(&devs).iter().map(|(s, u)| (s.name.as_str(), u.name.as_str())).collect();
    assert_eq!(skipped, [("Vulkan0", "ROCm0"), ("Vulkan1", "ROCm1")]);

    let r = devices::report(&root, &env, devs.clone(), None);
    assert_eq!(r.gpus[0].amd.pci_bus.as_deref(), Some("0000:03:00.0"));
    assert_eq!(
        (r.gpus[0].backend_device.as_deref(), &r.gpus[0].other_backend_devices[..]),
        (Some("ROCm0"), &["Vulkan0".to_string()][..])
    );
    assert_eq!(r.gpus[1].backend_device.as_deref(), Some("ROCm1"));
    assert_eq!(r.split_gpus(), vec![("ROCm0".to_string(), 14 * GIB), ("ROCm1".to_string(), 14 * GIB)]);
    let table = r.table();
    assert!(table.contains("Vulkan0 is the same card as ROCm0 (PCI 0000:03:00.0)"), "{table}");
    assert!(table.contains("--device Vulkan0 picks Vulkan instead"), "{table}");

    // Picking per device: Vulkan for both cards, or one card on each backend.
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        r.named_gpus(&names(&["vulkan0", "Vulkan1"])).unwrap(),
        vec![("Vulkan0".to_string(), 13 * GIB), ("Vulkan1".to_string(), 13 * GIB)]
    );
    assert_eq!(r.named_gpus(&names(&["Vulkan1", "ROCm0"])).unwrap().len(), 2);
    assert!(r.named_gpus(&names(&["none"])).unwrap().is_empty());
    // Refusals, each with its reason.
    let refused = |list: &[&str]| match devices::pick_devices(&devs, &names(list)) {
        Err(Error::InvalidArgument { reason, .. }) => reason,
        other => panic!("{list:?} was not refused: {other:?}"),
    };
    let m = refused(&["ROCm0", "Vulkan0"]);
    assert!(m.contains("same card") && m.contains("0000:03:00.0"), "{m}");
    let m = refused(&["Vulkan7"]);
    assert!(m.contains("no device \"Vulkan7\"") && m.contains("ROCm0") && m.contains("Vulkan1"), "{m}");
    assert!(refused(&["CPU"]).contains("not a GPU"));
    assert!(refused(&["ROCm0", "rocm0"]).contains("named twice"));
    assert!(refused(&["none", "ROCm0"]).contains("none"));
}

/// A Vulkan-only build on an AMD card: the Vulkan device is matched to the card by PCI bus id
/// and its free memory is the lower of the Vulkan backend's and the driver's.
#[test]
fn a_vulkan_build_on_an_amd_card() {
    let mut card = rx7800xt();
    card.location_id = Some(0x0300);
    card.vram = Some((16 * GIB, 3 * GIB));
    let root = tree("vulkan-only", true, &[card]);
    let devs = vec![
        on_bus(backend(0, "Vulkan0", DeviceKind::Gpu, 14 * GIB), "Vulkan", "0000:03:00.0"),
        backend(1, "CPU", DeviceKind::Cpu, 64 * GIB),
    ];
    let r = devices::report(&root, &GpuEnv::default(), devs, None);
    assert_eq!(r.gpus[0].backend_device.as_deref(), Some("Vulkan0"));
    let v = r.gpus[0].vram.as_ref().unwrap();
    assert_eq!(
        (v.free, v.source, v.runtime, v.runtime_free),
        (13 * GIB, VramSource::Sysfs, VramSource::Vulkan, Some(14 * GIB))
    );
    assert_eq!(r.split_gpus(), vec![("Vulkan0".to_string(), 13 * GIB)]);
    assert!(r.table().contains("Vulkan"), "{}", r.table());
}

#[test]
fn the_layer_split_uses_every_discrete_gpu_or_else_the_integrated_one() {
    let env = GpuEnv::default();
    let cpu = backend(9, "CPU", DeviceKind::Cpu, 64 * GIB);
    // Two discrete cards: both, in llama.cpp's order, each with the lower of HIP's and the
    // driver's free memory (sysfs says 15 GiB free on each).
    let second = Node { minor: Some(130), ..rx7800xt() };
    let root = tree("two-cards", true, &[rx7800xt(), second]);
    let devs = vec![
        backend(0, "ROCm0", DeviceKind::Gpu, 14 * GIB),
        backend(1, "ROCm1", DeviceKind::Gpu, 16 * GIB),
        cpu.clone(),
    ];
    let r = devices::report(&root, &env, devs, None);
    assert_eq!(r.split_gpus(), vec![("ROCm0".to_string(), 14 * GIB), ("ROCm1".to_string(), 15 * GIB)]);
    assert!(r.table().contains("a model's layers are split over: ROCm0, ROCm1"), "{}", r.table());
    // A card and an iGPU: the card alone.
    let root = tree("card-and-igpu", true, &[rx7800xt(), igpu780m()]);
    let devs = vec![
        backend(0, "ROCm0", DeviceKind::Gpu, 15 * GIB),
        backend(1, "ROCm1", DeviceKind::IntegratedGpu, GIB / 4),
        cpu.clone(),
    ];
    let r = devices::report(&root, &env, devs, None);
    assert_eq!(r.split_gpus(), vec![("ROCm0".to_string(), 15 * GIB)]);
    assert!(r.table().contains("models are offloaded to: ROCm0\n"), "{}", r.table());
    // Only an iGPU: it is used.
    let root = tree("igpu-only", true, &[igpu780m()]);
    let r =
        devices::report(&root, &env, vec![backend(0, "ROCm0", DeviceKind::IntegratedGpu, GIB / 4), cpu.clone()], None);
    assert_eq!(r.split_gpus().len(), 1);
    // No GPU: nothing to split over.
    let root = tree("cpu-only-split", false, &[]);
    assert!(devices::report(&root, &env, vec![cpu], None).split_gpus().is_empty());
}

/// A HIP build puts the model's layers on the AMD GPU. Without one (CI, the sid root of
/// `scripts/hip/build.sh`) it checks the fallback instead: the HIP runtime's reason in
/// `devices`, and llama.cpp on the CPU.
#[cfg(feature = "hip")]
#[test]
fn hip_build_offloads_to_the_amd_gpu() {
    let report = rocm_llama::devices();
    let hip = report.hip.clone().expect("a hip build always asks the HIP runtime");
    let rocm: Vec<&BackendDevice> = report.backend_devices.iter().filter(|d| d.name.starts_with("ROCm")).collect();
    if rocm.is_empty() {
        // No AMD GPU here (CI, the sid root): what is checked instead is the fallback.
        eprintln!("no AMD GPU; checking the CPU fallback instead. HIP runtime: {}", hip.summary());
        assert!(hip.error.is_some(), "no ROCm device but the HIP runtime reported no error: {hip:?}");
        assert!(report.table().contains("HIP runtime: "), "{}", report.table());
        assert!(!rocm_llama::available());
        return;
    }
    let Some(path) = common::model_path() else { return };
    let model = rocm_llama::Model::load(&path, &rocm_llama::LoadConfig::default()).expect("the test model loads");
    let on_gpu: u64 = model.memory().weights.iter().filter(|b| b.name.starts_with("ROCm")).map(|b| b.bytes).sum();
    assert!(on_gpu > 0, "no weights on a ROCm device: {:?}", model.memory());
}
