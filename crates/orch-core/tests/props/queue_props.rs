//! Model-based properties of the two-priority queue.

use std::collections::HashMap;

use orch_core::queue::{FullPolicy, Priority, Queue, Rejected};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Push(u8, Priority),
    Pop,
    Remove(u8),
    DrainAll,
}

fn priority() -> impl Strategy<Value = Priority> {
    prop_oneof![Just(Priority::Interactive), Just(Priority::Batch)]
}

fn op() -> impl Strategy<Value = Op> {
    // Few distinct ids so duplicates and removals of queued ids actually happen.
    prop_oneof![
        6 => (0u8..12, priority()).prop_map(|(id, p)| Op::Push(id, p)),
        3 => Just(Op::Pop),
        2 => (0u8..12).prop_map(Op::Remove),
        1 => Just(Op::DrainAll),
    ]
}

fn policy() -> impl Strategy<Value = FullPolicy> {
    prop_oneof![Just(FullPolicy::Reject), Just(FullPolicy::DropLru)]
}

/// How an admitted task left the queue.
#[derive(Debug, PartialEq)]
enum Exit {
    Popped,
    Removed,
    Dropped,
    Drained,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn queue_invariants(capacity in 0usize..7, policy in policy(), ops in prop::collection::vec(op(), 0..80)) {
        let mut q: Queue<u64> = Queue::new(capacity, policy);
        // Reference model: (id, priority, seq) in arrival order.
        let mut model: Vec<(String, Priority, u64)> = Vec::new();
        // Every admitted seq -> its exits (must end with exactly one).
        let mut exits: HashMap<u64, Vec<Exit>> = HashMap::new();
        let mut seq = 0u64;

        let dispatch_order = |m: &Vec<(String, Priority, u64)>| -> Vec<u64> {
            let mut v: Vec<u64> = m.iter().filter(|e| e.1 == Priority::Interactive).map(|e| e.2).collect();
            v.extend(m.iter().filter(|e| e.1 == Priority::Batch).map(|e| e.2));
            v
        };

        for op in ops {
            match op {
                Op::Push(n, p) => {
                    seq += 1;
                    let id = format!("t{n}");
                    let before = q.len();
                    match q.push(id.clone(), p, seq) {
                        Ok(adm) => {
                            prop_assert!(!model.iter().any(|e| e.0 == id));
                            exits.insert(seq, Vec::new());
                            if let Some(d) = adm.dropped {
                                prop_assert_eq!(policy, FullPolicy::DropLru);
                                prop_assert_eq!(before, capacity);
                                prop_assert_eq!(d.priority, Priority::Batch);
                                // The oldest queued batch task.
                                let oldest = model.iter().position(|e| e.1 == Priority::Batch);
                                prop_assert_eq!(oldest.map(|i| model[i].2), Some(d.item));
                                if let Some(i) = oldest { model.remove(i); }
                                exits.entry(d.item).or_default().push(Exit::Dropped);
                            } else {
                                prop_assert!(before < capacity);
                            }
                            model.push((id.clone(), p, seq));
                            let pos = dispatch_order(&model).iter().position(|&s| s == seq);
                            prop_assert_eq!(Some(adm.position), pos);
                        }
                        Err(Rejected::Duplicate { item }) => {
                            prop_assert_eq!(item, seq);
                            prop_assert!(model.iter().any(|e| e.0 == id));
                        }
                        Err(Rejected::Full { capacity: c, depth, item }) => {
                            prop_assert_eq!(item, seq);
                            prop_assert_eq!(c, capacity);
                            prop_assert_eq!(depth, before);
                            prop_assert!(!model.iter().any(|e| e.0 == id));
                            prop_assert_eq!(before, capacity);
                            if policy == FullPolicy::DropLru && capacity > 0 {
                                prop_assert!(model.iter().all(|e| e.1 == Priority::Interactive));
                            }
                        }
                    }
                }
                Op::Pop => {
                    let interactive_waiting = q.depth(Priority::Interactive) > 0;
                    let expected = dispatch_order(&model).first().copied();
                    let got = q.pop();
                    prop_assert_eq!(got.as_ref().map(|e| e.item), expected);
                    if let Some(e) = got {
                        // No batch task leaves while an interactive one waits.
                        prop_assert!(!(interactive_waiting && e.priority == Priority::Batch));
                        model.retain(|m| m.2 != e.item);
                        exits.entry(e.item).or_default().push(Exit::Popped);
                    }
                }
                Op::Remove(n) => {
                    let id = format!("t{n}");
                    let expected = model.iter().find(|e| e.0 == id).map(|e| e.2);
                    let got = q.remove(&id);
                    prop_assert_eq!(got.as_ref().map(|e| e.item), expected);
                    if let Some(e) = got {
                        model.retain(|m| m.2 != e.item);
                        exits.entry(e.item).or_default().push(Exit::Removed);
                    }
                }
                Op::DrainAll => {
                    let expected = dispatch_order(&model);
                    let got: Vec<u64> = q.drain_all().into_iter().map(|e| e.item).collect();
                    prop_assert_eq!(&got, &expected);
                    for s in got { exits.entry(s).or_default().push(Exit::Drained); }
                    model.clear();
                }
            }

            // Capacity is never exceeded; counts agree with the model.
            prop_assert!(q.len() <= capacity);
            prop_assert_eq!(q.len(), model.len());
            prop_assert_eq!(q.is_empty(), model.is_empty());
            let di = model.iter().filter(|e| e.1 == Priority::Interactive).count();
            prop_assert_eq!(q.depth(Priority::Interactive), di);
            prop_assert_eq!(q.depth(Priority::Batch), model.len() - di);

            // iter() is the dispatch order, and position() agrees with it.
            let order: Vec<u64> = q.iter().map(|e| e.item).collect();
            prop_assert_eq!(&order, &dispatch_order(&model));
            for (i, e) in q.iter().enumerate() {
                prop_assert_eq!(q.position(&e.id), Some(i));
                prop_assert!(q.contains(&e.id));
            }
            // Popping a copy yields exactly that order (positions match pop order).
            let mut copy = q.clone();
            let popped: Vec<u64> = std::iter::from_fn(|| copy.pop()).map(|e| e.item).collect();
            prop_assert_eq!(&popped, &order);
        }

        // Drain the rest: every admitted task left exactly once.
        for e in q.drain_all() { exits.entry(e.item).or_default().push(Exit::Drained); }
        for (s, ways) in &exits {
            prop_assert_eq!(ways.len(), 1, "task {} left {:?}", s, ways);
        }
    }

    #[test]
    fn fifo_within_each_priority(pushes in prop::collection::vec(priority(), 0..40)) {
        let mut q = Queue::new(pushes.len(), FullPolicy::Reject);
        for (i, p) in pushes.iter().enumerate() {
            let admitted = q.push(format!("t{i}"), *p, i).is_ok();
            prop_assert!(admitted);
        }
        let out: Vec<(Priority, usize)> = std::iter::from_fn(|| q.pop()).map(|e| (e.priority, e.item)).collect();
        for p in Priority::ALL {
            let seqs: Vec<usize> = out.iter().filter(|e| e.0 == p).map(|e| e.1).collect();
            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        }
        // All interactive before any batch.
        let first_batch = out.iter().position(|e| e.0 == Priority::Batch).unwrap_or(out.len());
        prop_assert!(out[first_batch..].iter().all(|e| e.0 == Priority::Batch));
    }
}
