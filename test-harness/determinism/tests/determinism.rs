//! The determinism suite in CI: two CPU llama-server replicas of one pool on the tiny test
//! model, through the real daemon; 64 fixed seeds × 2 runs, 16 tokens each. Prints the
//! per-replica latency table (run with `--nocapture` to see it).

use determinism::{daemon_bin, run, Options};
use orch_harness::{engine, llama_pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_64_seeds_byte_identical_across_replicas_and_runs() {
    let e = engine();
    // One slot per replica: a seed's two copies, submitted together, land on both replicas.
    // (`llama_pool` gives each replica one thread: two replicas share the CI machine's cores.)
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{}",
        llama_pool("det", &e, 1, 2, 512)
    );
    let opts = Options::new(daemon_bin().expect("daemon binary"), config);
    let report = run(&opts).await.expect("suite ran");
    let table = report.render();
    println!("{table}");
    assert_eq!(report.replicas, vec!["det-r0", "det-r1"]);
    assert!(report.passed(), "{table}");
    assert_eq!(report.identical_seeds(), 64, "{table}");
    // Both replicas served every seed in both runs.
    for run_ix in 0..2 {
        for r in ["det-r0", "det-r1"] {
            let seeds = report
                .samples
                .iter()
                .filter(|s| s.run == run_ix && s.replica == r)
                .map(|s| s.seed)
                .collect::<std::collections::BTreeSet<_>>();
            assert_eq!(seeds.len(), 64, "run {run_ix}, replica {r}: {table}");
        }
    }
    // One token event may carry several tokens (llama-server holds back incomplete UTF-8),
    // and random weights may sample end-of-sequence early.
    assert!(
        report
            .samples
            .iter()
            .all(|s| (1..=16).contains(&s.tokens.len())
                && ["length", "stop"].contains(&s.finish_reason.as_str())),
        "{table}"
    );
}
