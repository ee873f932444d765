//! Short profile of the `auth-matrix` scenario (see `chaos::auth_matrix`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_short() {
    chaos::run_short("auth-matrix").await;
}
