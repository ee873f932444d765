//! Short profile of the `slow-clients` scenario (see `chaos::slow_clients`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_short() {
    chaos::run_short("slow-clients").await;
}
