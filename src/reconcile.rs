//! Reconciliation: what each new fact means for what is already stored.
//!
//! For every fact, the current memories of the same scope at least
//! `threshold` similar to it are gathered (at most [`CANDIDATES`] per fact).
//! None at all: every fact is an ADD and no model is asked. Otherwise the
//! extractor decides for all facts in one call, seeing each memory under a
//! short alias. Its answer is only advice:
//! * an alias that was not shown, a fact number out of range, a second
//!   decision for a fact, or a second decision on the same memory is
//!   dropped, and the fact falls back to ADD (the store still refuses a
//!   duplicate), so an invented id never touches stored data;
//! * a fact without a decision is an ADD.
//!
//! The searches also tell the writes what they found ([`Searched`]): a fact
//! no memory of the user came near, at a version the store names, needs no
//! second search for near-duplicates while the user is still at it.

use std::collections::{HashMap, HashSet};

use crate::error::Error;
use crate::extract::{Action, Decided, Extractor, Known, Usage};
use crate::model::{Fact, Memory, MemoryId, Scope};
use crate::store::{SearchScope, Store};

/// Similar memories considered per fact.
pub const CANDIDATES: usize = 5;

/// What to do with one fact.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Add,
    /// Rewrite memory `id` to `text`.
    Update {
        id: MemoryId,
        text: String,
    },
    /// Close memory `id`; the fact replaces it.
    Supersede {
        id: MemoryId,
    },
    /// Already known as `memory`.
    Keep {
        memory: Memory,
    },
}

/// What a fact's search found of the whole user, at the version the store
/// read it at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Searched {
    pub version: u64,
    /// The highest similarity of any current memory of the user to the
    /// fact (`f32::NEG_INFINITY` when the user holds none).
    pub best: f32,
}

impl Searched {
    /// The version at which the fact was found nearer than `threshold` to
    /// no memory, if it was.
    pub fn clear_of(&self, threshold: f32) -> Option<u64> {
        (self.best < threshold).then_some(self.version)
    }
}

/// A remember's reconciliation: one plan per fact, in order, what asking
/// the model cost, and per fact what its search found when it covered the
/// whole user at a known version (empty when no search was made).
#[derive(Debug, Default)]
pub struct Reconciled {
    pub plans: Vec<Plan>,
    pub usage: Usage,
    pub searched: Vec<Option<Searched>>,
}

/// Plans each of `facts` against the memories of `scope`. Asks `extractor`
/// at most once. Memories in `exclude` are never shown (a re-extraction's
/// own verbatim copies, which its facts replace). `seen` is the user's
/// version read since the remember began, if it was
/// ([`crate::store::Search::version_now`]).
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    store: &dyn Store,
    extractor: &dyn Extractor,
    scope: &Scope,
    facts: &[Fact],
    embeddings: &[Vec<f32>],
    threshold: f32,
    exclude: &[MemoryId],
    seen: Option<u64>,
) -> Result<Reconciled, Error> {
    let mut out = Reconciled {
        plans: vec![Plan::Add; facts.len()],
        ..Reconciled::default()
    };
    if !extractor.reconciles() {
        return Ok(out);
    }
    let at = SearchScope::unfiltered(scope);
    // Every fact's search, in the facts' order (on PostgreSQL, from the
    // user's copy in one read, else each on its own connection at once,
    // through the vector index where the user's rows are in it), each
    // reading its similar memories with it.
    let mut found = store
        .similar_all(at, embeddings, CANDIDATES, Some(threshold), seen)
        .await?;
    // The memories the searches read, if every one did; else read after.
    let loaded: Option<Vec<Memory>> = found
        .iter_mut()
        .map(|nearest| nearest.memories.take())
        .collect::<Option<Vec<_>>>()
        .map(|each| each.into_iter().flatten().collect());
    out.searched = found
        .iter()
        .map(|nearest| {
            let version = nearest.version.filter(|_| scope.is_whole_user())?;
            let best = nearest.hits.iter().map(|h| h.score);
            Some(Searched {
                version,
                best: best.fold(f32::NEG_INFINITY, f32::max),
            })
        })
        .collect();
    let mut similar: Vec<MemoryId> = Vec::new();
    for nearest in found {
        for hit in nearest.hits {
            if hit.score >= threshold && !similar.contains(&hit.id) && !exclude.contains(&hit.id) {
                similar.push(hit.id);
            }
        }
    }
    if similar.is_empty() {
        return Ok(out);
    }
    let memories = match loaded {
        Some(memories) => memories,
        None => store.get_many(scope.user_id(), &similar).await?,
    };
    let mut by_id: HashMap<MemoryId, Memory> = memories.into_iter().map(|m| (m.id, m)).collect();
    let mut known = Vec::new();
    let mut aliases: HashMap<String, Memory> = HashMap::new();
    for id in &similar {
        if let Some(memory) = by_id.remove(id) {
            let alias = format!("m{}", known.len() + 1);
            known.push(Known {
                alias: alias.clone(),
                text: memory.memory.clone(),
            });
            aliases.insert(alias, memory);
        }
    }
    let Some(Decided { decisions, usage }) = extractor.reconcile(facts, &known).await? else {
        return Ok(out);
    };
    out.usage = usage;
    let plans = &mut out.plans;

    let mut decided: HashSet<usize> = HashSet::new();
    let mut targeted: HashSet<MemoryId> = HashSet::new();
    for decision in decisions {
        if decision.fact >= facts.len() || !decided.insert(decision.fact) {
            tracing::warn!(
                fact = decision.fact,
                "reconciler: decision for no such fact, or a second one; ignored"
            );
            continue;
        }
        let target = |alias: &str| -> Option<&Memory> {
            let found = aliases.get(alias);
            if found.is_none() {
                tracing::warn!(
                    alias,
                    "reconciler: an id that was not shown; the fact is added instead"
                );
            }
            found
        };
        let planned = match &decision.action {
            Action::Add => Plan::Add,
            Action::Update { alias, text } => match target(alias) {
                Some(m) => Plan::Update {
                    id: m.id,
                    text: text.clone(),
                },
                None => Plan::Add,
            },
            Action::Supersede { alias } => match target(alias) {
                Some(m) => Plan::Supersede { id: m.id },
                None => Plan::Add,
            },
            Action::Keep { alias } => match target(alias) {
                Some(m) => Plan::Keep { memory: m.clone() },
                None => Plan::Add,
            },
        };
        let id = match &planned {
            Plan::Update { id, .. } | Plan::Supersede { id } => Some(*id),
            Plan::Keep { .. } | Plan::Add => None,
        };
        if let Some(id) = id
            && !targeted.insert(id)
        {
            tracing::warn!(%id, "reconciler: a second change to one memory; the fact is added instead");
            continue;
        }
        plans[decision.fact] = planned;
    }
    Ok(out)
}
