//! Short profile of the `parser-fuzz` scenario (see `chaos::parser_fuzz`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_fuzz_short() {
    chaos::run_short("parser-fuzz").await;
}
