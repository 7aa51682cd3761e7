//! Where a tensor lives. CUDA is probed before anything touches the driver, so a machine
//! with no GPU gets an error value, never a panic from the dynamic loader.

use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl Device {
    /// The CUDA device `ordinal`, opened (once per process), or why it cannot be had: no
    /// driver, no such device, or a failure to create its context.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        crate::cuda::probe(ordinal)?;
        Ok(Device::Cuda(ordinal))
    }

    /// CUDA device 0 when it can be used, else the CPU.
    pub fn best() -> Device {
        Device::cuda(0).unwrap_or(Device::Cpu)
    }

    /// Parses the `--device` flag of every binary: `auto` (CUDA device 0 when one can be
    /// used, else the CPU), `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::best()),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Device::cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(crate::invalid!("device", "unknown device {s:?} (expected auto, cpu, cuda or cuda:N)")),
            },
        }
    }

    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
