//! Crash durability: a child process writes artifacts and charges a budget in a loop and is
//! killed with SIGKILL; the reopened store must hold every artifact the child saw committed
//! (reading back with a matching hash), no partial artifact, and the charged budget.
//!
//! The child is this same test binary re-executed with `--ignored --exact crash::crash_child` and
//! `ORCH_STORE_CRASH_DIR` set.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orch_store::{sha256_digest, ArtifactInput, ArtifactKind, Budget, Store, StoreOptions};

const DIR_ENV: &str = "ORCH_STORE_CRASH_DIR";
const SESSION: &str = "crash-session";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The writer. Does nothing unless started by `kill_minus_nine_loses_nothing_committed`.
#[test]
#[ignore = "helper process for the crash test"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir), StoreOptions::default()).expect("child open");
    let sessions = store.sessions();
    sessions
        .touch(SESSION, now_ms(), 3_600_000, u32::MAX)
        .expect("touch");
    if sessions
        .get(SESSION, now_ms())
        .expect("get")
        .budget
        .is_none()
    {
        sessions
            .set_budget(
                SESSION,
                Some(Budget {
                    tokens: Some(u64::MAX >> 2),
                    ..Budget::default()
                }),
            )
            .expect("budget");
    }
    let pid = std::process::id();
    std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let store = &store;
            scope.spawn(move || {
                for i in 0u64.. {
                    // Sizes up to ~1.5 MiB so the kill often lands inside a write.
                    let len = ((i * 7919 + worker * 104_729) % 1_500_000) as usize + 1;
                    let seed = format!("{pid}-{worker}-{i}");
                    let mut content = Vec::with_capacity(len);
                    while content.len() < len {
                        content.extend_from_slice(seed.as_bytes());
                        content.push(b' ');
                    }
                    content.truncate(len);
                    let meta = store
                        .artifacts()
                        .put(
                            ArtifactInput {
                                kind: ArtifactKind::Trace,
                                content,
                                tags: vec!["crash".into()],
                                parent: None,
                                metadata: serde_json::json!({"seed": seed}),
                            },
                            now_ms(),
                        )
                        .expect("put");
                    println!("COMMITTED {}", meta.id);
                    let s = store.sessions().charge(SESSION, 1, 1, 0.0).expect("charge");
                    println!("CHARGED {}", s.spent.tokens);
                }
            });
        }
    });
}

/// The id on a complete `COMMITTED` line (a line cut short by the kill is ignored).
fn full_id(line: &str) -> Option<String> {
    line.strip_prefix("COMMITTED ")
        .filter(|id| id.len() == "sha256:".len() + 64)
        .map(str::to_string)
}

struct Round {
    committed: Vec<String>,
    max_charged: u64,
}

fn run_child_and_kill(dir: &Path, min_commits: usize, delay: Duration) -> Round {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut committed = Vec::new();
    let mut max_charged = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut lines = BufReader::new(stdout).lines();
    while committed.len() < min_commits && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(id) = full_id(&line) {
            committed.push(id);
        } else if let Some(n) = line.strip_prefix("CHARGED ") {
            max_charged = max_charged.max(n.parse().unwrap_or(0));
        }
    }
    // Vary the moment of the kill so it lands in different phases of a put.
    std::thread::sleep(delay);
    // SIGKILL on Unix: no destructors, no flush, a torn write in progress.
    child.kill().expect("kill child");
    // Lines printed before the kill still count: the child only prints after a commit.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = full_id(&line) {
            committed.push(id);
        } else if let Some(n) = line.strip_prefix("CHARGED ") {
            max_charged = max_charged.max(n.parse().unwrap_or(0));
        }
    }
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "the child should have been killed");
    assert!(
        committed.len() >= min_commits,
        "child committed only {} artifacts before the deadline",
        committed.len()
    );
    Round {
        committed,
        max_charged,
    }
}

#[test]
fn kill_minus_nine_loses_nothing_committed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut all_committed = HashSet::new();
    let mut charged_floor = 0;
    let mut swept = 0;
    for round in 0..6u64 {
        let delay = Duration::from_millis((round * 7) % 13);
        let r = run_child_and_kill(&dir, 10 + round as usize * 3, delay);
        all_committed.extend(r.committed);
        charged_floor = charged_floor.max(r.max_charged);

        let store = Store::open(&dir, StoreOptions::default()).expect("reopen after kill");
        let a = store.artifacts();
        let listed = a.list(None, None, 10_000).expect("list");
        let listed_ids: HashSet<String> = listed.iter().map(|m| m.id.clone()).collect();
        for id in &all_committed {
            assert!(listed_ids.contains(id), "committed artifact {id} lost");
        }
        // Every visible artifact reads back intact; nothing torn is visible.
        for m in &listed {
            let bytes = a.read(&m.id).expect("listed artifact reads back");
            assert_eq!(sha256_digest(&bytes), m.id);
            assert_eq!(bytes.len() as u64, m.size);
        }
        // No temp file survives the reopen sweep.
        for shard in std::fs::read_dir(dir.join("artifacts/sha256")).expect("tree") {
            for f in std::fs::read_dir(shard.expect("shard").path()).expect("shard dir") {
                let name = f.expect("entry").file_name();
                assert!(
                    !name.to_string_lossy().starts_with(".tmp-"),
                    "temp file {name:?} left after reopen"
                );
            }
        }
        let s = store
            .sessions()
            .get(SESSION, now_ms())
            .expect("session survives");
        assert!(
            s.spent.tokens >= charged_floor,
            "budget charge lost: {} < {charged_floor}",
            s.spent.tokens
        );
        assert!(s.budget.is_some(), "budget survives");
        swept += store.open_report().swept_temp_files + store.open_report().swept_orphans;
        eprintln!(
            "round {round}: {} committed seen, {} listed, swept {:?}, spent {}",
            all_committed.len(),
            listed.len(),
            store.open_report(),
            s.spent.tokens
        );
    }
    eprintln!("leftovers of interrupted puts swept over all rounds: {swept}");
}
