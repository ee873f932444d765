//! The `llorch` binary against a real orchestratord: one test binary, a module per command area
//! (`cargo test -p llorch-cli --test e2e chat::`); `common` finds the binaries under test.

mod common;

mod chat;
mod cli;
#[cfg(unix)]
mod install;
mod pull;
