//! The SHORT profile of every chaos scenario (see `chaos::<scenario>`), one test each, in one
//! test binary (`cargo test -p chaos --test short overload`). The scenarios run one at a time
//! (each holds [`ONE_AT_A_TIME`]): each starts its own daemons and engines and measures them,
//! and two at once would share the two CPU cores of the CI machine.

/// Held by each scenario for its whole run.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("auth-matrix").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_crash_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("daemon-crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_chaos_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("engine-chaos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("overload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_fuzz_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("parser-fuzz").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_fuzz_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("schema-fuzz").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("secrets").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_short() {
    let _one = ONE_AT_A_TIME.lock().await;
    chaos::run_short("slow-clients").await;
}
