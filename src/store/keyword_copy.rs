//! An in-process copy of one user's keyword postings, held inside the
//! user's vector copy ([`super::vector_index::UserVectors`]) and so loaded,
//! changed and validated with it: the same generation covers both.
//!
//! Scoring is the store's BM25 ([`Bm25`]) over the memories the copy holds:
//! term frequencies over the whole user, the postings scored only where the
//! caller's scope filter admits them. Reading a query's postings here costs
//! a pass over in-memory lists instead of a statement that reads and
//! serialises every matching posting row.
//!
//! Invariant: each memory is in the copy at most once, with exactly the
//! terms [`crate::keywords::document_terms`] gives its text, and `docs` /
//! `total_length` are the count and summed lengths of the memories held.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::scratch;
use crate::keywords::{Bm25, Corpus, DocumentTerms};
use crate::model::MemoryId;

/// What scoring reads of a memory for each of its postings: kept by slot
/// apart from [`Slot`], so that a pass over a common term's postings (tens
/// of thousands at 100,000 memories) reads 8 bytes a memory from a dense
/// array instead of a whole slot each (most of the pass's time was those
/// slots' cache misses).
#[derive(Debug, Clone, Copy, Default)]
struct Shape {
    /// Its text's length in terms.
    length: u32,
    /// Its scope, as numbered by the vector copy (fewer than the slots,
    /// which are numbered by `u32`).
    scope: u32,
}

/// What a memory costs beyond its postings: its slot, its shape and its
/// entries in the two maps to its slot (by pk, by id, roughly 16 and 24).
const SLOT_BYTES: usize =
    std::mem::size_of::<Option<Slot>>() + std::mem::size_of::<Shape>() + 16 + 24;

/// One memory's place in the copy.
#[derive(Debug, Clone)]
struct Slot {
    pk: i64,
    id: MemoryId,
    /// Term ids of its postings.
    terms: Box<[u32]>,
}

#[derive(Debug, Clone, Default)]
pub struct UserKeywords {
    term_ids: HashMap<Box<str>, u32>,
    /// Each term id's postings: (slot, term count).
    postings: Vec<Vec<(u32, u32)>>,
    /// Memories by slot; a freed slot is `None` until reused.
    slots: Vec<Option<Slot>>,
    /// By slot, as `slots` (a freed slot's is stale: no posting names it).
    shapes: Vec<Shape>,
    free: Vec<u32>,
    by_pk: HashMap<i64, u32>,
    /// Slots by memory id, for a query's relevance of one memory.
    by_id: HashMap<MemoryId, u32>,
    docs: u64,
    total_length: u64,
    posting_count: usize,
}

impl UserKeywords {
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Adds memory `pk` (`id`) of scope `scope` with its text's `terms`, in
    /// place of what the copy held for it.
    pub fn insert(&mut self, pk: i64, id: MemoryId, scope: usize, terms: &DocumentTerms) {
        self.remove(pk);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.shapes.push(Shape::default());
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.shapes[slot as usize] = Shape {
            length: terms.length,
            scope: u32::try_from(scope).unwrap_or(u32::MAX),
        };
        let mut term_ids = Vec::with_capacity(terms.counts.len());
        for (term, tf) in &terms.counts {
            let next = u32::try_from(self.postings.len()).unwrap_or(u32::MAX);
            let term_id = *self.term_ids.entry(term.as_str().into()).or_insert(next);
            if term_id == next {
                self.postings.push(Vec::new());
            }
            self.postings[term_id as usize].push((slot, *tf));
            term_ids.push(term_id);
        }
        self.posting_count += term_ids.len();
        self.slots[slot as usize] = Some(Slot {
            pk,
            id,
            terms: term_ids.into(),
        });
        self.by_pk.insert(pk, slot);
        self.by_id.insert(id, slot);
        self.docs += 1;
        self.total_length += u64::from(terms.length);
    }

    /// Drops memory `pk`'s postings, if the copy holds it.
    pub fn remove(&mut self, pk: i64) {
        let Some(slot) = self.by_pk.remove(&pk) else {
            return;
        };
        let Some(gone) = self.slots[slot as usize].take() else {
            return;
        };
        self.by_id.remove(&gone.id);
        for &id in &gone.terms {
            let list = &mut self.postings[id as usize];
            if let Some(at) = list.iter().position(|&(s, _)| s == slot) {
                list.swap_remove(at);
            }
        }
        self.posting_count -= gone.terms.len();
        self.docs -= 1;
        self.total_length -= u64::from(self.shapes[slot as usize].length);
        self.free.push(slot);
    }

    /// The bytes [`Self::bytes`] gives at least for a copy of `memories`
    /// memories, before any posting.
    pub fn bytes_at_least(memories: usize) -> usize {
        memories * SLOT_BYTES
    }

    /// Approximate heap bytes held, for the copies' memory budget.
    pub fn bytes(&self) -> usize {
        self.posting_count * 8 + self.slots.len() * SLOT_BYTES + self.term_ids.len() * 48
    }

    /// BM25 relevance (pk, id, score) of every memory holding a term of
    /// `terms` whose scope `counted` admits, in no particular order: what
    /// [`QueryScores`] is checked against (searches read the best few).
    #[cfg(test)]
    pub fn score(
        &self,
        terms: &[String],
        counted: impl Fn(usize) -> bool,
    ) -> Vec<(i64, MemoryId, f32)> {
        let scores = self.query(terms, counted);
        scores
            .touched
            .iter()
            .filter_map(|&slot| {
                let memory = scores.memory(slot)?;
                Some((memory.pk, memory.id, scores.relevance(slot)))
            })
            .collect()
    }

    /// One pass over `terms`' postings: the BM25 of every memory holding
    /// one whose scope `counted` admits, kept by slot ([`QueryScores`]).
    pub fn query(&self, terms: &[String], counted: impl Fn(usize) -> bool) -> QueryScores<'_> {
        let lists: Vec<&[(u32, u32)]> = terms
            .iter()
            .map(|term| {
                self.term_ids
                    .get(term.as_str())
                    .map_or(&[][..], |&id| &self.postings[id as usize][..])
            })
            .collect();
        let doc_freq: Vec<u64> = lists.iter().map(|list| list.len() as u64).collect();
        let bm25 = Bm25::new(
            Corpus {
                docs: self.docs,
                total_length: self.total_length,
            },
            &doc_freq,
        );
        // Raw scores by slot, summed term by term in query order. A term's
        // weight is positive (its IDF is), so 0 means not yet touched.
        let mut raw = scratch::take_zeroed(self.slots.len());
        let mut touched: Vec<u32> = Vec::new();
        for (i, list) in lists.iter().enumerate() {
            for &(slot, tf) in *list {
                let shape = self.shapes[slot as usize];
                if counted(shape.scope as usize) {
                    let sum = &mut raw[slot as usize];
                    if *sum == 0.0 {
                        touched.push(slot);
                    }
                    *sum += bm25.term_weight(i, tf, shape.length);
                }
            }
        }
        QueryScores {
            keywords: self,
            raw,
            touched,
            bm25,
        }
    }
}

/// A scored memory (relevance, id, pk) ordered worst last: greater means a
/// lower relevance, or the same relevance and a greater id (which a ranking
/// puts after). An id names one pk, so the pk only keeps `Ord` total.
#[derive(Debug, PartialEq)]
struct Worse(f32, MemoryId, i64);

impl Eq for Worse {}

impl PartialOrd for Worse {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Worse {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .total_cmp(&self.0)
            .then(self.1.cmp(&other.1))
            .then(self.2.cmp(&other.2))
    }
}

/// One query's BM25 over a copy ([`UserKeywords::query`]), read as the best
/// few memories or as one memory's relevance: nothing is sorted or hashed
/// beyond what is read, which matters for a common term held by tens of
/// thousands of memories.
///
/// Invariant: `raw[slot] > 0` exactly for the slots in `touched`, each a
/// memory held by the copy that holds a query term; every other entry is
/// zero (`raw`, a [`scratch`] buffer, may run past the copy's slots).
pub struct QueryScores<'a> {
    keywords: &'a UserKeywords,
    raw: Vec<f64>,
    touched: Vec<u32>,
    bm25: Bm25,
}

impl Drop for QueryScores<'_> {
    /// Zeroes what the query wrote (only the touched slots: the invariant)
    /// and gives the buffer back for the thread's next query.
    fn drop(&mut self) {
        let mut raw = std::mem::take(&mut self.raw);
        for &slot in &self.touched {
            raw[slot as usize] = 0.0;
        }
        scratch::give_zeroed(raw);
    }
}

impl QueryScores<'_> {
    fn relevance(&self, slot: u32) -> f32 {
        self.bm25.relevance(self.raw[slot as usize])
    }

    fn memory(&self, slot: u32) -> Option<&Slot> {
        self.keywords.slots[slot as usize].as_ref()
    }

    /// Up to `k` memories (pk, id, relevance) whose pk `admit` accepts,
    /// best first, ties by id (as all the scores sorted would
    /// give them). One pass that keeps the best `k` so far: most memories
    /// cost one comparison with the worst of them, and only those that
    /// would enter are asked about.
    pub fn best(&self, k: usize, admit: impl Fn(i64) -> bool) -> Vec<(i64, MemoryId, f32)> {
        if k == 0 {
            return Vec::new();
        }
        // A max-heap of `Worse`: its top is the worst kept.
        let mut kept: BinaryHeap<Worse> = BinaryHeap::with_capacity(k + 1);
        for &slot in &self.touched {
            let relevance = self.relevance(slot);
            if kept.len() == k && kept.peek().is_some_and(|w| relevance < w.0) {
                continue;
            }
            let Some(memory) = self.memory(slot) else {
                continue;
            };
            let candidate = Worse(relevance, memory.id, memory.pk);
            if kept.len() == k && kept.peek().is_some_and(|w| candidate >= *w) {
                continue;
            }
            if !admit(memory.pk) {
                continue;
            }
            kept.push(candidate);
            if kept.len() > k {
                kept.pop();
            }
        }
        // Ascending by `Worse` is best first.
        kept.into_sorted_vec()
            .into_iter()
            .map(|Worse(score, id, pk)| (pk, id, score))
            .collect()
    }

    /// Memory `id`'s relevance, when it holds a query term (and was counted).
    pub fn of(&self, id: MemoryId) -> Option<f32> {
        let &slot = self.keywords.by_id.get(&id)?;
        (self.raw.get(slot as usize).copied()? > 0.0).then(|| self.relevance(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keywords::{document_terms, query_terms};

    /// The copy scores as BM25 does over the same memories, computed here
    /// from the texts alone.
    fn reference(texts: &[(i64, &str)], query: &str) -> Vec<(i64, f32)> {
        let terms = query_terms(query);
        let docs: Vec<(i64, DocumentTerms)> = texts
            .iter()
            .map(|(pk, text)| (*pk, document_terms(text)))
            .collect();
        let doc_freq: Vec<u64> = terms
            .iter()
            .map(|t| {
                docs.iter()
                    .filter(|(_, d)| d.counts.iter().any(|(x, _)| x == t))
                    .count() as u64
            })
            .collect();
        let corpus = Corpus {
            docs: docs.len() as u64,
            total_length: docs.iter().map(|(_, d)| u64::from(d.length)).sum(),
        };
        let bm25 = Bm25::new(corpus, &doc_freq);
        let mut out: Vec<(i64, f32)> = docs
            .iter()
            .filter_map(|(pk, d)| {
                let matches: Vec<(usize, u32)> = terms
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        d.counts.iter().find(|(x, _)| x == t).map(|(_, n)| (i, *n))
                    })
                    .collect();
                (!matches.is_empty()).then(|| (*pk, bm25.score(d.length, matches)))
            })
            .collect();
        out.sort_by_key(|&(pk, _)| pk);
        out
    }

    fn sorted(scores: Vec<(i64, MemoryId, f32)>) -> Vec<(i64, f32)> {
        let mut scores: Vec<(i64, f32)> = scores.into_iter().map(|(pk, _, s)| (pk, s)).collect();
        scores.sort_by_key(|&(pk, _)| pk);
        scores
    }

    fn insert(copy: &mut UserKeywords, pk: i64, scope: usize, text: &str) {
        copy.insert(pk, MemoryId::new(), scope, &document_terms(text));
    }

    #[test]
    fn scores_match_bm25_over_the_held_memories_through_inserts_and_removals() {
        let mut texts: Vec<(i64, &str)> = vec![
            (1, "Drinks green tea every morning"),
            (2, "Tea before every long run, green or black"),
            (3, "Coffee after the gym"),
            (4, "Runs a long trail on Sundays"),
            (5, "Hates tea"),
        ];
        let mut copy = UserKeywords::default();
        for (pk, text) in &texts {
            insert(&mut copy, *pk, 0, text);
        }
        for query in [
            "green tea",
            "long run",
            "coffee",
            "sailing",
            "tea tea morning run",
        ] {
            assert_eq!(
                sorted(copy.score(&query_terms(query), |_| true)),
                reference(&texts, query),
                "{query}"
            );
        }
        // A removal, a changed text (insert over the same pk) and a slot reused.
        copy.remove(2);
        insert(&mut copy, 3, 0, "Green tea after the gym");
        insert(&mut copy, 6, 0, "Morning run by the river");
        copy.remove(42);
        texts.retain(|(pk, _)| *pk != 2 && *pk != 3);
        texts.push((3, "Green tea after the gym"));
        texts.push((6, "Morning run by the river"));
        for query in ["green tea", "long run", "morning", "coffee"] {
            assert_eq!(
                sorted(copy.score(&query_terms(query), |_| true)),
                reference(&texts, query),
                "{query}"
            );
        }
        assert_eq!(copy.docs, 5);
        assert_eq!(copy.slots.len(), 5, "freed slots were reused");
    }

    /// A scope filter leaves memories out of the scores, not out of the
    /// statistics: a narrowed search ranks with the user's term frequencies.
    #[test]
    fn a_scope_filter_keeps_the_users_statistics() {
        let mut copy = UserKeywords::default();
        insert(&mut copy, 1, 0, "green tea");
        insert(&mut copy, 2, 1, "green tea");
        insert(&mut copy, 3, 1, "black coffee");
        let all = sorted(copy.score(&query_terms("tea"), |_| true));
        let narrowed = sorted(copy.score(&query_terms("tea"), |scope| scope == 1));
        assert_eq!(narrowed, vec![(2, all[1].1)]);
    }

    /// The best few and one memory's relevance are what the full scores
    /// say, sorted best first with ties by id: over many memories with
    /// equal scores (repeated texts), with some left out by `admit`.
    #[test]
    fn the_best_few_and_each_memorys_relevance_agree_with_the_full_scores() {
        let texts = [
            "green tea in the morning",
            "black tea after lunch",
            "green tea",
            "coffee and green tea",
            "a long run before tea",
            "tea",
        ];
        let mut copy = UserKeywords::default();
        for pk in 0..60 {
            insert(&mut copy, pk, 0, texts[pk as usize % texts.len()]);
        }
        copy.remove(7);
        let admit = |pk: i64| pk % 5 != 3;
        for query in ["green tea", "tea", "long run", "coffee morning", "sailing"] {
            let terms = query_terms(query);
            let mut expected = copy.score(&terms, |_| true);
            expected.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.cmp(&b.1)));
            let scores = copy.query(&terms, |_| true);
            for k in [0, 1, 3, 10, 100] {
                let want: Vec<(i64, MemoryId, f32)> = expected
                    .iter()
                    .filter(|(pk, ..)| admit(*pk))
                    .take(k)
                    .copied()
                    .collect();
                assert_eq!(scores.best(k, admit), want, "{query}, k {k}");
            }
            for slot in copy.slots.iter().flatten() {
                let want = expected
                    .iter()
                    .find(|(_, id, _)| *id == slot.id)
                    .map(|&(.., score)| score);
                assert_eq!(scores.of(slot.id), want, "{query}");
            }
            assert_eq!(scores.of(MemoryId::new()), None);
        }
    }

    #[test]
    fn an_empty_copy_or_unknown_terms_score_nothing() {
        let mut copy = UserKeywords::default();
        assert!(copy.score(&query_terms("tea"), |_| true).is_empty());
        insert(&mut copy, 1, 0, "green tea");
        assert!(copy.score(&query_terms("sailing"), |_| true).is_empty());
        copy.clear();
        assert_eq!(copy.bytes(), 0);
    }
}
