//! The real inventory, read through NVML.

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Nvml};

use crate::diagnose::{diagnose, diagnose_no_devices};
use crate::{GpuDevice, GpuError, GpuInventory, GpuProcess};

/// Inventory read from NVML; holds an initialised [`nvml_wrapper::Nvml`].
///
/// NVML sees every GPU of the host regardless of `CUDA_VISIBLE_DEVICES`, and its indices
/// follow PCI bus order, which may differ from CUDA's default ordinals: address devices by
/// `uuid` (or set `CUDA_DEVICE_ORDER=PCI_BUS_ID`) when starting engines.
pub struct NvmlInventory {
    nvml: Nvml,
    driver_version: Option<String>,
    cuda_driver_version: Option<String>,
}

impl std::fmt::Debug for NvmlInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl NvmlInventory {
    /// Load `libnvidia-ml.so.1` and initialise NVML.
    ///
    /// Fails fast with [`GpuError::NoDriver`] (no driver, module not loaded, no permission,
    /// ...) or [`GpuError::NoDevices`] (driver fine, zero GPUs), each carrying a [`crate::Diagnosis`].
    pub fn init() -> Result<Self, GpuError> {
        let nvml = Nvml::init().map_err(|e| GpuError::NoDriver {
            diagnosis: diagnose(&e),
        })?;
        let count = nvml
            .device_count()
            .map_err(|e| nvml_error("device_count", &e))?;
        if count == 0 {
            return Err(GpuError::NoDevices {
                diagnosis: diagnose_no_devices(),
            });
        }
        let driver_version = ok_or_warn(None, "sys_driver_version", nvml.sys_driver_version());
        let cuda_driver_version = ok_or_warn(
            None,
            "sys_cuda_driver_version",
            nvml.sys_cuda_driver_version(),
        )
        .map(|v| {
            format!(
                "{}.{}",
                cuda_driver_version_major(v),
                cuda_driver_version_minor(v)
            )
        });
        Ok(Self {
            nvml,
            driver_version,
            cuda_driver_version,
        })
    }

    /// Read one device; partial failures leave fields at their "unknown" values.
    fn read_device(&self, index: u32) -> GpuDevice {
        let mut dev = GpuDevice {
            index,
            uuid: String::new(),
            name: "unknown".to_string(),
            total_bytes: 0,
            free_bytes: 0,
            used_bytes: 0,
            utilization_pct: None,
            driver_version: self.driver_version.clone(),
            cuda_driver_version: self.cuda_driver_version.clone(),
            processes: Vec::new(),
        };
        let Some(device) = ok_or_warn(
            Some(index),
            "device_by_index",
            self.nvml.device_by_index(index),
        ) else {
            return dev;
        };
        if let Some(uuid) = ok_or_warn(Some(index), "uuid", device.uuid()) {
            dev.uuid = uuid;
        }
        if let Some(name) = ok_or_warn(Some(index), "name", device.name()) {
            dev.name = name;
        }
        if let Some(mem) = ok_or_warn(Some(index), "memory_info", device.memory_info()) {
            dev.total_bytes = mem.total;
            dev.free_bytes = mem.free;
            dev.used_bytes = mem.used;
        }
        dev.utilization_pct =
            ok_or_warn(Some(index), "utilization_rates", device.utilization_rates()).map(|u| u.gpu);
        // Optional detail read on every refresh: a refusal (permissions, old driver) is not
        // worth a warning each time.
        match device.running_compute_processes() {
            Err(e) => tracing::debug!(index, error = %e, "NVML process list unavailable"),
            Ok(procs) => {
                dev.processes = procs
                    .into_iter()
                    .filter_map(|p| match p.used_gpu_memory {
                        UsedGpuMemory::Used(used_bytes) => Some(GpuProcess {
                            pid: p.pid,
                            used_bytes,
                        }),
                        UsedGpuMemory::Unavailable => None,
                    })
                    .collect();
            }
        }
        dev
    }
}

impl GpuInventory for NvmlInventory {
    fn snapshot(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| nvml_error("device_count", &e))?;
        Ok((0..count).map(|i| self.read_device(i)).collect())
    }

    fn describe(&self) -> String {
        format!(
            "nvml (driver {}, CUDA {})",
            self.driver_version.as_deref().unwrap_or("unknown"),
            self.cuda_driver_version.as_deref().unwrap_or("unknown")
        )
    }
}

fn nvml_error(context: &str, err: &NvmlError) -> GpuError {
    GpuError::Nvml {
        context: context.to_string(),
        message: err.to_string(),
    }
}

/// `Ok` as `Some`; `Err` logged and turned into `None`. "Not supported" is normal for some
/// queries on some boards (e.g. utilisation under MIG), so it is logged at debug level only.
fn ok_or_warn<T>(index: Option<u32>, query: &str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => {
            tracing::debug!(?index, query, "NVML query not supported on this device");
            None
        }
        Err(e) => {
            tracing::warn!(?index, query, error = %e, "NVML query failed; field left empty");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// On a host without the NVIDIA driver (CI, this dev box) init must fail fast with a
    /// diagnosis; on a GPU host it must list the GPUs.
    #[test]
    fn init_fails_fast_with_diagnosis_or_lists_gpus() {
        let start = Instant::now();
        let result = NvmlInventory::init();
        let elapsed = start.elapsed();
        match result {
            Err(err @ GpuError::NoDriver { .. }) => {
                assert!(elapsed < Duration::from_secs(2), "init took {elapsed:?}");
                let text = err.to_string();
                let d = err.diagnosis().expect("NoDriver carries a diagnosis");
                assert!(d.checked.iter().any(|c| c.starts_with("NVML:")), "{text}");
                assert!(
                    d.checked.iter().any(|c| c.contains("/dev/nvidia")),
                    "{text}"
                );
                assert!(d.checked.iter().any(|c| c.contains("nvidia-smi")), "{text}");
                assert!(
                    d.checked.iter().any(|c| c.contains("kernel module")),
                    "{text}"
                );
                assert!(text.contains("dev.allow_cpu_inference: true"), "{text}");
                assert!(text.contains("development only"), "{text}");
            }
            Ok(inv) => {
                let devices = inv.snapshot().expect("snapshot on a GPU host");
                assert!(!devices.is_empty());
                assert!(devices
                    .iter()
                    .all(|d| d.total_bytes > 0 && !d.uuid.is_empty()));
                assert!(inv.describe().starts_with("nvml (driver "));
            }
            Err(other) => panic!("unexpected NVML init result: {other}"),
        }
    }
}
