//! How often each user's copy (`keyword_copy`) has been wanted lately: what
//! decides whether a copy that does not fit the budget may push out others.
//!
//! Why: copies are evicted least recently used first, and with that alone
//! a budget smaller than the users read in turn is the worst case of an
//! evicting cache: each recall loads the user's copy (a read of every row,
//! 7.5 MB at 1,000 memories of 1536 dimensions) only to evict the next
//! user's, and no recall ever finds one. Counting uses lets the copies held
//! stay put against users wanted no more often, so that as many recalls as
//! the budget holds users find theirs, while a user wanted more often than
//! those held still takes their place.
//!
//! Invariants:
//! * a count is the user's uses since they were first counted, halved (and
//!   dropped at zero) once every [`HALVE_EVERY`] uses of all users, so it
//!   weighs the last few thousand uses and forgets older ones;
//! * at most [`MAX_USERS`] users are counted: past that the counts are
//!   halved at once, which drops those used once.

use std::collections::HashMap;

/// Uses, of all users, between two halvings.
const HALVE_EVERY: u32 = 4096;

/// Users counted at most, before a halving comes early.
const MAX_USERS: usize = 65_536;

/// Recent uses by user.
#[derive(Debug, Default)]
pub(super) struct Uses {
    counts: HashMap<String, u32>,
    since_halving: u32,
}

impl Uses {
    /// Counts a use of `user`'s copy.
    pub fn count(&mut self, user: &str) {
        match self.counts.get_mut(user) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                if self.counts.len() >= MAX_USERS {
                    self.halve();
                }
                self.counts.insert(user.to_owned(), 1);
            }
        }
        self.since_halving += 1;
        if self.since_halving >= HALVE_EVERY {
            self.halve();
        }
    }

    /// `user`'s recent uses.
    pub fn of(&self, user: &str) -> u32 {
        self.counts.get(user).copied().unwrap_or(0)
    }

    /// Whether a copy of `user`, wanted `of(user)` times lately, is wanted
    /// clearly more often than one of `other`: more than twice as often, so
    /// that users wanted alike (read in turn) do not take each other's
    /// places back and forth on small differences.
    pub fn outweighs(&self, user: &str, other: &str) -> bool {
        u64::from(self.of(user)) > 2 * u64::from(self.of(other))
    }

    fn halve(&mut self) {
        self.counts.retain(|_, n| {
            *n /= 2;
            *n > 0
        });
        self.since_halving = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_halved_every_window_and_forgotten_at_zero() {
        let mut uses = Uses::default();
        for _ in 0..10 {
            uses.count("hot");
        }
        uses.count("once");
        assert_eq!(uses.of("hot"), 10);
        assert_eq!(uses.of("once"), 1);
        assert_eq!(uses.of("never"), 0);
        // The rest of the window, spread over users each used once more.
        for i in 0..HALVE_EVERY - 11 {
            uses.count(&format!("u{}", i % 1000));
        }
        assert_eq!(uses.of("hot"), 5);
        assert_eq!(uses.of("once"), 0);
        assert!(!uses.counts.contains_key("once"));
    }

    #[test]
    fn a_user_outweighs_another_only_when_wanted_more_than_twice_as_often() {
        let mut uses = Uses::default();
        for _ in 0..3 {
            uses.count("a");
        }
        uses.count("b");
        assert!(uses.outweighs("a", "b"));
        assert!(!uses.outweighs("b", "a"));
        uses.count("b");
        // 3 against 2: alike.
        assert!(!uses.outweighs("a", "b"));
        // Anyone used outweighs a user never used; no one outweighs themself.
        assert!(uses.outweighs("b", "nobody"));
        assert!(!uses.outweighs("nobody", "nobody"));
    }

    #[test]
    fn too_many_users_bring_the_halving_forward() {
        let mut uses = Uses::default();
        uses.count("kept");
        uses.count("kept");
        for i in 0..MAX_USERS - 1 {
            uses.counts.insert(format!("u{i}"), 1);
        }
        uses.count("newcomer");
        assert_eq!(uses.of("kept"), 1);
        assert_eq!(uses.of("newcomer"), 1);
        assert_eq!(uses.counts.len(), 2);
    }
}
