//! The `--device` option: which burn backend runs the tensors, picked at run time.
use anyhow::{Result, bail};
use burn::tensor::Device;

/// Parses `cpu` / `flex` (the default build's CPU backend) or `vulkan[:N]` (with the `vulkan`
/// cargo feature).
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        v if v == "vulkan" || v.starts_with("vulkan:") => vulkan(v),
        other => bail!("unknown device `{other}`: use `cpu` or `vulkan[:N]`"),
    }
}

#[cfg(feature = "vulkan")]
fn vulkan(spec: &str) -> Result<Device> {
    use burn::tensor::DeviceKind;
    let kind = match spec.strip_prefix("vulkan:") {
        None => DeviceKind::DefaultDevice,
        Some(n) => DeviceKind::DiscreteGpu(
            n.parse().map_err(|_| anyhow::anyhow!("device `{spec}`: `{n}` is not a GPU index"))?,
        ),
    };
    Ok(Device::vulkan(kind))
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(spec: &str) -> Result<Device> {
    bail!("device `{spec}` needs a build with `--features vulkan`")
}
