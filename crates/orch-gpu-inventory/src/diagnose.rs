//! Actionable diagnosis when NVML / the NVIDIA driver is unusable: the daemon refuses to start
//! and prints what it checked and how to fix it (docs/PLACEMENT.md, "Where engines run").

use std::fmt;
use std::path::{Path, PathBuf};

use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

/// What was checked, what is wrong, and how to fix it. `Display` prints a multi-line text
/// meant for the user.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Diagnosis {
    /// One line per check performed, with its outcome.
    pub checked: Vec<String>,
    /// The conclusion, in one sentence.
    pub problem: String,
    /// Steps to fix it, most likely first.
    pub fixes: Vec<String>,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "problem: {}", self.problem)?;
        writeln!(f, "checked:")?;
        for c in &self.checked {
            writeln!(f, "  - {c}")?;
        }
        write!(f, "how to fix:")?;
        for (i, fix) in self.fixes.iter().enumerate() {
            write!(f, "\n  {}. {fix}", i + 1)?;
        }
        Ok(())
    }
}

/// Runs the checks a user would: is libnvidia-ml.so loadable (NVML init error kinds:
/// LibraryNotFound / DriverNotLoaded / NoPermission ...), does /dev/nvidia0 exist, is
/// `nvidia-smi` on PATH, how many devices; returns a Diagnosis whose text says what was
/// checked and how to fix (install the NVIDIA driver package, load the kernel module
/// `modprobe nvidia`, add the user to the video group, check `nvidia-smi`; or, for tests and
/// CPU-only dev, set `dev.allow_cpu_inference: true` in the config — development only).
///
/// Only looks at files and `PATH`; runs no program, so it cannot hang.
pub fn diagnose(err: &NvmlError) -> Diagnosis {
    build(Failure::Init(err), &HostFacts::probe())
}

/// Diagnosis for "NVML initialised but reports zero devices".
pub(crate) fn diagnose_no_devices() -> Diagnosis {
    build(Failure::NoDevices, &HostFacts::probe())
}

#[derive(Clone, Copy)]
enum Failure<'a> {
    Init(&'a NvmlError),
    NoDevices,
}

/// What the host looks like from the outside of NVML.
#[derive(Debug, Default)]
struct HostFacts {
    /// First line of `/proc/driver/nvidia/version` (present when the kernel module is loaded).
    kernel_module: Option<String>,
    /// `/dev/nvidia<N>` device nodes.
    dev_nodes: Vec<String>,
    /// Where `nvidia-smi` was found on `PATH`.
    nvidia_smi: Option<PathBuf>,
    /// Running inside a Docker/Podman container.
    in_container: bool,
}

impl HostFacts {
    fn probe() -> Self {
        let kernel_module = std::fs::read_to_string("/proc/driver/nvidia/version")
            .ok()
            .map(|s| s.lines().next().unwrap_or_default().trim().to_string());
        let mut dev_nodes: Vec<String> = std::fs::read_dir("/dev")
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| {
                        n.strip_prefix("nvidia").is_some_and(|rest| {
                            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
                        })
                    })
                    .map(|n| format!("/dev/{n}"))
                    .collect()
            })
            .unwrap_or_default();
        dev_nodes.sort();
        let nvidia_smi = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nvidia-smi"))
                .find(|p| p.is_file())
        });
        let in_container =
            Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists();
        Self {
            kernel_module,
            dev_nodes,
            nvidia_smi,
            in_container,
        }
    }
}

fn build(failure: Failure<'_>, facts: &HostFacts) -> Diagnosis {
    let mut checked = vec![match failure {
        Failure::Init(err) => {
            format!("NVML: load libnvidia-ml.so.1 and call nvmlInit: failed ({err})")
        }
        Failure::NoDevices => "NVML: initialised, but the device count is 0".to_string(),
    }];
    checked.push(match &facts.kernel_module {
        Some(v) if v.is_empty() => "kernel module: /proc/driver/nvidia/version present".to_string(),
        Some(v) => format!("kernel module: loaded ({v})"),
        None => "kernel module: /proc/driver/nvidia/version absent (nvidia module not loaded)"
            .to_string(),
    });
    checked.push(if facts.dev_nodes.is_empty() {
        "device nodes: no /dev/nvidia0 (or any /dev/nvidia<N>)".to_string()
    } else {
        format!("device nodes: {}", facts.dev_nodes.join(", "))
    });
    checked.push(match &facts.nvidia_smi {
        Some(p) => format!("nvidia-smi: found on PATH at {}", p.display()),
        None => "nvidia-smi: not found on PATH".to_string(),
    });
    if facts.in_container {
        checked.push("container: running inside a container".to_string());
    }

    let container_fix =
        "Inside a container, start it with GPU access: `docker run --gpus all ...` \
                         (needs the NVIDIA Container Toolkit on the host).";
    let install_fix = "Install the NVIDIA driver package for your distribution (Ubuntu: \
                       `sudo ubuntu-drivers install` or `sudo apt install nvidia-driver-550`; \
                       Fedora: `akmod-nvidia` from RPM Fusion), then reboot.";
    let mut fixes: Vec<String> = Vec::new();
    let problem = match failure {
        Failure::Init(
            NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound,
        ) => {
            if facts.in_container {
                fixes.push(container_fix.to_string());
            }
            if facts.kernel_module.is_some() {
                fixes.push(
                    "The kernel module is loaded, so install the matching user-space libraries \
                     (e.g. `libnvidia-compute-<version>`) or make them visible to the loader \
                     (`ldconfig -p | grep libnvidia-ml`)."
                        .to_string(),
                );
                "the NVML library libnvidia-ml.so.1 could not be loaded although the nvidia \
                 kernel module is loaded: the driver's user-space libraries are missing"
                    .to_string()
            } else {
                fixes.push(install_fix.to_string());
                "the NVML library libnvidia-ml.so.1 could not be loaded: the NVIDIA driver is \
                 not installed"
                    .to_string()
            }
        }
        Failure::Init(NvmlError::DriverNotLoaded) => {
            fixes.push(
                "Load the kernel module: `sudo modprobe nvidia` (if that fails, read \
                 `sudo dmesg | grep -i nvidia`; with Secure Boot the module must be signed)."
                    .to_string(),
            );
            fixes.push("If the driver was just installed or upgraded, reboot.".to_string());
            "libnvidia-ml.so.1 is installed but the NVIDIA kernel driver is not loaded".to_string()
        }
        Failure::Init(NvmlError::NoPermission) => {
            fixes.push(
                "Add the user to the video group: `sudo usermod -aG video $USER`, then log out \
                 and back in; check the permissions with `ls -l /dev/nvidia*`."
                    .to_string(),
            );
            "NVML has no permission to talk to the driver (the /dev/nvidia* device nodes are \
             not accessible to this user)"
                .to_string()
        }
        Failure::Init(NvmlError::LibRmVersionMismatch) => {
            fixes.push(
                "Reboot so that the loaded kernel module matches the installed driver libraries."
                    .to_string(),
            );
            "the NVIDIA library and the loaded kernel module have different versions (driver \
             upgraded without a reboot)"
                .to_string()
        }
        Failure::Init(err) => {
            fixes.push(
                "Run `nvidia-smi` and fix what it reports; `sudo dmesg | grep -i nvidia` shows \
                 kernel-side errors."
                    .to_string(),
            );
            format!("NVML initialisation failed: {err}")
        }
        Failure::NoDevices => {
            if facts.in_container {
                fixes.push(container_fix.to_string());
            }
            fixes.push(
                "Check that the GPU is present and powered: `lspci | grep -i nvidia` must list \
                 it, and `nvidia-smi` must show it."
                    .to_string(),
            );
            "the NVIDIA driver is loaded but reports no GPU".to_string()
        }
    };
    fixes.push(match &facts.nvidia_smi {
        Some(_) => {
            "Verify with `nvidia-smi`: it must list your GPUs before llama-orch can use them."
                .to_string()
        }
        None => "Verify with `nvidia-smi` (it ships with the driver package and is not on PATH \
                 now): it must list your GPUs before llama-orch can use them."
            .to_string(),
    });
    fixes.push(
        "For tests and CPU-only development only: set `dev.allow_cpu_inference: true` in the \
         config to run engines on the CPU. This is for development only; inference in \
         production is GPU-only."
            .to_string(),
    );
    Diagnosis {
        checked,
        problem,
        fixes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(err: NvmlError, facts: &HostFacts) -> String {
        build(Failure::Init(&err), facts).to_string()
    }

    #[test]
    fn missing_library_says_install_driver_and_dev_escape_hatch() {
        let t = text(NvmlError::LibraryNotFound, &HostFacts::default());
        assert!(t.contains("libnvidia-ml.so.1 could not be loaded"), "{t}");
        assert!(t.contains("Install the NVIDIA driver package"), "{t}");
        assert!(t.contains("/dev/nvidia0"), "{t}");
        assert!(t.contains("nvidia-smi: not found on PATH"), "{t}");
        assert!(t.contains("dev.allow_cpu_inference: true"), "{t}");
        assert!(t.contains("development only"), "{t}");
    }

    #[test]
    fn fixes_follow_the_error_kind() {
        let loaded = HostFacts {
            kernel_module: Some("NVRM version: 550.54.14".into()),
            dev_nodes: vec!["/dev/nvidia0".into()],
            nvidia_smi: Some(PathBuf::from("nvidia-smi")),
            in_container: true,
        };
        let t = text(NvmlError::DriverNotLoaded, &HostFacts::default());
        assert!(t.contains("sudo modprobe nvidia"), "{t}");
        let t = text(NvmlError::NoPermission, &loaded);
        assert!(
            t.contains("video group") && t.contains("/dev/nvidia0"),
            "{t}"
        );
        let t = text(NvmlError::LibRmVersionMismatch, &loaded);
        assert!(t.contains("Reboot"), "{t}");
        let t = text(NvmlError::LibraryNotFound, &loaded);
        assert!(
            t.contains("--gpus all") && t.contains("user-space libraries"),
            "{t}"
        );
        let t = build(Failure::NoDevices, &loaded).to_string();
        assert!(t.contains("reports no GPU") && t.contains("lspci"), "{t}");
    }

    #[test]
    fn display_is_multi_line() {
        let d = build(Failure::Init(&NvmlError::Unknown), &HostFacts::default());
        let t = d.to_string();
        assert!(t.starts_with("problem: NVML initialisation failed"), "{t}");
        assert_eq!(
            t.lines().count(),
            1 + 1 + d.checked.len() + 1 + d.fixes.len()
        );
    }
}
