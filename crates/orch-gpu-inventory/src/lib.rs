//! GPU inventory for llama-orch placement (docs/PLACEMENT.md, "Where engines run").
//!
//! The inventory sits behind the [`GpuInventory`] trait so that placement can be
//! tested without hardware:
//!
//! * [`NvmlInventory`] reads every NVIDIA device through NVML (`libnvidia-ml.so.1`).
//!   With no driver it fails fast with [`GpuError::NoDriver`] carrying an
//!   actionable [`Diagnosis`].
//! * [`StaticInventory`] is injected: tests and the no-GPU development mode build
//!   it from a list of devices or from a spec such as `"24GiB:RTX 3090,12GiB:RTX 3060"`
//!   (see [`parse_inventory_spec`] and [`FAKE_GPUS_ENV`]).

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

mod diagnose;
mod nvml;
mod spec;

pub use diagnose::{diagnose, Diagnosis};
pub use nvml::NvmlInventory;
pub use spec::parse_inventory_spec;

/// Environment variable holding an injected inventory spec (see [`parse_inventory_spec`]).
/// When set, [`inventory_from_env`] returns a [`StaticInventory`] instead of touching NVML.
pub const FAKE_GPUS_ENV: &str = "LLORCH_FAKE_GPUS";

/// One GPU as seen at snapshot time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GpuDevice {
    /// NVML device index (PCI bus order). Not necessarily the CUDA ordinal; prefer
    /// `uuid` in `CUDA_VISIBLE_DEVICES`.
    pub index: u32,
    /// Device UUID (`GPU-...`); empty when NVML could not report it.
    pub uuid: String,
    /// Product name, e.g. `"NVIDIA GeForce RTX 3090"`; `"unknown"` when NVML could not report it.
    pub name: String,
    /// Total framebuffer memory in bytes (0 when the memory query failed).
    pub total_bytes: u64,
    /// Free framebuffer memory in bytes (0 when the memory query failed, so nothing is placed there).
    pub free_bytes: u64,
    /// Used framebuffer memory in bytes.
    pub used_bytes: u64,
    /// GPU utilisation in percent over the driver's last sample period, if supported.
    pub utilization_pct: Option<u32>,
    /// NVIDIA driver version, e.g. `"550.54.14"`.
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports, e.g. `"12.4"`.
    pub cuda_driver_version: Option<String>,
    /// Compute processes on this device with the memory each holds, as NVML lists them (empty
    /// when the query is unsupported; pids are the host's, so a containerised daemon may not
    /// find its engines here).
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

/// One compute process on a GPU.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GpuProcess {
    /// Process id.
    pub pid: u32,
    /// GPU memory it holds, in bytes.
    pub used_bytes: u64,
}

/// Source of GPU snapshots.
pub trait GpuInventory: Send + Sync + 'static {
    /// Fresh snapshot of every device.
    fn snapshot(&self) -> Result<Vec<GpuDevice>, GpuError>;
    /// Short description: "nvml (driver 550.54, CUDA 12.4)" or "static test inventory".
    fn describe(&self) -> String;
}

/// Errors of the GPU inventory. `Display` of the first two variants is the full,
/// multi-line diagnosis, suitable for printing to the user as is.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML could not be initialised: no driver, module not loaded, no permission, ...
    #[error("NVIDIA GPU driver is not usable\n{diagnosis}")]
    NoDriver {
        /// What was checked and how to fix it.
        diagnosis: Diagnosis,
    },
    /// The driver works but reports no GPU.
    #[error("no NVIDIA GPU found\n{diagnosis}")]
    NoDevices {
        /// What was checked and how to fix it.
        diagnosis: Diagnosis,
    },
    /// An NVML call failed after successful initialisation.
    #[error("NVML {context} failed: {message}")]
    Nvml {
        /// Which call failed, e.g. `"device_count"`.
        context: String,
        /// NVML's error text.
        message: String,
    },
    /// An injected inventory spec could not be parsed; the text says which part and why.
    #[error("bad GPU inventory spec: {0}")]
    BadSpec(String),
}

impl GpuError {
    /// The diagnosis, for the variants that carry one.
    pub fn diagnosis(&self) -> Option<&Diagnosis> {
        match self {
            GpuError::NoDriver { diagnosis } | GpuError::NoDevices { diagnosis } => Some(diagnosis),
            _ => None,
        }
    }
}

/// Injected inventory for tests and the no-GPU development mode.
///
/// Devices are held behind a mutex so tests can simulate VRAM use with [`StaticInventory::set_free`].
#[derive(Debug, Default)]
pub struct StaticInventory {
    devices: Mutex<Vec<GpuDevice>>,
}

impl StaticInventory {
    /// Inventory reporting exactly `devices`.
    pub fn new(devices: Vec<GpuDevice>) -> Self {
        Self {
            devices: Mutex::new(devices),
        }
    }

    /// Inventory with no devices (CPU-only development).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Inventory built from a spec such as `"24GiB:RTX 3090,12GiB:RTX 3060"`.
    pub fn from_spec(spec: &str) -> Result<Self, GpuError> {
        parse_inventory_spec(spec).map(Self::new)
    }

    /// Set the free VRAM of the device with `index` (clamped to its total); `used_bytes`
    /// becomes `total - free`. An unknown index is ignored with a warning.
    pub fn set_free(&self, index: u32, free_bytes: u64) {
        let mut devices = self.lock();
        match devices.iter_mut().find(|d| d.index == index) {
            Some(d) => {
                d.free_bytes = free_bytes.min(d.total_bytes);
                d.used_bytes = d.total_bytes - d.free_bytes;
            }
            None => tracing::warn!(
                index,
                "StaticInventory::set_free: no device with this index"
            ),
        }
    }

    /// Set the reported utilisation of the device with `index`; an unknown index is ignored.
    pub fn set_utilization(&self, index: u32, pct: Option<u32>) {
        if let Some(d) = self.lock().iter_mut().find(|d| d.index == index) {
            d.utilization_pct = pct;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<GpuDevice>> {
        // A panic in another test thread must not poison the inventory for everyone else.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GpuInventory for StaticInventory {
    fn snapshot(&self) -> Result<Vec<GpuDevice>, GpuError> {
        Ok(self.lock().clone())
    }

    fn describe(&self) -> String {
        "static test inventory".to_string()
    }
}

/// The inventory the daemon should use: a [`StaticInventory`] from [`FAKE_GPUS_ENV`] when
/// that variable is set (tests), otherwise [`NvmlInventory::init`].
pub fn inventory_from_env() -> Result<Arc<dyn GpuInventory>, GpuError> {
    match std::env::var(FAKE_GPUS_ENV) {
        Ok(spec) => Ok(Arc::new(
            StaticInventory::from_spec(&spec)
                .map_err(|e| GpuError::BadSpec(format!("{FAKE_GPUS_ENV}: {e}")))?,
        )),
        Err(_) => Ok(Arc::new(NvmlInventory::init()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn static_inventory_set_free_clamps_and_updates_used() {
        let inv = StaticInventory::from_spec("24GiB:RTX 3090,12GiB:RTX 3060").expect("spec");
        inv.set_free(1, 4 * GIB);
        inv.set_free(0, 100 * GIB); // more than total: clamped
        inv.set_free(7, 0); // unknown index: ignored
        let snap = inv.snapshot().expect("snapshot");
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].free_bytes, snap[0].used_bytes), (24 * GIB, 0));
        assert_eq!((snap[1].free_bytes, snap[1].used_bytes), (4 * GIB, 8 * GIB));
        assert_eq!(inv.describe(), "static test inventory");
    }

    #[test]
    fn empty_inventory_has_no_devices() {
        let inv = StaticInventory::empty();
        assert!(inv.snapshot().expect("snapshot").is_empty());
    }

    #[test]
    fn device_round_trips_through_json() {
        let dev = parse_inventory_spec("12G").expect("spec").remove(0);
        let json = serde_json::to_string(&dev).expect("serialize");
        let back: GpuDevice = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, dev);
    }
}
