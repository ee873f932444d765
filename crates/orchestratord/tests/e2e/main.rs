//! The daemon's end-to-end tests, one test binary (`cargo test -p orchestratord --test e2e`)
//! with a module per area, named after what it tests (`e2e pools::`, `e2e state::sessions::`).
//! Every test starts the real `orchestratord` binary (which launches real `llama-server`
//! engines) through `orch_harness`; shared helpers live in [`support`].
//!
//! One binary instead of one per file: each test binary links the whole daemon, so 17 of them
//! cost most of the suite's build time and disk. The modules' tests run as threads of one
//! process (two at a time on a 2-core box, as before within a file): nothing here may set
//! environment variables, change the current directory or rely on running alone; a module
//! whose tests must not overlap each other holds its own lock (`agents`).
//! The queue-truth timing check needs the machine to itself and keeps its own binary
//! (`tests/queue_truth.rs`).

mod support;

mod agents;
mod anthropic_sdk;
mod contracts;
mod dashboard;
mod embeddings;
mod engines;
mod launch_recipes;
mod metrics_lint;
mod on_demand;
mod openai_sdk;
mod pools;
mod pull;
mod relay;
mod responses_sdk;
mod spine;
mod state;
mod web_page;
