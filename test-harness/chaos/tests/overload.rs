//! Short profile of the `overload` scenario (see `chaos::overload`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_short() {
    chaos::run_short("overload").await;
}
