//! Print the NVML GPU snapshot as JSON, or the diagnosis (exit code 2) when there is no
//! usable NVIDIA driver/GPU.
//!
//! `cargo run -p orch-gpu-inventory --example gpu_probe`

use std::process::ExitCode;

use orch_gpu_inventory::{GpuError, GpuInventory, NvmlInventory};

fn main() -> ExitCode {
    // Partial per-device query failures are logged as tracing warnings; show them on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let inventory = match NvmlInventory::init() {
        Ok(inv) => inv,
        Err(err @ (GpuError::NoDriver { .. } | GpuError::NoDevices { .. })) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let devices = match inventory.snapshot() {
        Ok(devices) => devices,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = serde_json::json!({
        "inventory": inventory.describe(),
        "devices": devices,
    });
    match serde_json::to_string_pretty(&report) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: cannot serialise snapshot: {err}");
            ExitCode::FAILURE
        }
    }
}
