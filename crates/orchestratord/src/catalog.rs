//! The model catalog as the daemon uses it: every catalog write goes through [`Catalog`], which
//! writes the store and then its in-memory mirror, so routing (`MODEL_RETIRED`, catalog ids as
//! `model_ref`) never blocks on SQLite and never sees a stale model. See docs/STATE.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use orch_api_types::ErrorCode;
use orch_pool_manager::PoolManager;
use orch_store::{CatalogModel, ModelState, NewModel, Store, VerifyReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::storage::{blocking, store_err};

/// `model_state{model_id,state}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelStateLabels {
    /// Catalog id.
    pub model_id: String,
    /// `Active` or `Retired`.
    pub state: String,
}

/// The catalog: the store's table plus its in-memory mirror and `model_state` gauge.
pub struct Catalog {
    store: Arc<Store>,
    mirror: RwLock<BTreeMap<String, CatalogModel>>,
    /// `model_state{model_id,state}`: 1 for a model's current state, 0 for the other.
    model_state: Family<ModelStateLabels, Gauge>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// Whether a catalog reference is a URL (as opposed to a local file).
pub fn is_remote_ref(r: &str) -> bool {
    let l = r.get(..8).unwrap_or(r).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// The local file a catalog reference names (`/abs/path` or `file://`).
pub fn local_path(reference: &str) -> Option<PathBuf> {
    if reference.to_ascii_lowercase().starts_with("file://") {
        return url::Url::parse(reference).ok()?.to_file_path().ok();
    }
    if is_remote_ref(reference) {
        return None;
    }
    Some(PathBuf::from(reference))
}

impl Catalog {
    /// Loads the catalog from the store.
    pub async fn open(store: Arc<Store>) -> anyhow::Result<Self> {
        let s = store.clone();
        let models = tokio::task::spawn_blocking(move || s.catalog().list())
            .await?
            .map_err(|e| anyhow::anyhow!("reading the model catalog: {e}"))?;
        let me = Self {
            store,
            mirror: RwLock::new(BTreeMap::new()),
            model_state: Family::default(),
        };
        for m in models {
            me.mirror_one(m);
        }
        Ok(me)
    }

    /// Adds `model_state` to the Prometheus registry.
    pub fn register_metrics(&self, reg: &mut Registry) {
        reg.register(
            "model_state",
            "Catalog models by lifecycle state (1 = the model's current state)",
            self.model_state.clone(),
        );
    }

    fn set_gauge(&self, id: &str, state: Option<ModelState>) {
        for s in [ModelState::Active, ModelState::Retired] {
            let labels = ModelStateLabels {
                model_id: id.to_owned(),
                state: s.as_str().to_owned(),
            };
            match state {
                Some(cur) => {
                    self.model_state
                        .get_or_create(&labels)
                        .set(i64::from(cur == s));
                }
                None => {
                    self.model_state.remove(&labels);
                }
            }
        }
    }

    fn mirror_one(&self, m: CatalogModel) {
        self.set_gauge(&m.id, Some(m.state));
        self.mirror
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.id.clone(), m);
    }

    /// Registers a model (409 `CONFLICT` for a taken id).
    pub async fn register(&self, new: NewModel) -> Result<CatalogModel, ServiceError> {
        let store = self.store.clone();
        let m =
            blocking(move || store.catalog().register(new, now_ms()).map_err(store_err)).await?;
        self.mirror_one(m.clone());
        Ok(m)
    }

    /// Removes a model from the catalog (its file is untouched).
    pub async fn delete(&self, id: &str) -> Result<(), ServiceError> {
        let store = self.store.clone();
        let id2 = id.to_owned();
        blocking(move || store.catalog().delete(&id2).map_err(store_err)).await?;
        self.set_gauge(id, None);
        self.mirror
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Hashes the model's file against its digest and records the outcome on the model.
    pub async fn verify(&self, id: &str) -> Result<(VerifyReport, CatalogModel), ServiceError> {
        let store = self.store.clone();
        let id = id.to_owned();
        let (report, model) = blocking(move || {
            let catalog = store.catalog();
            let report = catalog.verify(&id, now_ms()).map_err(store_err)?;
            let model = catalog.get(&id).map_err(store_err)?;
            Ok((report, model))
        })
        .await?;
        self.mirror_one(model.clone());
        Ok((report, model))
    }

    /// Sets a model `Active` or `Retired`.
    pub async fn set_state(
        &self,
        id: &str,
        state: ModelState,
    ) -> Result<CatalogModel, ServiceError> {
        let store = self.store.clone();
        let id = id.to_owned();
        let m = blocking(move || {
            store
                .catalog()
                .set_state(&id, state, now_ms())
                .map_err(store_err)
        })
        .await?;
        self.mirror_one(m.clone());
        Ok(m)
    }

    /// One model (invalid id: `INVALID_PARAMS`; unknown: `NOT_FOUND`).
    pub fn get(&self, id: &str) -> Result<CatalogModel, ServiceError> {
        orch_store::validate_id("model id", id).map_err(store_err)?;
        self.cached(id)
            .ok_or_else(|| ServiceError::not_found(format!("catalog model '{id}' not found")))
    }

    /// One model, if registered.
    pub fn cached(&self, id: &str) -> Option<CatalogModel> {
        self.mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every model, ordered by id.
    pub fn list(&self) -> Vec<CatalogModel> {
        self.mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The catalog model whose reference is the file `path`, if any.
    pub fn by_path(&self, path: &str) -> Option<CatalogModel> {
        self.list()
            .into_iter()
            .find(|m| local_path(&m.reference).is_some_and(|p| p == std::path::Path::new(path)))
    }

    /// Pools whose configured model is the file `reference` names.
    pub fn served_by(pools: &PoolManager, reference: &str) -> Vec<String> {
        let Some(path) = local_path(reference) else {
            return Vec::new();
        };
        pools
            .pools()
            .iter()
            .filter(|p| {
                p.config()
                    .model
                    .as_deref()
                    .is_some_and(|m| std::path::Path::new(m) == path)
            })
            .map(|p| p.id().to_owned())
            .collect()
    }

    /// Resolves a task's `model_ref` against the catalog: `Ok(None)` when it is no catalog id,
    /// `Ok(Some(path))` (the model file, to route on) for an Active model, `MODEL_RETIRED`
    /// naming an Active alternative for a Retired one.
    pub fn route(
        &self,
        model_ref: &str,
        pools: &PoolManager,
    ) -> Result<Option<String>, ServiceError> {
        let Some(m) = self.cached(model_ref) else {
            return Ok(None);
        };
        if m.state == ModelState::Active {
            return Ok(Some(
                local_path(&m.reference)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or(m.reference),
            ));
        }
        // Prefer alternatives a pool serves, that did not fail verification, of the same file.
        let mut alts: Vec<(bool, bool, bool, String, Vec<String>)> = self
            .list()
            .into_iter()
            .filter(|a| a.state == ModelState::Active)
            .map(|a| {
                let served = Self::served_by(pools, &a.reference);
                let failed = a.last_verified.as_ref().is_some_and(|v| !v.ok);
                (
                    served.is_empty(),
                    failed,
                    a.reference != m.reference,
                    a.id,
                    served,
                )
            })
            .collect();
        alts.sort();
        let msg = match alts.first() {
            Some((_, _, _, id, served)) => {
                let by = if served.is_empty() {
                    " (Active; no pool serves it yet)".to_owned()
                } else {
                    format!(" (Active, served by pool {})", served.join(", "))
                };
                format!(
                    "catalog model `{model_ref}` is Retired; use `{id}` instead{by}, or set it \
                     Active again with POST /v1/catalog/models/{model_ref}/state {{\"state\":\"Active\"}}"
                )
            }
            None => format!(
                "catalog model `{model_ref}` is Retired and no Active model is registered; set \
                 it Active again with POST /v1/catalog/models/{model_ref}/state \
                 {{\"state\":\"Active\"}} or register another model"
            ),
        };
        Err(ServiceError::new(ErrorCode::ModelRetired, msg))
    }
}
