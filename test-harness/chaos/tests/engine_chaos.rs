//! Short profile of the `engine-chaos` scenario (see `chaos::engine_chaos`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_chaos_short() {
    chaos::run_short("engine-chaos").await;
}
