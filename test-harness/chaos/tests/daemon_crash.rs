//! Short profile of the `daemon-crash` scenario (see `chaos::daemon_crash`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_crash_short() {
    chaos::run_short("daemon-crash").await;
}
