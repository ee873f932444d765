//! Short profile of the `secrets` scenario (see `chaos::secrets`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_short() {
    chaos::run_short("secrets").await;
}
