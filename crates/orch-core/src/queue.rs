//! The bounded two-priority queue of one pool (what clients see of it: docs/DECISIONS.md,
//! "Admission and the task API").
//!
//! - Exactly two priorities; every queued interactive task is dispatched before any batch task.
//! - FIFO within a priority.
//! - `capacity` bounds both priorities together; a capacity of 0 admits nothing.
//! - When full, [`FullPolicy::Reject`] refuses the new task and [`FullPolicy::DropLru`] evicts
//!   the oldest queued batch task to make room (refusing when there is none). The evicted task is
//!   handed back in [`Admitted::dropped`] so the caller can end it with `QUEUE_FULL_DROP_LRU`:
//!   no task leaves the queue without the caller holding it.
//! - Ids are unique among queued tasks; the caller still has to check running and finished tasks
//!   for `DUPLICATE_TASK`.
//!
//! Push and pop are O(1) amortised; `remove` and `position` scan one priority (O(n)), which is
//! fine for the configured capacities (tens to thousands).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task's priority class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Someone is waiting for the answer; always dequeued before batch.
    Interactive,
    /// Background work; may be evicted by `drop-lru`.
    Batch,
}

impl Priority {
    /// Both priorities, in dispatch order (useful for per-priority gauges).
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    /// The wire and metric label: `interactive` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Priority::Interactive),
            "batch" => Ok(Priority::Batch),
            _ => Err(ParseError {
                what: "priority",
                got: s.to_owned(),
                expected: "interactive, batch",
            }),
        }
    }
}

/// What a full queue does with a new task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Refuse the new task (HTTP 429). The default.
    #[default]
    Reject,
    /// Evict the oldest queued batch task to admit the new one; refuse when no batch task waits.
    DropLru,
}

impl FullPolicy {
    /// The config value, Prometheus `policy` label and 429 `policy_label`: `reject` or `drop-lru`.
    pub fn as_str(self) -> &'static str {
        match self {
            FullPolicy::Reject => "reject",
            FullPolicy::DropLru => "drop-lru",
        }
    }
}

impl fmt::Display for FullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FullPolicy {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reject" => Ok(FullPolicy::Reject),
            // Accept the snake_case spelling too: env vars and TOML users write it that way.
            "drop-lru" | "drop_lru" => Ok(FullPolicy::DropLru),
            _ => Err(ParseError {
                what: "queue full policy",
                got: s.to_owned(),
                expected: "reject, drop-lru",
            }),
        }
    }
}

/// An unknown spelling of [`Priority`] or [`FullPolicy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    what: &'static str,
    got: String,
    expected: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} '{}'; expected one of: {}",
            self.what, self.got, self.expected
        )
    }
}

impl std::error::Error for ParseError {}

/// A queued task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<T> {
    /// The client-chosen task id.
    pub id: String,
    /// Its priority.
    pub priority: Priority,
    /// Whatever the caller queues with it (request, reply channel, ...).
    pub item: T,
}

/// A successful [`Queue::push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted<T> {
    /// 0-based count of tasks that will be dispatched before this one, right now.
    pub position: usize,
    /// The batch task evicted by `drop-lru` to make room; the caller must end it with
    /// `QUEUE_FULL_DROP_LRU`.
    pub dropped: Option<Entry<T>>,
}

/// A refused [`Queue::push`]; the item is handed back untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected<T> {
    /// The queue is full and the policy found nothing to evict (HTTP 429).
    Full {
        /// The queue's capacity.
        capacity: usize,
        /// Tasks queued when the push was refused.
        depth: usize,
        /// The refused item.
        item: T,
    },
    /// A task with this id is already queued (HTTP 409 `DUPLICATE_TASK`).
    Duplicate {
        /// The refused item.
        item: T,
    },
}

impl<T> Rejected<T> {
    /// Gives the refused item back.
    pub fn into_item(self) -> T {
        match self {
            Rejected::Full { item, .. } | Rejected::Duplicate { item } => item,
        }
    }

    /// The error code / `tasks_rejected_total` reason: `ADMISSION_REJECT` or `DUPLICATE_TASK`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::Full { .. } => "ADMISSION_REJECT",
            Rejected::Duplicate { .. } => "DUPLICATE_TASK",
        }
    }
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Full {
                capacity, depth, ..
            } => write!(f, "queue is full ({depth}/{capacity})"),
            Rejected::Duplicate { .. } => f.write_str("a task with this id is already queued"),
        }
    }
}

impl<T: fmt::Debug> std::error::Error for Rejected<T> {}

/// A bounded queue with two priorities, FIFO within each.
#[derive(Clone, Debug)]
pub struct Queue<T> {
    interactive: VecDeque<Entry<T>>,
    batch: VecDeque<Entry<T>>,
    /// Which lane each queued id sits in: O(1) duplicate checks, and `remove`/`position` scan
    /// only that lane.
    index: HashMap<String, Priority>,
    capacity: usize,
    policy: FullPolicy,
}

impl<T> Queue<T> {
    /// An empty queue holding at most `capacity` tasks over both priorities.
    pub fn new(capacity: usize, policy: FullPolicy) -> Self {
        Self {
            interactive: VecDeque::new(),
            batch: VecDeque::new(),
            index: HashMap::new(),
            capacity,
            policy,
        }
    }

    /// Admits a task, or refuses it handing the item back.
    ///
    /// A duplicate id is refused before the capacity check, so a retried submit of a queued
    /// task reads as 409 rather than 429.
    pub fn push(
        &mut self,
        id: String,
        priority: Priority,
        item: T,
    ) -> Result<Admitted<T>, Rejected<T>> {
        if self.index.contains_key(&id) {
            return Err(Rejected::Duplicate { item });
        }
        let mut dropped = None;
        if self.len() >= self.capacity {
            // With capacity 0 there is nothing queued to evict, so this also rejects.
            let victim = match self.policy {
                FullPolicy::DropLru => self.batch.pop_front(),
                FullPolicy::Reject => None,
            };
            match victim {
                Some(old) => {
                    self.index.remove(&old.id);
                    dropped = Some(old);
                }
                None => {
                    return Err(Rejected::Full {
                        capacity: self.capacity,
                        depth: self.len(),
                        item,
                    })
                }
            }
        }
        self.index.insert(id.clone(), priority);
        let entry = Entry { id, priority, item };
        let position = match priority {
            Priority::Interactive => {
                self.interactive.push_back(entry);
                self.interactive.len() - 1
            }
            Priority::Batch => {
                self.batch.push_back(entry);
                self.interactive.len() + self.batch.len() - 1
            }
        };
        Ok(Admitted { position, dropped })
    }

    /// Takes the next task to dispatch: the oldest interactive one, else the oldest batch one.
    pub fn pop(&mut self) -> Option<Entry<T>> {
        let entry = self
            .interactive
            .pop_front()
            .or_else(|| self.batch.pop_front())?;
        self.index.remove(&entry.id);
        Some(entry)
    }

    /// The task [`Queue::pop`] would return, without taking it.
    pub fn peek(&self) -> Option<&Entry<T>> {
        self.interactive.front().or_else(|| self.batch.front())
    }

    /// Takes a queued task out (cancellation). `None` when it is not queued.
    pub fn remove(&mut self, id: &str) -> Option<Entry<T>> {
        let priority = *self.index.get(id)?;
        let lane = self.lane_mut(priority);
        let at = lane.iter().position(|e| e.id == id)?;
        let entry = lane.remove(at)?;
        self.index.remove(id);
        Some(entry)
    }

    /// 0-based count of tasks that will be dispatched before `id` if nothing else arrives.
    ///
    /// Later interactive arrivals can still overtake a batch task, so for batch this is a lower
    /// bound over time.
    pub fn position(&self, id: &str) -> Option<usize> {
        let priority = *self.index.get(id)?;
        let at = self.lane(priority).iter().position(|e| e.id == id)?;
        Some(match priority {
            Priority::Interactive => at,
            Priority::Batch => self.interactive.len() + at,
        })
    }

    /// The queued task with this id.
    pub fn get(&self, id: &str) -> Option<&Entry<T>> {
        let priority = *self.index.get(id)?;
        self.lane(priority).iter().find(|e| e.id == id)
    }

    /// Tasks queued over both priorities.
    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tasks queued at one priority (the `queue_depth{priority}` gauge).
    pub fn depth(&self, p: Priority) -> usize {
        self.lane(p).len()
    }

    /// The configured bound over both priorities.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The configured full policy.
    pub fn policy(&self) -> FullPolicy {
        self.policy
    }

    /// Whether a task with this id is queued.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Queued tasks in dispatch order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry<T>> {
        self.interactive.iter().chain(self.batch.iter())
    }

    /// Empties the queue (shutdown, drain), returning every task in dispatch order so each can
    /// be ended explicitly.
    pub fn drain_all(&mut self) -> Vec<Entry<T>> {
        self.index.clear();
        let mut all: Vec<Entry<T>> = self.interactive.drain(..).collect();
        all.extend(self.batch.drain(..));
        all
    }

    fn lane(&self, p: Priority) -> &VecDeque<Entry<T>> {
        match p {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }

    fn lane_mut(&mut self, p: Priority) -> &mut VecDeque<Entry<T>> {
        match p {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push<T>(
        q: &mut Queue<T>,
        id: &str,
        p: Priority,
        item: T,
    ) -> Result<Admitted<T>, Rejected<T>> {
        q.push(id.to_owned(), p, item)
    }

    #[test]
    fn interactive_first_fifo_within() {
        let mut q = Queue::new(10, FullPolicy::Reject);
        assert_eq!(
            push(&mut q, "b1", Priority::Batch, 1).map(|a| a.position),
            Ok(0)
        );
        assert_eq!(
            push(&mut q, "i1", Priority::Interactive, 2).map(|a| a.position),
            Ok(0)
        );
        assert_eq!(
            push(&mut q, "b2", Priority::Batch, 3).map(|a| a.position),
            Ok(2)
        );
        assert_eq!(
            push(&mut q, "i2", Priority::Interactive, 4).map(|a| a.position),
            Ok(1)
        );
        assert_eq!(q.position("b1"), Some(2));
        assert_eq!(q.depth(Priority::Batch), 2);
        assert_eq!(q.peek().map(|e| e.id.as_str()), Some("i1"));
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|e| e.id).collect();
        assert_eq!(order, ["i1", "i2", "b1", "b2"]);
        assert!(q.is_empty());
    }

    #[test]
    fn reject_when_full_and_duplicate_first() {
        let mut q = Queue::new(1, FullPolicy::Reject);
        assert!(push(&mut q, "a", Priority::Batch, 1).is_ok());
        let dup = push(&mut q, "a", Priority::Batch, 2);
        assert_eq!(dup, Err(Rejected::Duplicate { item: 2 }));
        let err = push(&mut q, "b", Priority::Interactive, 7).unwrap_err();
        assert_eq!(err.code(), "ADMISSION_REJECT");
        assert_eq!(err.to_string(), "queue is full (1/1)");
        assert_eq!(err.into_item(), 7);
    }

    #[test]
    fn drop_lru_evicts_oldest_batch_only() {
        let mut q = Queue::new(3, FullPolicy::DropLru);
        for (id, p) in [
            ("b1", Priority::Batch),
            ("i1", Priority::Interactive),
            ("b2", Priority::Batch),
        ] {
            assert!(push(&mut q, id, p, id).is_ok());
        }
        let a = push(&mut q, "i2", Priority::Interactive, "i2").unwrap();
        assert_eq!(a.dropped.map(|e| e.id), Some("b1".to_owned()));
        assert_eq!(a.position, 1);
        assert!(!q.contains("b1"));
        // A new batch task may evict an older batch task too.
        let a = push(&mut q, "b3", Priority::Batch, "b3").unwrap();
        assert_eq!(a.dropped.map(|e| e.id), Some("b2".to_owned()));
        let a = push(&mut q, "i3", Priority::Interactive, "i3").unwrap();
        assert_eq!(a.dropped.map(|e| e.id), Some("b3".to_owned()));
        // Only interactive tasks left: nothing to drop, so reject.
        assert!(matches!(
            push(&mut q, "i4", Priority::Interactive, "i4"),
            Err(Rejected::Full {
                capacity: 3,
                depth: 3,
                ..
            })
        ));
    }

    #[test]
    fn zero_capacity_rejects_everything() {
        for policy in [FullPolicy::Reject, FullPolicy::DropLru] {
            let mut q = Queue::new(0, policy);
            assert!(matches!(
                push(&mut q, "a", Priority::Batch, ()),
                Err(Rejected::Full {
                    capacity: 0,
                    depth: 0,
                    ..
                })
            ));
            assert!(q.is_empty());
        }
    }

    #[test]
    fn remove_and_drain() {
        let mut q = Queue::new(8, FullPolicy::Reject);
        for (id, p) in [
            ("b1", Priority::Batch),
            ("i1", Priority::Interactive),
            ("b2", Priority::Batch),
        ] {
            assert!(push(&mut q, id, p, ()).is_ok());
        }
        assert_eq!(q.remove("b1").map(|e| e.id), Some("b1".to_owned()));
        assert_eq!(q.remove("b1"), None);
        assert_eq!(q.position("b2"), Some(1));
        // The id is free again once the task left.
        assert!(push(&mut q, "b1", Priority::Batch, ()).is_ok());
        let ids: Vec<String> = q.drain_all().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["i1", "b2", "b1"]);
        assert!(q.is_empty() && !q.contains("i1"));
    }

    #[test]
    fn labels_round_trip() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).ok(), Some(format!("\"{p}\"")));
        }
        for p in [FullPolicy::Reject, FullPolicy::DropLru] {
            assert_eq!(p.as_str().parse::<FullPolicy>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).ok(), Some(format!("\"{p}\"")));
        }
        assert_eq!("drop_lru".parse::<FullPolicy>(), Ok(FullPolicy::DropLru));
        assert!("lru".parse::<FullPolicy>().is_err());
        assert_eq!(FullPolicy::default(), FullPolicy::Reject);
    }
}
