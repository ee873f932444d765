//! The outbound policy at work: every outbound action the daemon takes (an engine endpoint off
//! loopback, a model URL) passes [`Policy::enforce`] and lands in the audit log
//! (`<data_dir>/audit.jsonl`). See docs/STATE.md.

use std::sync::Arc;

use orch_api_types::{ErrorCode, ErrorEnvelope};
use orch_config::Config;
use orch_store::policy::{ACTION_ENGINE_ENDPOINT, ACTION_MODEL_DOWNLOAD};
use orch_store::{Decision, ModelState, Policy, Store};

use crate::catalog::{is_remote_ref, local_path, Catalog};
use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::storage::{blocking, store_err};

/// The outbound policy and the audit log it writes to.
pub struct Outbound {
    store: Arc<Store>,
    policy: Policy,
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Outbound {
    /// The policy from `policy.outbound`.
    pub fn new(cfg: &Config, store: Arc<Store>) -> anyhow::Result<Self> {
        let out = &cfg.policy.outbound;
        let policy = Policy::new(out.allow.clone(), out.deny.clone(), out.no_downloads)
            .map_err(|e| anyhow::anyhow!("policy.outbound: {e}"))?;
        Ok(Self { store, policy })
    }

    /// [`Policy::enforce`] with the audit log, off the async threads (the audit line is fsynced).
    pub async fn enforce(&self, url: &str, action: &'static str) -> Result<Decision, ServiceError> {
        let store = self.store.clone();
        let policy = self.policy.clone();
        let url = url.to_owned();
        blocking(move || {
            policy
                .enforce(store.audit(), &url, action, now_ms())
                .map_err(store_err)
        })
        .await
    }

    /// Checks every outbound action the configuration implies, before anything is started:
    /// engine endpoints off loopback pass the policy (`engine_endpoint`), and pools whose
    /// `model` is a catalog id get the model's local path (a URL reference passes the policy as
    /// `model_download`, then is refused: the daemon does not download models).
    pub async fn prepare_config(&self, cfg: &mut Config, catalog: &Catalog) -> anyhow::Result<()> {
        for p in &cfg.pools {
            let Some(ep) = &p.endpoint else { continue };
            let host = url::Url::parse(ep)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            if is_loopback_host(&host) {
                continue;
            }
            let d = self
                .enforce(ep, ACTION_ENGINE_ENDPOINT)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot record the outbound decision for pool `{}`: {}",
                        p.id,
                        e.body.message
                    )
                })?;
            if !d.allowed {
                anyhow::bail!(
                    "pool `{}`: {}; allow it in policy.outbound.allow (and keep it out of \
                     policy.outbound.deny) or remove the pool",
                    p.id,
                    d.reason
                );
            }
        }
        for i in 0..cfg.pools.len() {
            let Some(model) = cfg.pools[i].model.clone() else {
                continue;
            };
            if std::path::Path::new(&model).exists() {
                continue;
            }
            let Some(m) = catalog.cached(&model) else {
                continue;
            };
            let pool_id = cfg.pools[i].id.clone();
            if is_remote_ref(&m.reference) {
                let d = self
                    .enforce(&m.reference, ACTION_MODEL_DOWNLOAD)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.body.message))?;
                if !d.allowed {
                    anyhow::bail!(
                        "pool `{pool_id}` names catalog model `{model}`: {}",
                        d.reason
                    );
                }
                anyhow::bail!(
                    "pool `{pool_id}` names catalog model `{model}`, whose reference is the URL {}; \
                     the daemon does not download models: download the file, register its local \
                     path (POST /v1/catalog/models), and restart",
                    orch_store::redact_url(&m.reference)
                );
            }
            let Some(path) = local_path(&m.reference) else {
                anyhow::bail!("pool `{pool_id}`: catalog model `{model}` has no usable local path");
            };
            if m.state == ModelState::Retired {
                tracing::warn!(pool_id = %pool_id, model_id = %model, "pool serves a Retired catalog model; tasks naming the catalog id get MODEL_RETIRED");
            }
            tracing::info!(pool_id = %pool_id, model_id = %model, path = %path.display(), "pool model resolved from the catalog");
            cfg.pools[i].model = Some(path.to_string_lossy().into_owned());
        }
        // llama-server refuses slot actions (erase, which frees a session's KV) unless it was
        // started with --slot-save-path; give launched llama.cpp pools one in the data dir.
        let slots_dir = self.store.data_dir().join("slots");
        for p in cfg
            .pools
            .iter_mut()
            .filter(|p| p.endpoint.is_none() && p.engine == orch_config::EngineKind::Llamacpp)
        {
            if !p.flags.iter().any(|f| f.starts_with("--slot-save-path")) {
                std::fs::create_dir_all(&slots_dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", slots_dir.display()))?;
                p.flags.push("--slot-save-path".into());
                p.flags.push(slots_dir.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }

    /// The error for a policy refusal (`POLICY_DENIED`).
    pub fn denied(d: &Decision) -> ServiceError {
        ServiceError::from_envelope(ErrorEnvelope::new(
            ErrorCode::PolicyDenied,
            format!(
                "{}; change policy.outbound (allow/deny/no_downloads) if this should be allowed",
                d.reason
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("10.0.0.20"));
        assert!(!is_loopback_host("example.com"));
    }
}
