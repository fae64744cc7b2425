//! The MCP session ids the agent has handed out, bounded: the least recently used id is
//! forgotten once [`CAPACITY`] are held, so a client that initializes forever (k6's churn, a
//! hostile caller) costs a fixed amount of memory. A forgotten id gets 404 like any unknown
//! one, and the MCP transport tells the client to initialize again.

use std::collections::{BTreeMap, HashMap};

/// How many MCP sessions one agent instance remembers.
pub const CAPACITY: usize = 10_000;

/// A least-recently-used set of session ids.
#[derive(Debug)]
pub struct McpSessions {
    capacity: usize,
    /// Each id with the tick of its last use.
    last_use: HashMap<String, u64>,
    /// The same ids ordered by last use, oldest first.
    by_age: BTreeMap<u64, String>,
    tick: u64,
}

impl Default for McpSessions {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl McpSessions {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            last_use: HashMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Remembers a new id, forgetting the least recently used one when full.
    pub fn insert(&mut self, id: String) {
        if self.touch(&id) {
            return;
        }
        if self.last_use.len() >= self.capacity
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.last_use.remove(&oldest);
        }
        self.tick += 1;
        self.by_age.insert(self.tick, id.clone());
        self.last_use.insert(id, self.tick);
    }

    /// Whether `id` is known; a known id becomes the most recently used.
    pub fn touch(&mut self, id: &str) -> bool {
        let Some(at) = self.last_use.get_mut(id) else {
            return false;
        };
        if let Some(owned) = self.by_age.remove(at) {
            self.tick += 1;
            *at = self.tick;
            self.by_age.insert(self.tick, owned);
        }
        true
    }

    pub fn remove(&mut self, id: &str) -> bool {
        match self.last_use.remove(id) {
            Some(at) => {
                self.by_age.remove(&at);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_id_is_forgotten_first() {
        let mut s = McpSessions::with_capacity(3);
        for id in ["a", "b", "c"] {
            s.insert(id.to_owned());
        }
        assert!(s.touch("a"));
        s.insert("d".to_owned());
        assert_eq!(s.len(), 3);
        assert!(!s.touch("b"), "b was the least recently used");
        assert!(s.touch("a") && s.touch("c") && s.touch("d"));
    }

    #[test]
    fn churn_stays_bounded_and_removal_is_exact() {
        let mut s = McpSessions::with_capacity(100);
        for i in 0..10_000 {
            s.insert(format!("s{i}"));
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.by_age.len(), 100);
        assert!(s.remove("s9999"));
        assert!(!s.remove("s9999"));
        assert!(!s.touch("s0"));
        assert_eq!(s.len(), 99);
    }

    #[test]
    fn inserting_a_known_id_does_not_evict() {
        let mut s = McpSessions::with_capacity(2);
        s.insert("a".to_owned());
        s.insert("b".to_owned());
        s.insert("a".to_owned());
        assert_eq!(s.len(), 2);
        assert_eq!(s.by_age.len(), 2, "one age entry per id");
        assert!(s.touch("b"));
    }
}
