//! Short profile of the `schema-fuzz` scenario (see `chaos::schema_fuzz`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_fuzz_short() {
    chaos::run_short("schema-fuzz").await;
}
