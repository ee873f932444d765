//! ARCHITECTURE.md's code map, checked against `cargo metadata`.
//!
//! The table under "## Code map" has a `path` column and two dependency columns. Crate names
//! in backticks in the dependency columns are exact package names; words outside backticks (and
//! backticked text with a space in it) are for the reader. For every workspace member (found by
//! its directory in the `path` column):
//!
//! - its normal and build dependencies on other workspace crates must be named in "may depend
//!   on" (external crates named there are the notable ones, not a complete list, but each must be
//!   a package of this workspace's resolve, so a renamed or misspelt name fails);
//! - nothing named in "must never depend on" may be among its normal or build dependencies,
//!   direct or transitive; the words "any other workspace crate" there forbid every other member;
//! - a row marked "(not shipped)", "(tests only)" or "(bench only)" in that column is a crate no
//!   shipped crate (one without such a mark) may depend on, even transitively.
//!
//! Every member must have exactly one row, and a row whose path is under `crates/` or holds a
//! `Cargo.toml` must be a member. Dev-dependencies are not checked. The resolve is
//! `cargo metadata --offline --filter-platform <host>` (no network; dependencies of other
//! platforms only are not seen), with features unified across the workspace as cargo builds it.
//!
//! Inside each crate, the top-level modules must import each other without cycles, and where
//! ARCHITECTURE.md orders a crate's modules in layers ("Module layers of …"), never upwards
//! (`architecture/modules.rs`); no source file is over 1 000 lines before its tests
//! (`architecture/file_size.rs`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

#[path = "architecture/file_size.rs"]
mod file_size;
#[path = "architecture/modules.rs"]
mod modules;

/// One row of the code map.
#[derive(Debug)]
struct Row {
    /// 1-based line in ARCHITECTURE.md.
    line: usize,
    /// Backticked paths of the `path` cell, without a trailing `/`.
    paths: Vec<String>,
    /// Backticked names of the "may depend on" cell.
    may: BTreeSet<String>,
    /// Backticked names of the "must never depend on" cell.
    never: BTreeSet<String>,
    /// "any other workspace crate" in the "must never depend on" cell.
    never_other_members: bool,
    /// "(not shipped)", "(tests only)" or "(bench only)" in the "must never depend on" cell.
    not_shipped: bool,
}

/// The text inside backticks, in order, leaving out spans with a space (`llorch doctor`): a
/// crate name or a path has none.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .map(str::to_string)
        .collect()
}

/// The text outside backticks, lowercased.
fn prose(cell: &str) -> String {
    cell.split('`')
        .step_by(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_string()).collect()
}

/// Parses the first table after the "## Code map" heading.
fn parse_code_map(md: &str) -> Result<Vec<Row>, String> {
    let lines: Vec<&str> = md.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "## Code map")
        .ok_or("no \"## Code map\" heading")?;
    let mut table = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.starts_with("## "))
        .skip_while(|(_, l)| !l.trim_start().starts_with('|'))
        .take_while(|(_, l)| l.trim_start().starts_with('|'));
    let (_, header) = table.next().ok_or("no table under \"## Code map\"")?;
    let header: Vec<String> = cells(header).iter().map(|c| c.to_lowercase()).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or(format!("code map has no \"{name}\" column"))
    };
    let (path_c, may_c, never_c) = (
        col("path")?,
        col("may depend on")?,
        col("must never depend on")?,
    );
    let mut rows = Vec::new();
    for (i, line) in table {
        let c = cells(line);
        if c.iter().all(|c| {
            let d = c.trim_matches(':');
            !d.is_empty() && d.chars().all(|ch| ch == '-')
        }) {
            continue; // the |---| separator
        }
        if c.len() != header.len() {
            return Err(format!(
                "ARCHITECTURE.md:{}: {} cells, the header has {} (a `|` inside a cell?)",
                i + 1,
                c.len(),
                header.len()
            ));
        }
        let never_prose = prose(&c[never_c]);
        rows.push(Row {
            line: i + 1,
            paths: code_spans(&c[path_c])
                .into_iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            may: code_spans(&c[may_c]).into_iter().collect(),
            never: code_spans(&c[never_c]).into_iter().collect(),
            never_other_members: never_prose.contains("any other workspace crate"),
            not_shipped: ["not shipped", "tests only", "bench only"]
                .iter()
                .any(|m| never_prose.contains(m)),
        });
    }
    Ok(rows)
}

/// The resolved dependency graph, reduced to what the check needs.
#[derive(Debug)]
struct Graph {
    /// Workspace members: (package id, name, directory relative to the workspace root).
    members: Vec<(String, String, String)>,
    /// Package id → name, for every package in the resolve.
    names: HashMap<String, String>,
    /// Package id → its normal and build dependencies (not dev).
    deps: HashMap<String, Vec<String>>,
}

impl Graph {
    fn from_metadata(m: &Value) -> Result<Graph, String> {
        let root = PathBuf::from(m["workspace_root"].as_str().ok_or("no workspace_root")?);
        let mut names = HashMap::new();
        let mut dirs = HashMap::new();
        for p in m["packages"].as_array().ok_or("no packages")? {
            let id = p["id"].as_str().ok_or("package without id")?.to_string();
            names.insert(
                id.clone(),
                p["name"].as_str().unwrap_or_default().to_string(),
            );
            let manifest = Path::new(p["manifest_path"].as_str().unwrap_or_default());
            let dir = manifest.parent().unwrap_or(manifest);
            let rel = dir.strip_prefix(&root).unwrap_or(dir);
            dirs.insert(id, rel.to_string_lossy().replace('\\', "/"));
        }
        let members = m["workspace_members"]
            .as_array()
            .ok_or("no workspace_members")?
            .iter()
            .map(|id| {
                let id = id.as_str().unwrap_or_default().to_string();
                let name = names.get(&id).cloned().unwrap_or_default();
                let dir = dirs.get(&id).cloned().unwrap_or_default();
                (id, name, dir)
            })
            .collect();
        let mut deps = HashMap::new();
        for n in m["resolve"]["nodes"]
            .as_array()
            .ok_or("no resolve (--no-deps?)")?
        {
            let id = n["id"].as_str().unwrap_or_default().to_string();
            let out = n["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| k["kind"].as_str() != Some("dev"))
                })
                .filter_map(|d| d["pkg"].as_str().map(str::to_string))
                .collect();
            deps.insert(id, out);
        }
        Ok(Graph {
            members,
            names,
            deps,
        })
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.names.get(id).map(String::as_str).unwrap_or(id)
    }

    /// Every package reachable from `from` (not `from` itself), each with the path to it.
    fn reachable(&self, from: &str) -> Vec<(String, Vec<String>)> {
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = HashSet::from([from]);
        let mut order = Vec::new();
        while let Some(id) = queue.pop_front() {
            for d in self.deps.get(id).into_iter().flatten() {
                if seen.insert(d.as_str()) {
                    parent.insert(d.as_str(), id);
                    queue.push_back(d.as_str());
                    order.push(d.as_str());
                }
            }
        }
        order
            .into_iter()
            .map(|id| {
                let mut chain = vec![self.name(id).to_string()];
                let mut at = id;
                while let Some(p) = parent.get(at) {
                    chain.push(self.name(p).to_string());
                    at = p;
                }
                chain.reverse();
                (id.to_string(), chain)
            })
            .collect()
    }
}

/// Every disagreement between the code map and the graph. `has_manifest(path)` says whether a
/// row's path holds a `Cargo.toml`.
fn check(rows: &[Row], g: &Graph, has_manifest: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut errs = Vec::new();
    let member_names: BTreeSet<&str> = g.members.iter().map(|(_, n, _)| n.as_str()).collect();
    let known: HashSet<&str> = g.names.values().map(String::as_str).collect();

    for r in rows {
        for p in &r.paths {
            let is_member = g.members.iter().any(|(_, _, d)| d == p);
            if !is_member && (p.starts_with("crates/") || has_manifest(p)) {
                errs.push(format!(
                    "ARCHITECTURE.md:{}: row `{p}` is not a workspace member (renamed or removed?)",
                    r.line
                ));
            }
        }
    }

    let mut row_of: HashMap<&str, &Row> = HashMap::new();
    for (id, name, dir) in &g.members {
        let matching: Vec<&Row> = rows.iter().filter(|r| r.paths.contains(dir)).collect();
        match matching.as_slice() {
            [] => errs.push(format!(
                "workspace member `{name}` ({dir}) has no row in ARCHITECTURE.md's code map"
            )),
            [r] => {
                row_of.insert(id.as_str(), r);
            }
            more => errs.push(format!(
                "workspace member `{name}` ({dir}) has {} rows in the code map (lines {:?})",
                more.len(),
                more.iter().map(|r| r.line).collect::<Vec<_>>()
            )),
        }
    }

    for (id, name, dir) in &g.members {
        let Some(r) = row_of.get(id.as_str()) else {
            continue;
        };
        let at = format!("ARCHITECTURE.md:{} (`{dir}`)", r.line);
        for m in &r.may {
            if !known.contains(m.as_str()) {
                errs.push(format!(
                    "{at}: \"may depend on\" names `{m}`, which is no package in the resolve"
                ));
            }
            if r.never.contains(m) {
                errs.push(format!("{at}: `{m}` is in both dependency columns"));
            }
        }
        for d in g.deps.get(id).into_iter().flatten() {
            let dn = g.name(d);
            if member_names.contains(dn) && !r.may.contains(dn) {
                errs.push(format!(
                    "{at}: `{name}` depends on `{dn}`, which \"may depend on\" does not list"
                ));
            }
        }
        let forbidden = |n: &str| {
            r.never.contains(n) || (r.never_other_members && n != name && member_names.contains(n))
        };
        for (_, chain) in g.reachable(id) {
            let last = chain.last().map(String::as_str).unwrap_or_default();
            if forbidden(last) {
                errs.push(format!(
                    "{at}: `{name}` must never depend on `{last}`, but does: {}",
                    chain.join(" → ")
                ));
            }
        }
    }

    let not_shipped: BTreeSet<&str> = g
        .members
        .iter()
        .filter(|(id, _, _)| row_of.get(id.as_str()).is_some_and(|r| r.not_shipped))
        .map(|(_, n, _)| n.as_str())
        .collect();
    for (id, name, _) in &g.members {
        if not_shipped.contains(name.as_str()) || !row_of.contains_key(id.as_str()) {
            continue;
        }
        for (_, chain) in g.reachable(id) {
            let last = chain.last().map(String::as_str).unwrap_or_default();
            if not_shipped.contains(last) {
                errs.push(format!(
                    "shipped crate `{name}` depends on `{last}`, which the code map marks as \
                     not shipped: {}",
                    chain.join(" → ")
                ));
            }
        }
    }
    errs
}

fn workspace_root() -> PathBuf {
    // Cargo sets it when it runs the test; the compile-time value serves a binary run by hand.
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&manifest_dir)
        .parent()
        .expect("xtask sits in the workspace root")
        .to_path_buf()
}

fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .unwrap_or_else(|e| panic!("running `{rustc} -vV`: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .expect("`rustc -vV` prints the host triple")
}

fn cargo_metadata(root: &Path) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("running `{cargo} metadata`: {e}"));
    assert!(
        out.status.success(),
        "`cargo metadata` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn code_map_dependency_columns_match_cargo_metadata() {
    let root = workspace_root();
    let md = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rows = parse_code_map(&md).unwrap_or_else(|e| panic!("{e}"));
    // A parser that silently found nothing would pass everything.
    let core = rows
        .iter()
        .find(|r| r.paths.iter().any(|p| p == "crates/orch-core"))
        .expect("a row for crates/orch-core");
    assert!(core.never.contains("tokio"), "parsed: {core:?}");

    let g = Graph::from_metadata(&cargo_metadata(&root)).expect("metadata shape");
    let errs = check(&rows, &g, &|p| root.join(p).join("Cargo.toml").is_file());
    assert!(
        errs.is_empty(),
        "ARCHITECTURE.md's code map disagrees with the dependency graph:\n- {}",
        errs.join("\n- ")
    );
}

// The checker itself, on a synthetic table and synthetic metadata.

const TABLE: &str = "\
# Architecture

## Code map

| path | what it is | may depend on | must never depend on |
|---|---|---|---|
| `crates/core` | pure logic | `serde` | any I/O (`tokio`), any other workspace crate |
| `crates/daemon` | the daemon, built on `core` | `core`, `tokio` | `cli` |
| `crates/cli` | the client | `serde`; `cli doctor` reads no config | daemon internals (`daemon`, `core`) |
| `harness` | e2e helpers | `daemon` | (tests only) |
| `docs/` | prose | | |

## Invariants
";

/// Metadata for the packages `(name, dir or "" for a registry crate, dependencies)`.
fn metadata(pkgs: &[(&str, &str, &[&str])]) -> Value {
    let id = |name: &str| format!("id-{name}");
    let packages: Vec<Value> = pkgs
        .iter()
        .map(|(n, dir, _)| {
            let manifest = if dir.is_empty() {
                format!("/registry/{n}/Cargo.toml")
            } else {
                format!("/ws/{dir}/Cargo.toml")
            };
            json!({"id": id(n), "name": n, "manifest_path": manifest})
        })
        .collect();
    let members: Vec<Value> = pkgs
        .iter()
        .filter(|(_, dir, _)| !dir.is_empty())
        .map(|(n, _, _)| json!(id(n)))
        .collect();
    let nodes: Vec<Value> = pkgs
        .iter()
        .map(|(n, _, deps)| {
            let deps: Vec<Value> = deps
                .iter()
                .map(|d| {
                    let (d, kind) = match d.strip_suffix(" (dev)") {
                        Some(d) => (d, json!("dev")),
                        None => (*d, Value::Null),
                    };
                    json!({"name": d, "pkg": id(d), "dep_kinds": [{"kind": kind, "target": null}]})
                })
                .collect();
            json!({"id": id(n), "deps": deps})
        })
        .collect();
    json!({
        "workspace_root": "/ws",
        "packages": packages,
        "workspace_members": members,
        "resolve": {"nodes": nodes},
    })
}

/// A workspace that agrees with [`TABLE`], plus extra dependencies `(from, to)`.
fn synthetic(extra: &[(&str, &str)]) -> Vec<String> {
    let mut pkgs: Vec<(&str, &str, Vec<&str>)> = vec![
        ("core", "crates/core", vec!["serde"]),
        ("daemon", "crates/daemon", vec!["core", "tokio"]),
        ("cli", "crates/cli", vec!["serde", "harness (dev)"]),
        ("harness", "harness", vec!["daemon"]),
        ("serde", "", vec![]),
        ("tokio", "", vec!["mio"]),
        ("mio", "", vec![]),
        ("serde_json", "", vec!["serde"]),
    ];
    for (from, to) in extra {
        pkgs.iter_mut().find(|p| p.0 == *from).unwrap().2.push(to);
    }
    let pkgs: Vec<(&str, &str, &[&str])> = pkgs
        .iter()
        .map(|(n, d, deps)| (*n, *d, &deps[..]))
        .collect();
    let rows = parse_code_map(TABLE).unwrap();
    let g = Graph::from_metadata(&metadata(&pkgs)).unwrap();
    check(&rows, &g, &|p| p == "harness")
}

#[test]
fn parser_reads_names_and_marks() {
    let rows = parse_code_map(TABLE).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0].paths, ["crates/core"]);
    assert_eq!(rows[0].never, BTreeSet::from(["tokio".to_string()]));
    assert!(rows[0].never_other_members && !rows[0].not_shipped);
    assert_eq!(
        rows[1].may,
        BTreeSet::from(["core".to_string(), "tokio".to_string()])
    );
    assert_eq!(rows[2].may, BTreeSet::from(["serde".to_string()]));
    assert!(rows[3].not_shipped);
    assert_eq!(rows[4].paths, ["docs"]);
    assert!(rows[4].may.is_empty() && rows[4].never.is_empty());
}

#[test]
fn checker_accepts_an_agreeing_workspace() {
    assert_eq!(synthetic(&[]), Vec::<String>::new());
}

#[test]
fn checker_rejects_a_forbidden_direct_edge() {
    let errs = synthetic(&[("cli", "daemon")]);
    assert!(
        errs.iter()
            .any(|e| e.contains("`cli` depends on `daemon`, which \"may depend on\" does not list")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("`cli` must never depend on `daemon`, but does: cli → daemon")),
        "{errs:?}"
    );
}

#[test]
fn checker_rejects_a_forbidden_transitive_edge() {
    // serde_json is no workspace crate, so only the transitive check can see tokio behind it.
    let errs = synthetic(&[("core", "serde_json"), ("serde_json", "tokio")]);
    assert_eq!(
        errs,
        [
            "ARCHITECTURE.md:7 (`crates/core`): `core` must never depend on `tokio`, but does: \
          core → serde_json → tokio"
        ]
    );
}

#[test]
fn checker_rejects_any_other_workspace_crate() {
    let errs = synthetic(&[("core", "cli")]);
    assert!(
        errs.iter()
            .any(|e| e.contains("`core` must never depend on `cli`, but does: core → cli")),
        "{errs:?}"
    );
}

#[test]
fn checker_rejects_shipped_crates_on_test_only_crates() {
    let errs = synthetic(&[("daemon", "harness")]);
    assert!(
        errs.iter().any(|e| e.contains(
            "shipped crate `daemon` depends on `harness`, which the code map marks as not shipped"
        )),
        "{errs:?}"
    );
    // A dev-dependency on it (the `cli` → `harness (dev)` edge) is fine: nothing else failed.
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn checker_rejects_missing_and_stale_rows() {
    let rows = parse_code_map(&TABLE.replace("`crates/cli`", "`crates/client`")).unwrap();
    let g = Graph::from_metadata(&metadata(&[
        ("core", "crates/core", &[]),
        ("daemon", "crates/daemon", &["core"]),
        ("cli", "crates/cli", &[]),
        ("harness", "harness", &[]),
        ("serde", "", &[]),
        ("tokio", "", &[]),
    ]))
    .unwrap();
    let errs = check(&rows, &g, &|_| false);
    assert_eq!(
        errs,
        [
            "ARCHITECTURE.md:9: row `crates/client` is not a workspace member (renamed or removed?)",
            "workspace member `cli` (crates/cli) has no row in ARCHITECTURE.md's code map",
        ]
    );
}

#[test]
fn checker_rejects_unknown_names_in_may_depend_on() {
    let table = TABLE.replace("| `core`, `tokio` |", "| `core`, `tokio`, `corr` |");
    let rows = parse_code_map(&table).unwrap();
    let g = Graph::from_metadata(&metadata(&[
        ("core", "crates/core", &["serde"]),
        ("daemon", "crates/daemon", &["core"]),
        ("cli", "crates/cli", &[]),
        ("harness", "harness", &[]),
        ("serde", "", &[]),
        ("tokio", "", &[]),
    ]))
    .unwrap();
    let errs = check(&rows, &g, &|_| false);
    assert_eq!(
        errs,
        [
            "ARCHITECTURE.md:8 (`crates/daemon`): \"may depend on\" names `corr`, which is no \
          package in the resolve"
        ]
    );
}
