//! Property tests of the core's models (queue, placement, start-time forecasts, learned rates):
//! one test binary, a module per model (`cargo test -p orch-core --test props queue_props::`).

mod eta_props;
mod placement_props;
mod queue_props;
mod rates_props;
