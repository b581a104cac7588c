//! Choosing the compute device: `--device cpu|cuda[:N]|auto`.
//!
//! The CUDA backend exists only in builds with the `cuda` cargo feature (candle's CUDA kernels
//! need `nvcc` at build time; `.ci/cuda.sh` shows how to get it from PyPI). A CPU-only build
//! asked for `cuda` answers with an error that says how to rebuild, never silently falls back.
//! `auto` (the CLI default) takes CUDA device 0 when the build has CUDA and a GPU answers, else
//! the CPU.
//!
//! A `cuda` build links the CUDA driver library (`libcuda.so.1`, which comes with the NVIDIA
//! driver) and cuBLAS/cuRAND/NVRTC dynamically, so such a binary starts only where those
//! libraries are installed.

use candle_core::Device;

use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// Whether this build has the CUDA backend (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// What `--device` asked for, parsed but not yet opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The host CPU.
    Cpu,
    /// CUDA device `ordinal`.
    Cuda(usize),
    /// CUDA device 0 when built with `cuda` and a GPU answers, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceSpec {
    type Err = TrainError;

    /// Parses `cpu`, `cuda`, `cuda:N` (`gpu` is accepted for `cuda`) or `auto`.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => return Ok(Self::Cpu),
            "auto" | "" => return Ok(Self::Auto),
            "cuda" | "gpu" => return Ok(Self::Cuda(0)),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("cuda:").or_else(|| t.strip_prefix("gpu:")) {
            let ordinal = n.parse::<usize>().map_err(|_| {
                TrainError::Device(format!(
                    "bad device {s:?}: the CUDA ordinal must be a number, as in cuda:0"
                ))
            })?;
            return Ok(Self::Cuda(ordinal));
        }
        Err(TrainError::Device(format!(
            "unknown device {s:?}: expected cpu, cuda, cuda:N or auto"
        )))
    }
}

/// Opens the device that `spec` names (`cpu`, `cuda`, `cuda:N`, `auto`).
///
/// Errors: an unparsable spec; `cuda` in a build without the `cuda` feature; a CUDA device
/// that cannot be opened (no GPU, no driver, ordinal out of range). `auto` never errors: it
/// falls back to the CPU.
pub fn device(spec: &str) -> Result<Device> {
    match spec.parse::<DeviceSpec>()? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(ordinal) => cuda(ordinal),
        DeviceSpec::Auto => Ok(cuda(0).unwrap_or(Device::Cpu)),
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !CUDA_BUILT {
        return Err(TrainError::Device(format!(
            "device cuda:{ordinal} asked for, but this build has no CUDA support: \
             rebuild with `cargo build --release --features cuda` (needs nvcc; see .ci/cuda.sh), \
             or pass --device cpu"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        TrainError::Device(format!(
            "cannot open CUDA device {ordinal} (is an NVIDIA GPU and its driver present?): {e}"
        ))
    })
}

/// A short human name of a device, printed by the CLI: `cpu` or `cuda:N`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Opens `spec` and prints the choice to stderr (`device: cuda:0`), as `train` and `eval` do.
pub fn device_announced(spec: &str) -> Result<Device> {
    let d = device(spec)?;
    let why = match spec.parse::<DeviceSpec>()? {
        DeviceSpec::Auto if d.is_cpu() && CUDA_BUILT => " (auto: no usable CUDA device)",
        DeviceSpec::Auto if d.is_cpu() => " (auto: built without the cuda feature)",
        DeviceSpec::Auto => " (auto)",
        _ => "",
    };
    eprintln!("device: {}{why}", describe(&d));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(" CUDA ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("gpu:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
    }

    #[test]
    fn rejects_bad_specs() {
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("unknown device \"tpu\""), "{e}");
        let e = "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("ordinal must be a number"), "{e}");
        assert!(device("cuda:-1").is_err());
    }

    #[test]
    fn cpu_and_auto_open() {
        assert!(device("cpu").unwrap().is_cpu());
        assert_eq!(describe(&device("cpu").unwrap()), "cpu");
        // `auto` never fails; without the feature it is always the CPU.
        let d = device("auto").unwrap();
        if !CUDA_BUILT {
            assert!(d.is_cpu());
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_in_cpu_build_is_a_clear_error() {
        let e = device("cuda:1").unwrap_err().to_string();
        assert!(e.contains("no CUDA support"), "{e}");
        assert!(e.contains("--features cuda"), "{e}");
    }
}
