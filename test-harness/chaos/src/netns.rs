//! A private test host for real non-loopback callers: a network namespace joined to this host
//! by a veth pair with addresses in a /30 of 10.213.0.0/16 chosen from the process id. Traffic
//! only ever goes between those two addresses. Dropping the [`NetNs`] removes the namespace
//! and the veth pair (also after a failure); stale ones of dead runs are removed on creation.

use std::process::{Command, Output};

use orch_harness::alive;

const PREFIX: &str = "llorch-chaos-";

/// The namespace and its veth pair.
#[derive(Debug)]
pub struct NetNs {
    /// Namespace name.
    pub name: String,
    /// Host-side interface.
    pub host_if: String,
    /// Host-side address (the daemon binds it).
    pub host_ip: String,
    /// Namespace-side address (the remote caller).
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<Output, String> {
    Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))
}

fn ip_ok(args: &[&str]) -> Result<(), String> {
    let out = ip(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespaces cannot be made here, with the fix; `None` when they can.
pub fn unavailable() -> Option<String> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "the auth matrix needs root to create a network namespace for a real non-loopback caller; run the test as root (e.g. in the CI container)".into(),
        );
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed ({}); network namespaces are unavailable (needs CAP_SYS_ADMIN and iproute2: apt-get install -y iproute2)",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "`ip` is not available ({e}); install iproute2: apt-get install -y iproute2"
        )),
    }
}

fn remove_stale() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("lch{pid}")]);
        }
    }
}

impl NetNs {
    /// Creates the namespace and the veth pair.
    pub fn create() -> Result<Self, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        remove_stale();
        let pid = std::process::id();
        let used = ip(&["-4", "-o", "addr"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // A /30 per pid; skip any that is in use on this host.
        let mut chosen = None;
        for k in 0..64u32 {
            let n = (pid.wrapping_add(k * 7919)) % 16384;
            let (b, c) = (n / 64, (n % 64) * 4);
            let net = format!("10.213.{b}.{c}");
            let host_ip = format!("10.213.{b}.{}", c + 1);
            let ns_ip = format!("10.213.{b}.{}", c + 2);
            if !used.contains(&format!("{host_ip}/"))
                && !used.contains(&format!("{ns_ip}/"))
                && !used.contains(&format!("{net}/"))
            {
                chosen = Some((host_ip, ns_ip));
                break;
            }
        }
        let (host_ip, ns_ip) = chosen.ok_or("no free /30 in 10.213.0.0/16")?;
        let me = Self {
            name: format!("{PREFIX}{pid}"),
            host_if: format!("lch{pid}"),
            host_ip,
            ns_ip,
        };
        let peer = format!("lcn{pid}");
        // From here on, Drop cleans up whatever was made.
        ip_ok(&["netns", "add", &me.name])?;
        ip_ok(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip_ok(&["link", "set", &peer, "netns", &me.name])?;
        ip_ok(&[
            "addr",
            "add",
            &format!("{}/30", me.host_ip),
            "dev",
            &me.host_if,
        ])?;
        ip_ok(&["link", "set", &me.host_if, "up"])?;
        ip_ok(&[
            "netns",
            "exec",
            &me.name,
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.ns_ip),
            "dev",
            &peer,
        ])?;
        ip_ok(&["netns", "exec", &me.name, "ip", "link", "set", &peer, "up"])?;
        ip_ok(&["netns", "exec", &me.name, "ip", "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// A command run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
