//! `llorch artifacts put|get|ls`.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use orch_api_types::{Artifact, ArtifactList, ArtifactMeta, ContentEncoding};
use reqwest::Method;
use serde_json::json;

use super::{ms_ago, now_ms, parse, print_json, read_stdin, seg, wire_name, LONG};
use crate::cli::ArtifactsCmd;
use crate::client::Client;
use crate::error::CliError;

/// Runs one artifacts subcommand.
pub async fn run(client: &Client, cmd: ArtifactsCmd, json_out: bool) -> Result<(), CliError> {
    match cmd {
        ArtifactsCmd::Put {
            file,
            kind,
            tag,
            parent,
            meta,
        } => {
            let bytes = match file.as_deref() {
                None => read_stdin()?,
                Some(p) if p == Path::new("-") => read_stdin()?,
                Some(p) => std::fs::read(p)
                    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", p.display())))?,
            };
            let (content, encoding) = match String::from_utf8(bytes) {
                Ok(s) => (s, "utf8"),
                Err(e) => (
                    base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                    "base64",
                ),
            };
            let mut metadata = serde_json::Map::new();
            for m in meta {
                let (k, v) = m
                    .split_once('=')
                    .ok_or_else(|| CliError::usage(format!("--meta `{m}` is not KEY=VALUE")))?;
                metadata.insert(k.to_owned(), json!(v));
            }
            // Built as JSON so that a parent not given stays absent.
            let mut req = json!({
                "kind": kind, "content": content, "encoding": encoding,
                "tags": tag, "metadata": metadata,
            });
            if let Some(p) = parent {
                req["parent"] = json!(p);
            }
            let path = "/v1/artifacts";
            let v = client
                .call_json(Method::POST, path, Some(&req), Some(LONG))
                .await?;
            if json_out {
                print_json(&v, true);
            } else {
                let a: ArtifactMeta = parse(&v, path)?;
                println!("{}", a.id);
                eprintln!("[stored; download: {}]", a.url);
            }
        }
        ArtifactsCmd::Get { id, output } => {
            let path = format!("/v1/artifacts/{}", seg(&id));
            let v = client.get_json(&path).await?;
            if json_out {
                print_json(&v, true);
                return Ok(());
            }
            let a: Artifact = parse(&v, &path)?;
            let bytes = match (a.encoding, a.content) {
                (ContentEncoding::Base64, serde_json::Value::String(s)) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(&s)
                        .map_err(|e| {
                            CliError::usage(format!(
                                "the artifact's base64 content is invalid: {e}"
                            ))
                        })?
                }
                (ContentEncoding::Utf8, serde_json::Value::String(s)) => s.into_bytes(),
                // A JSON artifact (or an unexpected shape): its JSON text.
                (_, v) => serde_json::to_vec(&v).unwrap_or_default(),
            };
            match output {
                Some(p) => {
                    std::fs::write(&p, &bytes).map_err(|e| {
                        CliError::usage(format!("cannot write {}: {e}", p.display()))
                    })?;
                    eprintln!("[wrote {} bytes to {}]", bytes.len(), p.display());
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)
                        .and_then(|_| out.flush())
                        .map_err(|e| CliError::usage(format!("cannot write to stdout: {e}")))?;
                }
            }
        }
        ArtifactsCmd::Ls { tag, kind } => {
            let mut q = Vec::new();
            if let Some(t) = tag {
                q.push(format!("tag={}", seg(&t)));
            }
            if let Some(k) = kind {
                q.push(format!("kind={}", seg(&k)));
            }
            let path = if q.is_empty() {
                "/v1/artifacts".to_owned()
            } else {
                format!("/v1/artifacts?{}", q.join("&"))
            };
            let v = client.get_json(&path).await?;
            if json_out {
                print_json(&v, true);
                return Ok(());
            }
            let list: ArtifactList = parse(&v, &path)?;
            let now = now_ms();
            for a in &list.artifacts {
                println!(
                    "{}  {:<10} {:>9} B  {:>12}  {}",
                    a.id,
                    wire_name(&a.kind),
                    a.size,
                    ms_ago(now, Some(a.created_ms)),
                    a.tags.join(",")
                );
            }
        }
    }
    Ok(())
}
