//! The CUDA side. For now it can tell whether a driver and a device are present; tensor
//! storage on the GPU is the CUDA backend's work. `CudaStorage` has no values, so every
//! `match` on `Storage` stays exhaustive without `#[cfg]`, and no CUDA tensor can exist.

use cudarc::driver::CudaContext;

use crate::{Error, Result};

/// GPU memory. Uninhabited until the CUDA backend lands.
#[derive(Debug)]
pub enum CudaStorage {}

/// Whether `libcuda` can be loaded. cudarc's dynamic loader panics on first use when it
/// cannot, so everything goes through here first.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library under its usual names and drops it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(Error::NoCudaDriver("libcuda.so was not found by the dynamic loader".into()));
    }
    let n = CudaContext::device_count().map_err(|e| Error::NoCudaDriver(e.to_string()))?;
    Ok(n.max(0) as usize)
}

/// Checks that device `ordinal` exists and a context can be created on it.
pub fn probe(ordinal: usize) -> Result<()> {
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::CudaDevice { ordinal, msg: format!("this machine has {count} CUDA device(s)") });
    }
    CudaContext::new(ordinal).map_err(|e| Error::CudaDevice { ordinal, msg: e.to_string() })?;
    Ok(())
}
