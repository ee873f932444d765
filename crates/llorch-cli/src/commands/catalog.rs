//! `llorch catalog list|show|register|verify|state|delete`.

use std::time::Duration;

use orch_api_types::{CatalogList, ModelState, SetModelStateRequest};
use reqwest::Method;
use serde_json::json;

use super::{body, parse, print_json, seg, wire_name, LONG};
use crate::cli::CatalogCmd;
use crate::client::Client;
use crate::error::CliError;

/// Runs one catalog subcommand; replies other than the list are printed as JSON.
pub async fn run(client: &Client, cmd: CatalogCmd, json_out: bool) -> Result<(), CliError> {
    let t = Some(Duration::from_secs(60));
    let v = match cmd {
        CatalogCmd::List => {
            let path = "/v1/catalog/models";
            let v = client.get_json(path).await?;
            if !json_out {
                let list: CatalogList = parse(&v, path)?;
                if list.models.is_empty() && list.pulls.is_empty() {
                    println!("(no models registered; `llorch pull hf:ORG/REPO:QUANT` or `llorch catalog register ID PATH`)");
                }
                for j in &list.pulls {
                    println!(
                        "{:<24} {:<8} {}  ({})",
                        j.id,
                        "pulling",
                        j.reference,
                        super::pull::progress_line(j)
                    );
                }
                for m in list.models {
                    println!(
                        "{:<24} {:<8} {}  {}",
                        m.id,
                        wire_name(&m.state),
                        m.reference,
                        if m.served_by.is_empty() {
                            String::new()
                        } else {
                            format!("(pools: {})", m.served_by.join(", "))
                        }
                    );
                }
                return Ok(());
            }
            v
        }
        CatalogCmd::Show { id } => {
            client
                .get_json(&format!("/v1/catalog/models/{}", seg(&id)))
                .await?
        }
        CatalogCmd::Register {
            id,
            reference,
            digest,
            signature,
            sbom,
        } => {
            // Built as JSON so that options not given stay absent.
            let mut req = json!({ "id": id, "ref": reference });
            if let Some(d) = digest {
                req["digest"] = json!(d);
            }
            for (k, p) in [("signature", signature), ("sbom", sbom)] {
                if let Some(p) = p {
                    let text = std::fs::read_to_string(&p).map_err(|e| {
                        CliError::usage(format!("cannot read {k} file {}: {e}", p.display()))
                    })?;
                    req[k] = json!(text);
                }
            }
            client
                .call_json(Method::POST, "/v1/catalog/models", Some(&req), t)
                .await?
        }
        CatalogCmd::Verify { id } => {
            let pb = client.spinner();
            pb.set_message(format!("hashing model {id}"));
            let r = client
                .call_json(
                    Method::POST,
                    &format!("/v1/catalog/models/{}/verify", seg(&id)),
                    None,
                    Some(LONG),
                )
                .await;
            pb.finish_and_clear();
            r?
        }
        CatalogCmd::State { id, state } => {
            let state = model_state(&state)?;
            client
                .call_json(
                    Method::POST,
                    &format!("/v1/catalog/models/{}/state", seg(&id)),
                    Some(&body(&SetModelStateRequest { state })?),
                    t,
                )
                .await?
        }
        CatalogCmd::Delete { id } => {
            let v = client
                .call_json(
                    Method::DELETE,
                    &format!("/v1/catalog/models/{}", seg(&id)),
                    None,
                    t,
                )
                .await?;
            if !json_out && v.is_null() {
                println!("deleted {id}");
                return Ok(());
            }
            v
        }
    };
    print_json(&v, json_out);
    Ok(())
}

/// `Active` or `Retired` (clap already refused anything else).
fn model_state(s: &str) -> Result<ModelState, CliError> {
    match s {
        "Active" => Ok(ModelState::Active),
        "Retired" => Ok(ModelState::Retired),
        other => Err(CliError::usage(format!(
            "state `{other}` is not Active or Retired"
        ))),
    }
}
