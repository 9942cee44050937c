//! The `--device` option: which burn backend runs the tensors, picked at run time.
use anyhow::{Result, bail};
use burn::tensor::Device;

/// The names `--device` accepts.
macro_rules! device_names {
    () => {
        "`cpu`, `vulkan[:N]` (build feature `vulkan`), `wgpu[:N]` (build feature `wgpu`), `libtorch` or `libtorch-cuda[:N]` (build feature `libtorch`)"
    };
}

/// The names `--device` accepts, for messages.
pub const DEVICE_NAMES: &str = device_names!();

/// Every command's `--device` help.
pub const DEVICE_HELP: &str = concat!("Where the tensors run: ", device_names!(), " [default: cpu]");

/// Parses `cpu` / `flex` (the default build's CPU backend), `vulkan[:N]` (with the `vulkan`
/// cargo feature), `libtorch` (PyTorch's CPU kernels) or `libtorch-cuda[:N]` (with the
/// `libtorch` cargo feature).
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        v if v == "vulkan" || v.starts_with("vulkan:") => vulkan(v),
        v if v == "wgpu" || v.starts_with("wgpu:") => wgpu(v),
        v if v == "libtorch" || v == "libtorch-cuda" || v.starts_with("libtorch-cuda:") => libtorch(v),
        other => bail!("unknown device `{other}`: use {DEVICE_NAMES}"),
    }
}

/// The index after `prefix:`, or `None` for the bare name.
fn index(spec: &str, prefix: &str) -> Result<Option<usize>> {
    match spec.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) {
        None => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| anyhow::anyhow!("device `{spec}`: `{n}` is not a device index")),
    }
}

#[cfg(feature = "vulkan")]
fn vulkan(spec: &str) -> Result<Device> {
    probed(spec, Device::vulkan(gpu_kind(spec, "vulkan")?))
}

#[cfg(feature = "wgpu")]
fn wgpu(spec: &str) -> Result<Device> {
    probed(spec, Device::wgpu(gpu_kind(spec, "wgpu")?))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(spec: &str) -> Result<Device> {
    index(spec, "wgpu")?;
    bail!("device `{spec}` needs a build with `--features wgpu`")
}

#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn gpu_kind(spec: &str, prefix: &str) -> Result<burn::tensor::DeviceKind> {
    use burn::tensor::DeviceKind;
    Ok(match index(spec, prefix)? {
        None => DeviceKind::DefaultDevice,
        Some(n) => DeviceKind::DiscreteGpu(n),
    })
}

/// `device` once one tiny operation ran on it. wgpu panics (on its own thread, then ours) when
/// no adapter answers: the probe runs quietly, so that a machine without one gets an error.
#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn probed(spec: &str, device: Device) -> Result<Device> {
    let probe = device.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let answer = std::panic::catch_unwind(move || burn::tensor::Tensor::<1>::ones([4], &probe).sum().into_scalar::<f32>());
    std::panic::set_hook(hook);
    match answer {
        Ok(4.0) => Ok(device),
        Ok(v) => bail!("device `{spec}`: the adapter computed 1+1+1+1 = {v}"),
        Err(_) => bail!(
            "device `{spec}`: no GPU adapter answered (install the Vulkan loader, Debian's libvulkan1, and the GPU's Vulkan driver; see the README's Devices section)"
        ),
    }
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(spec: &str) -> Result<Device> {
    index(spec, "vulkan")?;
    bail!("device `{spec}` needs a build with `--features vulkan`")
}

// burn marks its LibTorch backend deprecated in favour of CubeCL, whose CUDA build downloads LLVM.
#[cfg(feature = "libtorch")]
#[allow(deprecated)]
fn libtorch(spec: &str) -> Result<Device> {
    if spec == "libtorch" {
        keep_freed_memory();
        return Ok(Device::libtorch());
    }
    let n = index(spec, "libtorch-cuda")?.unwrap_or(0);
    let available = tch_cuda_devices();
    if n >= available {
        bail!("device `{spec}`: this machine's libtorch sees {available} CUDA device(s)");
    }
    deterministic_cudnn();
    Ok(Device::libtorch_cuda(n))
}

/// libtorch's global context, through the C++ symbols it exports (tch has no call for these).
#[cfg(feature = "libtorch")]
mod torch_context {
    use std::ffi::c_void;
    unsafe extern "C" {
        #[link_name = "_ZN2at13globalContextEv"]
        pub fn global() -> *mut c_void;
        #[link_name = "_ZN2at7Context21setDeterministicCuDNNEb"]
        pub fn set_deterministic_cudnn(context: *mut c_void, on: bool);
        #[cfg(test)]
        #[link_name = "_ZNK2at7Context18deterministicCuDNNEv"]
        pub fn deterministic_cudnn(context: *const c_void) -> bool;
    }
}

/// Has cuDNN choose only deterministic convolution algorithms, as PyTorch's
/// `torch.backends.cudnn.deterministic = True`: otherwise its heuristics may pick a backward
/// algorithm that adds partial sums with atomics, and the same training step then gives other
/// bits from run to run.
#[cfg(feature = "libtorch")]
fn deterministic_cudnn() {
    // SAFETY: `at::globalContext()` returns the process's one context, alive for the whole run;
    // `Context::setDeterministicCuDNN(bool)` is a non-virtual member that stores a flag, called
    // with the context as its `this` argument (the Itanium C++ ABI of x86-64 and aarch64 Linux).
    unsafe { torch_context::set_deterministic_cudnn(torch_context::global(), true) }
}

/// Whether the device `spec` names has malloc keep freed memory ([`parse`] sets it up): LibTorch's
/// CPU device.
pub fn keeps_freed_memory(spec: &str) -> bool {
    cfg!(feature = "libtorch") && spec == "libtorch"
}

/// Has glibc's malloc keep the memory that LibTorch's CPU tensors free for the next ones instead
/// of handing each large block back to the kernel (by default, blocks above 128 kB to 32 MB are
/// mapped and unmapped one by one, so every new activation is page-faulted and zeroed again): the
/// reuse a caching allocator gives, and what PyTorch users get from jemalloc or tcmalloc. Measured
/// on the SD 1.5 UNet at 256 px, 2 cores, alternate runs: forward 1745-1756 -> 1263-1495 ms,
/// forward + backward 3436-3459 -> 2685-3028 ms, peak memory unchanged. flex showed no gain
/// beyond the noise, so it is left as it is.
#[cfg(feature = "libtorch")]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only changes malloc's thresholds; any value is valid (a refused one
        // leaves the default).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, std::ffi::c_int::MAX);
            mallopt(M_TRIM_THRESHOLD, std::ffi::c_int::MAX);
        }
    }
}

/// The number of CUDA devices libtorch can use (0 without CUDA).
#[cfg(feature = "libtorch")]
pub fn tch_cuda_devices() -> usize {
    tch::Cuda::device_count().max(0) as usize
}

#[cfg(not(feature = "libtorch"))]
fn libtorch(spec: &str) -> Result<Device> {
    if spec != "libtorch" {
        index(spec, "libtorch-cuda")?;
    }
    bail!("device `{spec}` needs a build with `--features libtorch` (see the README's GPU section)")
}

/// Sets the compute threads of the backend behind `device` where it keeps its own pool
/// (libtorch; flex uses rayon's, sized by `RAYON_NUM_THREADS`).
pub fn set_threads(device: &str, threads: usize) {
    #[cfg(feature = "libtorch")]
    if device.starts_with("libtorch") {
        tch::set_num_threads(threads as i32);
    }
    let _ = (device, threads);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag that `libtorch-cuda` devices set, set and read back through the same symbols (on
    /// a machine without CUDA too: the flag lives in libtorch's CPU library).
    #[cfg(feature = "libtorch")]
    #[test]
    fn cudnn_determinism_is_set_through_libtorch_context() {
        // SAFETY: as in `deterministic_cudnn`; the getter only reads the flag.
        let on = || unsafe { torch_context::deterministic_cudnn(torch_context::global()) };
        assert!(!on(), "libtorch's default is off");
        deterministic_cudnn();
        assert!(on());
    }

    #[test]
    fn names_and_indices() {
        assert!(parse("cpu").is_ok());
        let e = parse("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("libtorch"), "{e}");
        let e = parse("vulkan:x").unwrap_err().to_string();
        assert!(e.contains("`x` is not a device index"), "{e}");
        let e = parse("libtorch-cuda:y").unwrap_err().to_string();
        assert!(e.contains("`y` is not a device index"), "{e}");
    }
}
