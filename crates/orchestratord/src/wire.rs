//! Domain types as their wire forms (`orch_api_types`) and back, in one place: the pool manager's
//! states as the API shows them, a request's priority as the queue's, a session's budget as the
//! store keeps it and as the API shows what is left.

use orch_api_types::pools::{LoadState, ReplicaState};
use orch_api_types::Priority;
use orch_core::queue;

/// The queue's priority for a request's.
pub(crate) fn core_priority(p: Priority) -> queue::Priority {
    match p {
        Priority::Interactive => queue::Priority::Interactive,
        Priority::Batch => queue::Priority::Batch,
    }
}

/// The wire form of a replica state.
pub(crate) fn replica_state(s: orch_pool_manager::ReplicaState) -> ReplicaState {
    use orch_pool_manager::ReplicaState as S;
    match s {
        S::Starting => ReplicaState::Starting,
        S::Ready => ReplicaState::Ready,
        S::Unready => ReplicaState::Unready,
        S::Crashed => ReplicaState::Crashed,
        S::CircuitOpen => ReplicaState::CircuitOpen,
        S::Retiring => ReplicaState::Retiring,
        S::Stopped => ReplicaState::Stopped,
        S::Unloaded => ReplicaState::Unloaded,
        S::Loading => ReplicaState::Loading,
        S::Draining => ReplicaState::Draining,
        S::Unloading => ReplicaState::Unloading,
        S::Failed => ReplicaState::Failed,
    }
}

/// The wire form of an on_demand pool's load state.
pub(crate) fn load_state(s: orch_pool_manager::LoadPhase) -> LoadState {
    use orch_pool_manager::LoadPhase as P;
    match s {
        P::Unloaded => LoadState::Unloaded,
        P::Loading => LoadState::Loading,
        P::Loaded => LoadState::Loaded,
        P::Unloading => LoadState::Unloading,
        P::Failed => LoadState::Failed,
    }
}

/// The store's form of a session budget from the request's.
pub(crate) fn store_budget(b: &orch_api_types::BudgetSpec) -> orch_store::Budget {
    orch_store::Budget {
        tokens: b.tokens,
        time_ms: b.time_ms,
        cost: b.cost,
    }
}

/// The wire form of a session's budget left.
pub(crate) fn budget_remaining(r: orch_store::BudgetRemaining) -> orch_api_types::BudgetRemaining {
    orch_api_types::BudgetRemaining {
        tokens: r.tokens,
        time_ms: r.time_ms,
        cost: r.cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today's wire form: the pool manager's type as a `serde_json` value (keys sorted).
    fn legacy(v: &impl serde::Serialize) -> String {
        serde_json::to_value(v).unwrap().to_string()
    }

    #[test]
    fn replica_state_names_match() {
        use orch_pool_manager::ReplicaState as S;
        for s in [
            S::Starting,
            S::Ready,
            S::Unready,
            S::Crashed,
            S::CircuitOpen,
            S::Retiring,
            S::Stopped,
            S::Unloaded,
            S::Loading,
            S::Draining,
            S::Unloading,
            S::Failed,
        ] {
            assert_eq!(legacy(&s), legacy(&replica_state(s)));
        }
        use orch_pool_manager::LoadPhase as P;
        for p in [P::Unloaded, P::Loading, P::Loaded, P::Unloading, P::Failed] {
            assert_eq!(legacy(&p), legacy(&load_state(p)));
            assert_eq!(load_state(p).as_str(), p.as_str());
        }
    }
}
