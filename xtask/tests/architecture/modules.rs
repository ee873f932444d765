//! No import cycles between the top-level modules of a crate.
//!
//! A cheap parse, no compiler: every `src/**/*.rs` file belongs to a top-level module
//! (`src/foo.rs`, `src/foo/**`); its `crate::…` and `super::…` paths (in `use` lines and inline,
//! `{…}` groups included) name the modules it uses; a name that `lib.rs`/`main.rs` re-exports
//! (`pub use foo::Bar;`) counts as its module. The crate root itself is left out (it declares
//! every module), and so are `#[cfg(test)] mod …` blocks at the end of a file and comment lines.
//! The module graph must be acyclic once [`KNOWN_CYCLE_EDGES`] are taken out; each known edge
//! must still close a cycle, so the list only shrinks.
//!
//! A crate whose modules ARCHITECTURE.md orders in layers ("Module layers of `<crate dir>`",
//! then a numbered list, top first, of backticked module names) is also checked for direction:
//! every module is in exactly one layer, and each import points to its own layer or a lower one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;

/// Edges that close the cycles known today, `(crate dir, from, to, how to cut it)`. Remove an
/// entry when its cycle is gone; the test says when. Empty: keep it so (issue 22 cut the last
/// five, through `AppState`, auth and the OpenAPI document).
pub const KNOWN_CYCLE_EDGES: &[(&str, &str, &str, &str)] = &[];

/// The module graph of one crate: `from → to → where (file:line)`.
pub type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// A source file: its module path under `src` (`["foo", "bar"]` for `src/foo/bar.rs` or
/// `src/foo/bar/mod.rs`, empty for the crate root), a name for messages, and its text.
pub struct File {
    pub module: Vec<String>,
    pub name: String,
    pub text: String,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The text up to a trailing `#[cfg(test)] mod … {` block, without comment lines.
fn code_of(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "#[cfg(test)]" {
            let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or_default();
            let next = next.strip_prefix("pub ").unwrap_or(next);
            if next.starts_with("mod ") && next.ends_with('{') {
                end = i;
                break;
            }
        }
    }
    lines[..end]
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, *l))
        .collect()
}

/// The first path segment of each entry of the `{…}` group at the start of `s`.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut entry = String::new();
    for c in s.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    heads.push(std::mem::take(&mut entry));
                    break;
                }
            }
            ',' if depth == 1 => {
                heads.push(std::mem::take(&mut entry));
                continue;
            }
            _ => {}
        }
        entry.push(c);
    }
    heads
        .iter()
        .map(|e| e.trim().chars().take_while(|c| is_ident(*c)).collect())
        .filter(|h: &String| !h.is_empty())
        .collect()
}

/// `(crate-root-relative module path prefix, names)` of every `crate::`/`super::` path in
/// `code`, with its line. `super::` is resolved against `module` (the file's module path).
fn paths_in(module: &[String], code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let at_word = i == 0 || !is_ident(b[i - 1] as char);
        let (base, after) = if at_word && rest.starts_with("crate::") {
            (Some(Vec::new()), i + "crate::".len())
        } else if at_word && rest.starts_with("super::") {
            let mut n = 0;
            let mut j = i;
            while code[j..].starts_with("super::") {
                n += 1;
                j += "super::".len();
            }
            (
                module
                    .len()
                    .checked_sub(n)
                    .map(|keep| module[..keep].to_vec()),
                j,
            )
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let tail = &code[after..];
        let names = if tail.starts_with('{') {
            group_heads(tail)
        } else {
            let n: String = tail.chars().take_while(|c| is_ident(*c)).collect();
            if n.is_empty() {
                Vec::new()
            } else {
                vec![n]
            }
        };
        if let Some(base) = base {
            out.push((base, names));
        }
        i = after;
    }
    out
}

/// Names the crate root re-exports from a top-level module: `pub use foo::{A, B as C};`.
fn reexports(root: &str, modules: &BTreeSet<String>) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let code: String = code_of(root)
        .into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(at) = ["pub use ", "pub(crate) use "]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let start = &rest[at..];
        let start = &start[start.find("use ").unwrap_or(0) + 4..];
        let Some(end) = start.find(';') else { break };
        let stmt = start[..end].trim();
        rest = &start[end..];
        let stmt = stmt
            .strip_prefix("self::")
            .or_else(|| stmt.strip_prefix("crate::"))
            .unwrap_or(stmt);
        let Some((module, items)) = stmt.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        let items = items.trim();
        let entries: Vec<&str> = match items.strip_prefix('{') {
            Some(inner) => inner.trim_end_matches('}').split(',').collect(),
            None => vec![items],
        };
        for e in entries {
            let e = e.trim();
            let name = match e.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => e.rsplit("::").next().unwrap_or(e),
            };
            if !name.is_empty() && name != "*" && name != "self" {
                map.insert(name.to_string(), module.to_string());
            }
        }
    }
    map
}

/// The top-level module graph of the files of one crate.
pub fn graph(files: &[File]) -> Graph {
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.module.first().cloned())
        .collect();
    let mut reexported = HashMap::new();
    for f in files.iter().filter(|f| f.module.is_empty()) {
        reexported.extend(reexports(&f.text, &modules));
    }
    let mut g = Graph::new();
    for m in &modules {
        g.entry(m.clone()).or_default();
    }
    for f in files {
        let Some(top) = f.module.first() else {
            continue;
        };
        for (line, code) in code_of(&f.text) {
            for (base, names) in paths_in(&f.module, code) {
                let targets: Vec<String> = match base.first() {
                    // A path inside a module names that module.
                    Some(m) => vec![m.clone()],
                    // A path from the root names a module, or an item the root re-exports.
                    None => names
                        .iter()
                        .filter_map(|n| {
                            if modules.contains(n) {
                                Some(n.clone())
                            } else {
                                reexported.get(n).cloned()
                            }
                        })
                        .collect(),
                };
                for t in targets {
                    if t != *top {
                        g.entry(top.clone())
                            .or_default()
                            .entry(t)
                            .or_insert_with(|| format!("{}:{line}", f.name));
                    }
                }
            }
        }
    }
    g
}

/// Whether `to` reaches `from` (so the edge `from → to` closes a cycle).
fn closes_cycle(g: &Graph, from: &str, to: &str) -> bool {
    path(g, to, from).is_some()
}

/// A shortest path `a → … → b` (at least one edge).
fn path(g: &Graph, a: &str, b: &str) -> Option<Vec<String>> {
    let mut parent: HashMap<&str, &str> = HashMap::new();
    let mut queue = VecDeque::from([a]);
    let mut seen = HashSet::from([a]);
    while let Some(n) = queue.pop_front() {
        for next in g.get(n).into_iter().flat_map(|e| e.keys()) {
            if next == b {
                let mut chain = vec![b.to_string(), n.to_string()];
                let mut at = n;
                while let Some(p) = parent.get(at) {
                    chain.push(p.to_string());
                    at = p;
                }
                chain.reverse();
                return Some(chain);
            }
            if seen.insert(next.as_str()) {
                parent.insert(next.as_str(), n);
                queue.push_back(next.as_str());
            }
        }
    }
    None
}

/// Every cycle left once `known` edges are out, one per strongly connected group, each as
/// `a → b (file:line) → … → a`; and each known edge that no longer closes a cycle.
pub fn check(g: &Graph, known: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    let mut stale = Vec::new();
    for (a, b) in known {
        let exists = g.get(*a).is_some_and(|e| e.contains_key(*b));
        if !exists || !closes_cycle(g, a, b) {
            stale.push(format!("{a} → {b}"));
        }
    }
    let mut cut = g.clone();
    for (a, b) in known {
        if let Some(e) = cut.get_mut(*a) {
            e.remove(*b);
        }
    }
    let mut cycles = Vec::new();
    let mut covered: HashSet<String> = HashSet::new();
    for (a, edges) in &cut {
        if covered.contains(a) {
            continue;
        }
        for b in edges.keys() {
            if let Some(back) = path(&cut, b, a) {
                let mut ring = vec![a.clone()];
                ring.extend(back);
                let shown: Vec<String> = ring
                    .windows(2)
                    .map(|w| format!("{} → {} ({})", w[0], w[1], cut[&w[0]][&w[1]]))
                    .collect();
                covered.extend(ring);
                cycles.push(shown.join(", "));
                break;
            }
        }
    }
    (cycles, stale)
}

/// The module layers ARCHITECTURE.md gives each crate: after a line starting "Module layers of
/// `<crate dir>`", a numbered list (`1. `a`, `b` — prose`), top layer first; the backticked
/// words before a dash are the modules of that layer.
pub fn layers(md: &str) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut out = BTreeMap::new();
    let mut lines = md.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim().strip_prefix("Module layers of `") else {
            continue;
        };
        let Some((dir, _)) = rest.split_once('`') else {
            continue;
        };
        // Skip the prose up to the list, then read the list.
        while lines
            .peek()
            .is_some_and(|n| !n.trim_start().starts_with("1. "))
        {
            lines.next();
        }
        let mut layers = Vec::new();
        while let Some(n) = lines.peek() {
            let t = n.trim_start();
            let Some((num, item)) = t.split_once(". ") else {
                break;
            };
            if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
                break;
            }
            let names = item.split(" — ").next().unwrap_or_default();
            layers.push(
                names
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect(),
            );
            lines.next();
        }
        out.insert(dir.to_string(), layers);
    }
    out
}

/// Imports that point up the layers (`a → b (file:line): a is layer i, b is layer j < i`), and
/// modules that are in no layer or several, and layer entries that name no module.
pub fn check_layers(g: &Graph, layers: &[Vec<String>]) -> Vec<String> {
    let mut errs = Vec::new();
    let mut layer_of: HashMap<&str, usize> = HashMap::new();
    for (i, layer) in layers.iter().enumerate() {
        for m in layer {
            if !g.contains_key(m) {
                errs.push(format!("layer {} names `{m}`, which is no module", i + 1));
            }
            if layer_of.insert(m.as_str(), i).is_some() {
                errs.push(format!("`{m}` is in more than one layer"));
            }
        }
    }
    for (a, edges) in g {
        let Some(&la) = layer_of.get(a.as_str()) else {
            errs.push(format!("module `{a}` is in no layer; add it to one"));
            continue;
        };
        for (b, at) in edges {
            if let Some(&lb) = layer_of.get(b.as_str()) {
                if lb < la {
                    errs.push(format!(
                        "{a} → {b} ({at}) imports upwards: `{a}` is in layer {}, `{b}` in layer {}",
                        la + 1,
                        lb + 1
                    ));
                }
            }
        }
    }
    errs
}

/// The files of the crate in `dir` (every `.rs` under `src`).
pub fn read_crate(dir: &Path) -> Vec<File> {
    let src = dir.join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(&src).expect("under src");
                let mut module: Vec<String> = rel
                    .with_extension("")
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                if module.last().is_some_and(|l| l == "mod") {
                    module.pop();
                }
                if module == ["lib"] || module == ["main"] {
                    module.clear();
                }
                if module.first().is_some_and(|m| m == "bin") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).expect("a readable source file");
                files.push(File {
                    module,
                    name: format!("src/{}", rel.display()),
                    text,
                });
            }
        }
    }
    files
}

fn file(module: &str, text: &str) -> File {
    File {
        module: module
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        name: format!("src/{module}.rs"),
        text: text.to_string(),
    }
}

#[test]
fn module_graph_reads_paths_groups_super_and_reexports() {
    let files = [
        file(
            "",
            "mod a;\nmod b;\npub use c::Thing;\npub use d::{One, two::Two as Deux};\n",
        ),
        file(
            "a",
            "use crate::{b::X, lock, Deux};\nfn f() { crate::Thing::new(); }\n",
        ),
        file(
            "b",
            "// use crate::a;\nuse super::c::Y;\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
        ),
        file("c", "pub struct Thing;\n"),
        file("d/mod", "pub struct One;\n"),
        file("d/two", "use super::One;\nuse super::super::c;\n"),
    ];
    let g = graph(&files);
    let edges = |m: &str| g[m].keys().cloned().collect::<Vec<_>>();
    assert_eq!(edges("a"), ["b", "c", "d"]);
    assert_eq!(edges("b"), ["c"]);
    assert_eq!(edges("d"), ["c"]);
    assert_eq!(g["a"]["c"], "src/a.rs:2");
}

#[test]
fn cycles_are_found_printed_and_known_ones_must_stay_cycles() {
    let files = [
        file("a", "use crate::b;\n"),
        file("b", "use crate::c::X;\n"),
        file("c", "fn f() { crate::a::g() }\n"),
        file("d", "use crate::a;\n"),
    ];
    let g = graph(&files);
    let (cycles, stale) = check(&g, &[]);
    assert_eq!(
        cycles,
        ["a → b (src/a.rs:1), b → c (src/b.rs:1), c → a (src/c.rs:1)"]
    );
    assert!(stale.is_empty());
    let (cycles, stale) = check(&g, &[("c", "a")]);
    assert!(
        cycles.is_empty() && stale.is_empty(),
        "{cycles:?} {stale:?}"
    );
    let (_, stale) = check(&g, &[("c", "a"), ("d", "a"), ("x", "y")]);
    assert_eq!(stale, ["d → a", "x → y"]);
}

#[test]
fn no_module_import_cycles() {
    let root = super::workspace_root();
    let mut dirs = vec![root.join("xtask")];
    for base in ["crates", "test-harness"] {
        for e in std::fs::read_dir(root.join(base))
            .expect("a workspace folder")
            .flatten()
        {
            if e.path().join("src").is_dir() {
                dirs.push(e.path());
            }
        }
    }
    dirs.sort();
    let mut errs = Vec::new();
    let mut modules = 0;
    for dir in &dirs {
        let rel = dir
            .strip_prefix(&root)
            .expect("under the root")
            .to_string_lossy()
            .into_owned();
        let g = graph(&read_crate(dir));
        modules += g.len();
        let known: Vec<(&str, &str)> = KNOWN_CYCLE_EDGES
            .iter()
            .filter(|k| k.0 == rel)
            .map(|k| (k.1, k.2))
            .collect();
        let (cycles, stale) = check(&g, &known);
        for c in cycles {
            errs.push(format!("{rel}: import cycle: {c}"));
        }
        for s in stale {
            errs.push(format!(
                "{rel}: the known cycle edge {s} closes no cycle any more; remove it from \
                 KNOWN_CYCLE_EDGES"
            ));
        }
    }
    for k in KNOWN_CYCLE_EDGES {
        assert!(root.join(k.0).is_dir(), "KNOWN_CYCLE_EDGES names {}", k.0);
    }
    // A walk that silently found nothing would pass everything.
    assert!(modules > 50, "only {modules} modules found");
    assert!(
        errs.is_empty(),
        "module import cycles (cut one edge of each; see xtask/tests/architecture/modules.rs):\n- {}",
        errs.join("\n- ")
    );
}

#[test]
fn layers_are_read_and_upward_imports_found() {
    let md = "x\nModule layers of `crates/d`, top first:\n\n1. `top` — entry\n2. `mid`, `side`\n3. `low` — ground\n\nafter\n";
    let l = layers(md);
    assert_eq!(
        l["crates/d"],
        [vec!["top"], vec!["mid", "side"], vec!["low"]]
    );
    let files = [
        file("top", "use crate::mid;\n"),
        file("mid", "use crate::{low, side};\n"),
        file("side", "use crate::low::X;\n"),
        file("low", "fn f() {}\n"),
    ];
    let g = graph(&files);
    assert!(check_layers(&g, &l["crates/d"]).is_empty());
    let files = [
        file("top", "\n"),
        file("mid", "\n"),
        file("side", "\n"),
        file("low", "use crate::mid;\n"),
        file("lost", "\n"),
    ];
    let errs = check_layers(&graph(&files), &l["crates/d"]);
    assert_eq!(
        errs,
        [
            "module `lost` is in no layer; add it to one",
            "low → mid (src/low.rs:1) imports upwards: `low` is in layer 3, `mid` in layer 2",
        ]
    );
}

#[test]
fn no_module_imports_a_higher_layer() {
    let root = super::workspace_root();
    let md = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let all = layers(&md);
    // The daemon's layers are required; other crates may add theirs.
    assert!(
        all.get("crates/orchestratord").is_some_and(|l| l.len() > 3),
        "ARCHITECTURE.md gives no \"Module layers of `crates/orchestratord`\" list"
    );
    let mut errs = Vec::new();
    for (dir, layers) in &all {
        let path = root.join(dir);
        assert!(
            path.join("src").is_dir(),
            "ARCHITECTURE.md layers name {dir}"
        );
        for e in check_layers(&graph(&read_crate(&path)), layers) {
            errs.push(format!("{dir}: {e}"));
        }
    }
    assert!(
        errs.is_empty(),
        "module layers (ARCHITECTURE.md, \"Module layers of …\"):\n- {}",
        errs.join("\n- ")
    );
}
