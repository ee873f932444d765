//! Pull references and the huggingface_hub layout: parsing `hf:` references, reading a repo's
//! file list (`GET {endpoint}/api/models/{org}/{repo}/tree/main`), choosing the GGUF file(s) a
//! reference names, and where each file goes under `data_dir/models`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use orch_core::bytes::human as human_size;
use serde::Deserialize;
use url::Url;

use crate::download::{describe_reqwest, FetchError, Fetcher};
use crate::{ErrorKind, HubError};

/// The revision pulled; the spec's layout names `main`.
pub const REVISION: &str = "main";
/// Tree pages followed at most (the hub pages its listing with `Link: <…>; rel="next"`).
const MAX_TREE_PAGES: usize = 50;

/// What a pull reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRef {
    /// `hf:ORG/REPO/PATH.gguf`: one file (with its sibling parts when it is a split GGUF).
    HubFile {
        /// `ORG/REPO`.
        repo: String,
        /// The file's path in the repo.
        path: String,
    },
    /// `hf:ORG/REPO:QUANT`: the one GGUF file (or split set) whose path contains QUANT.
    HubQuant {
        /// `ORG/REPO`.
        repo: String,
        /// The quantization to look for, e.g. `Q4_K_M`.
        quant: String,
    },
    /// `http(s)://…/file.gguf`.
    Url(Url),
}

/// Whether `r` is an `hf:` reference.
pub fn is_hub_ref(r: &str) -> bool {
    r.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("hf:"))
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A path inside a repo that is safe to mirror under `data_dir/models`: relative, no `.`/`..`
/// or empty components, no backslashes or control characters.
pub fn safe_rel_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.len() <= 255
                && !c.contains('\\')
                && !c.chars().any(char::is_control)
        })
}

/// Parses a pull reference (`hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT`, `http(s)://…`).
pub fn parse_ref(r: &str) -> Result<PullRef, HubError> {
    let forms = "use hf:ORG/REPO/FILE.gguf, hf:ORG/REPO:QUANT or an https:// URL of a .gguf file";
    if !is_hub_ref(r) {
        let url = Url::parse(r).map_err(|e| {
            HubError::invalid(format!(
                "`{}` is not a pull reference ({e}); {forms}",
                orch_store::redact_url(r)
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(HubError::invalid(format!(
                "`{}` is not a pull reference; {forms}",
                orch_store::redact_url(r)
            )));
        }
        let last = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("");
        if last.is_empty() {
            return Err(HubError::invalid(format!(
                "the URL `{}` names no file; {forms}",
                orch_store::redact_url(r)
            )));
        }
        return Ok(PullRef::Url(url));
    }
    let rest = &r[3..];
    let bad = |why: &str| HubError::invalid(format!("bad hub reference `{r}`: {why}; {forms}"));
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or("");
    let second = parts.next().ok_or_else(|| bad("expected ORG/REPO"))?;
    match parts.next() {
        Some(path) => {
            let repo = second;
            if !valid_repo_part(org) || !valid_repo_part(repo) {
                return Err(bad("ORG and REPO are letters, digits and - _ ."));
            }
            if !safe_rel_path(path) {
                return Err(bad("the file path must be relative, without . or .. parts"));
            }
            Ok(PullRef::HubFile {
                repo: format!("{org}/{repo}"),
                path: path.to_owned(),
            })
        }
        None => {
            let Some((repo, quant)) = second.split_once(':') else {
                return Err(bad(
                    "name a file (ORG/REPO/FILE.gguf) or a quantization (ORG/REPO:QUANT)",
                ));
            };
            if !valid_repo_part(org) || !valid_repo_part(repo) {
                return Err(bad("ORG and REPO are letters, digits and - _ ."));
            }
            if quant.is_empty() || quant.chars().any(|c| c.is_control() || c == '/') {
                return Err(bad("QUANT must be a name such as Q4_K_M"));
            }
            Ok(PullRef::HubQuant {
                repo: format!("{org}/{repo}"),
                quant: quant.to_owned(),
            })
        }
    }
}

/// A file the hub lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>` from `lfs.oid` (absent for files not stored in LFS).
    pub sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type", default)]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    lfs: Option<TreeLfs>,
}

#[derive(Debug, Deserialize)]
struct TreeLfs {
    oid: String,
    #[serde(default)]
    size: Option<u64>,
}

/// Parses one page of the tree listing.
pub fn parse_tree(body: &[u8]) -> Result<Vec<RemoteFile>, String> {
    let entries: Vec<TreeEntry> = serde_json::from_slice(body)
        .map_err(|e| format!("the file list is not the hub's JSON ({e})"))?;
    Ok(entries
        .into_iter()
        .filter(|e| e.kind == "file" || e.kind.is_empty())
        .map(|e| {
            let sha256 = e
                .lfs
                .as_ref()
                .and_then(|l| orch_store::normalize_digest("lfs.oid", &l.oid).ok());
            RemoteFile {
                size: e.lfs.as_ref().and_then(|l| l.size).unwrap_or(e.size),
                path: e.path,
                sha256,
            }
        })
        .collect())
}

/// The `rel="next"` target of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// `{endpoint}/api/models/{org}/{repo}/tree/main?recursive=true`.
pub fn tree_url(endpoint: &Url, repo: &str) -> Url {
    let mut u = endpoint.clone();
    if let Ok(mut segs) = u.path_segments_mut() {
        segs.pop_if_empty().extend(["api", "models"]);
        segs.extend(repo.split('/'));
        segs.extend(["tree", REVISION]);
    }
    u.set_query(Some("recursive=true"));
    u
}

/// `{endpoint}/{org}/{repo}/resolve/main/{path}`.
pub fn resolve_url(endpoint: &Url, repo: &str, path: &str) -> Url {
    let mut u = endpoint.clone();
    if let Ok(mut segs) = u.path_segments_mut() {
        segs.pop_if_empty();
        segs.extend(repo.split('/'));
        segs.extend(["resolve", REVISION]);
        segs.extend(path.split('/'));
    }
    u.set_query(None);
    u
}

/// Every file of `repo`, following the listing's pages; each request passes the outbound
/// policy (in `fetcher`).
pub async fn list_repo(fetcher: &Fetcher, repo: &str) -> Result<Vec<RemoteFile>, HubError> {
    let mut url = tree_url(fetcher.endpoint(), repo);
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..MAX_TREE_PAGES {
        let resp = fetcher
            .get(&url, None, &mut seen)
            .await
            .map_err(|e| match e {
                FetchError::Fatal(e) => e,
                FetchError::Retry(why) => hub_unreachable(fetcher, &why),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(hub_status(fetcher, repo, status.as_u16()));
        }
        let next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let body = resp
            .bytes()
            .await
            .map_err(|e| hub_unreachable(fetcher, &describe_reqwest(e)))?;
        files.extend(parse_tree(&body).map_err(|why| {
            HubError::new(
                ErrorKind::Upstream,
                format!(
                    "the hub {} answered the file list of {repo} oddly: {why}",
                    fetcher.endpoint_shown()
                ),
            )
        })?);
        match next.and_then(|n| url.join(&n).ok()) {
            Some(n) => url = n,
            None => return Ok(files),
        }
    }
    Err(HubError::new(
        ErrorKind::Upstream,
        format!("the file list of {repo} has more than {MAX_TREE_PAGES} pages; name the file (hf:{repo}/FILE.gguf)"),
    ))
}

fn hub_unreachable(fetcher: &Fetcher, why: &str) -> HubError {
    HubError::new(
        ErrorKind::Upstream,
        format!(
            "cannot list the files from the hub {}: {why}; check the network or HF_ENDPOINT",
            fetcher.endpoint_shown()
        ),
    )
    .retry_after(5_000)
}

fn hub_status(fetcher: &Fetcher, repo: &str, status: u16) -> HubError {
    match status {
        401 | 403 | 404 => HubError::not_found(format!(
            "the hub {} has no repository {repo} that this daemon may read (HTTP {status}); check \
             the name, and for a gated or private repository set HF_TOKEN for the daemon",
            fetcher.endpoint_shown()
        )),
        _ => HubError::new(
            ErrorKind::Upstream,
            format!(
                "the hub {} answered HTTP {status} to the file list of {repo}; try again later",
                fetcher.endpoint_shown()
            ),
        )
        .retry_after(5_000),
    }
}

/// `(prefix, part, parts)` of a split GGUF name `PREFIX-00001-of-00003.gguf`.
pub fn split_part(path: &str) -> Option<(&str, u32, u32)> {
    let lower = path.to_ascii_lowercase();
    if !lower.ends_with(".gguf") {
        return None;
    }
    let stem = &path[..path.len() - 5];
    // "-NNNNN-of-MMMMM" is 15 bytes.
    let cut = stem.len().checked_sub(15)?;
    let (prefix, tail) = (stem.get(..cut)?, stem.get(cut..)?);
    let b = tail.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b[0] != b'-'
        || !digits(&b[1..6])
        || !tail[6..10].eq_ignore_ascii_case("-of-")
        || !digits(&b[10..15])
    {
        return None;
    }
    let part = tail[1..6].parse().ok()?;
    let parts = tail[10..15].parse().ok()?;
    (part >= 1 && part <= parts).then_some((prefix, part, parts))
}

fn is_gguf(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".gguf")
}

/// One model in a repo: a single GGUF file, or every part of a split GGUF, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    name: String,
    files: Vec<RemoteFile>,
    expected_parts: u32,
}

fn candidates(files: &[RemoteFile]) -> Vec<Candidate> {
    let mut singles = Vec::new();
    let mut splits: BTreeMap<(String, u32), Vec<(u32, RemoteFile)>> = BTreeMap::new();
    for f in files.iter().filter(|f| is_gguf(&f.path)) {
        match split_part(&f.path) {
            Some((prefix, part, parts)) => splits
                .entry((prefix.to_owned(), parts))
                .or_default()
                .push((part, f.clone())),
            None => singles.push(Candidate {
                name: f.path.clone(),
                files: vec![f.clone()],
                expected_parts: 1,
            }),
        }
    }
    for ((prefix, parts), mut members) in splits {
        members.sort_by_key(|(p, _)| *p);
        members.dedup_by_key(|(p, _)| *p);
        singles.push(Candidate {
            name: format!("{prefix}-{{00001..{parts:05}}}-of-{parts:05}.gguf"),
            files: members.into_iter().map(|(_, f)| f).collect(),
            expected_parts: parts,
        });
    }
    singles.sort_by(|a, b| a.name.cmp(&b.name));
    singles
}

fn describe(c: &Candidate) -> String {
    let size: u64 = c.files.iter().map(|f| f.size).sum();
    if c.expected_parts > 1 {
        format!(
            "{} ({} parts, {})",
            c.name,
            c.expected_parts,
            human_size(size)
        )
    } else {
        format!("{} ({})", c.name, human_size(size))
    }
}

/// What a repo has, for error messages: its GGUF models, or that it has none.
fn inventory(repo: &str, files: &[RemoteFile]) -> String {
    let all = candidates(files);
    if all.is_empty() {
        return format!("{repo} has no .gguf file");
    }
    let list: Vec<String> = all.iter().map(describe).collect();
    format!("{repo} has: {}", list.join(", "))
}

fn complete(repo: &str, c: Candidate) -> Result<Vec<RemoteFile>, HubError> {
    if c.files.len() as u32 != c.expected_parts {
        let have: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        return Err(HubError::invalid(format!(
            "the split model {} in {repo} lists {} of its {} parts ({}); it cannot be pulled whole",
            c.name,
            c.files.len(),
            c.expected_parts,
            have.join(", ")
        )));
    }
    Ok(c.files)
}

/// The files `r` (a hub reference) names among `files`: one file, or every part of a split
/// GGUF in order. Missing, ambiguous or incomplete → 400/404 with what the repo has.
pub fn select(r: &PullRef, files: &[RemoteFile]) -> Result<Vec<RemoteFile>, HubError> {
    match r {
        PullRef::HubFile { repo, path } => {
            let Some(f) = files.iter().find(|f| f.path == *path) else {
                return Err(HubError::not_found(format!(
                    "{repo} has no file {path}; {}",
                    inventory(repo, files)
                )));
            };
            match split_part(&f.path) {
                Some((prefix, _, parts)) => {
                    let c = candidates(files)
                        .into_iter()
                        .find(|c| {
                            c.expected_parts == parts
                                && c.files
                                    .first()
                                    .and_then(|f| split_part(&f.path))
                                    .is_some_and(|(p, _, _)| p == prefix)
                        })
                        .ok_or_else(|| HubError::not_found(format!("{repo}: {path} not found")))?;
                    complete(repo, c)
                }
                None => Ok(vec![f.clone()]),
            }
        }
        PullRef::HubQuant { repo, quant } => {
            let q = quant.to_ascii_lowercase();
            let mut matching: Vec<Candidate> = candidates(files)
                .into_iter()
                .filter(|c| {
                    c.files
                        .iter()
                        .any(|f| f.path.to_ascii_lowercase().contains(&q))
                })
                .collect();
            match matching.len() {
                1 => complete(repo, matching.remove(0)),
                0 => Err(HubError::invalid(format!(
                    "no GGUF file in {repo} matches `{quant}`; {}; pull one by name \
                     (hf:{repo}/FILE.gguf) or by another quantization",
                    inventory(repo, files)
                ))),
                n => {
                    let list: Vec<String> = matching.iter().map(describe).collect();
                    Err(HubError::invalid(format!(
                        "`{quant}` matches {n} GGUF files in {repo}: {}; name the one you want: \
                         hf:{repo}/FILE.gguf",
                        list.join(", ")
                    )))
                }
            }
        }
        PullRef::Url(_) => Ok(Vec::new()),
    }
}

/// Where a hub file goes: `models/hf/ORG/REPO/PATH`.
pub fn hub_dest(models_dir: &Path, repo: &str, path: &str) -> PathBuf {
    let mut p = models_dir.join("hf");
    for seg in repo.split('/').chain(path.split('/')) {
        p.push(seg);
    }
    p
}

/// Where a URL's file goes: `models/url/HOST[_PORT]/PATH` (components that could escape the
/// directory are replaced by `_`).
pub fn url_dest(models_dir: &Path, url: &Url) -> PathBuf {
    let host = url.host_str().unwrap_or("host");
    let host = match url.port() {
        Some(p) => format!("{host}_{p}"),
        None => host.to_owned(),
    };
    let mut p = models_dir.join("url").join(sanitize(&host));
    for seg in url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
    {
        let decoded = percent_decode(seg);
        p.push(sanitize(&decoded));
    }
    p
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

fn sanitize(seg: &str) -> String {
    if seg == "." || seg == ".." || seg.is_empty() {
        return "_".into();
    }
    seg.chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The catalog id a pull gets when none is given: the file name without `.gguf` and without a
/// split suffix, reduced to the id alphabet.
pub fn default_id(file_path: &str) -> String {
    let name = file_path.rsplit('/').next().unwrap_or(file_path);
    let stem = match split_part(name) {
        Some((prefix, _, _)) => prefix,
        None if is_gguf(name) => &name[..name.len() - 5],
        None => name,
    };
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() {
        "model".into()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, size: u64) -> RemoteFile {
        RemoteFile {
            path: path.into(),
            size,
            sha256: None,
        }
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse_ref("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf")
                .unwrap(),
            PullRef::HubFile {
                repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
                path: "qwen2.5-0.5b-instruct-q4_k_m.gguf".into()
            }
        );
        assert_eq!(
            parse_ref("hf:org/repo/sub/dir/m.gguf").unwrap(),
            PullRef::HubFile {
                repo: "org/repo".into(),
                path: "sub/dir/m.gguf".into()
            }
        );
        assert_eq!(
            parse_ref("HF:org/repo:Q4_K_M").unwrap(),
            PullRef::HubQuant {
                repo: "org/repo".into(),
                quant: "Q4_K_M".into()
            }
        );
        assert!(matches!(
            parse_ref("https://x.example/m.gguf").unwrap(),
            PullRef::Url(_)
        ));
        for bad in [
            "hf:org",
            "hf:org/repo",
            "hf:org/repo/../x.gguf",
            "hf:org/repo//x.gguf",
            "hf:org/re po:Q4",
            "hf:org/repo:",
            "ftp://x/m.gguf",
            "https://x.example/",
            "/models/m.gguf",
        ] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_names() {
        assert_eq!(
            split_part("m-Q8_0-00001-of-00003.gguf"),
            Some(("m-Q8_0", 1, 3))
        );
        assert_eq!(split_part("d/m-00003-of-00003.GGUF"), Some(("d/m", 3, 3)));
        assert_eq!(split_part("m-00004-of-00003.gguf"), None);
        assert_eq!(split_part("m-Q8_0.gguf"), None);
        assert_eq!(split_part("00001-of-00002.gguf"), None);
    }

    #[test]
    fn quant_selection_is_unique_case_insensitive_and_groups_splits() {
        let files = vec![
            f("README.md", 10),
            f("m-Q4_K_M.gguf", 100),
            f("m-q8_0.gguf", 200),
            f("big-F16-00001-of-00002.gguf", 300),
            f("big-F16-00002-of-00002.gguf", 300),
        ];
        let pick = |q: &str| {
            select(
                &PullRef::HubQuant {
                    repo: "o/r".into(),
                    quant: q.into(),
                },
                &files,
            )
        };
        assert_eq!(pick("q4_k_m").unwrap(), vec![f("m-Q4_K_M.gguf", 100)]);
        assert_eq!(pick("Q8_0").unwrap(), vec![f("m-q8_0.gguf", 200)]);
        let parts = pick("f16").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].path, "big-F16-00001-of-00002.gguf");
        let none = pick("IQ2_XS").unwrap_err().message;
        assert!(
            none.contains("m-Q4_K_M.gguf") && none.contains("2 parts"),
            "{none}"
        );
        let many = pick("m-").unwrap_err().message;
        assert!(
            many.contains("matches 2") && many.contains("m-q8_0.gguf"),
            "{many}"
        );
        // Naming one part of a split pulls all of them.
        let by_name = select(
            &PullRef::HubFile {
                repo: "o/r".into(),
                path: "big-F16-00002-of-00002.gguf".into(),
            },
            &files,
        )
        .unwrap();
        assert_eq!(by_name.len(), 2);
        // A split set with a part missing is refused.
        let torn = vec![f("x-00001-of-00002.gguf", 1)];
        let e = select(
            &PullRef::HubQuant {
                repo: "o/r".into(),
                quant: "x".into(),
            },
            &torn,
        )
        .unwrap_err();
        assert!(e.message.contains("1 of its 2 parts"), "{}", e.message);
    }

    #[test]
    fn tree_json_and_links() {
        let body = br#"[{"type":"directory","path":"d","oid":"x","size":0},
            {"type":"file","path":"m.gguf","oid":"abc","size":5,
             "lfs":{"oid":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","size":5,"pointerSize":130}},
            {"type":"file","path":"README.md","oid":"def","size":7}]"#;
        let files = parse_tree(body).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0].sha256.as_deref(),
            Some("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        );
        assert_eq!(files[1].sha256, None);
        assert_eq!(
            next_link(r#"<https://h/api/models/o/r/tree/main?cursor=2>; rel="next""#).as_deref(),
            Some("https://h/api/models/o/r/tree/main?cursor=2")
        );
        assert_eq!(next_link(r#"<https://h/x>; rel="prev""#), None);
    }

    #[test]
    fn urls_and_destinations() {
        let ep = Url::parse("http://127.0.0.1:9/mirror/").unwrap();
        assert_eq!(
            tree_url(&ep, "o/r").as_str(),
            "http://127.0.0.1:9/mirror/api/models/o/r/tree/main?recursive=true"
        );
        assert_eq!(
            resolve_url(&ep, "o/r", "d/m 1.gguf").as_str(),
            "http://127.0.0.1:9/mirror/o/r/resolve/main/d/m%201.gguf"
        );
        let m = Path::new("/data/models");
        assert_eq!(
            hub_dest(m, "o/r", "d/m.gguf"),
            Path::new("/data/models/hf/o/r/d/m.gguf")
        );
        let u = Url::parse("https://cdn.example.org:8443/a/%2E%2E/m.gguf?sig=1").unwrap();
        let d = url_dest(m, &u);
        assert!(
            d.starts_with("/data/models/url/cdn.example.org_8443"),
            "{}",
            d.display()
        );
        assert!(!d.components().any(|c| c == std::path::Component::ParentDir));
        assert_eq!(
            default_id("d/Qwen2.5-7B-Q4_K_M-00001-of-00002.gguf"),
            "Qwen2.5-7B-Q4_K_M"
        );
        assert_eq!(default_id("tiny model+x.gguf"), "tiny-model-x");
    }
}
