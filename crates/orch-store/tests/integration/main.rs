//! The store against real SQLite files: one test binary, a module per area (`cargo test -p
//! orch-store --test integration store::`). `crash` re-executes this binary as its child.

mod crash;
mod policy;
mod store;
