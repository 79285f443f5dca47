//! The three kinds of Prometheus metric engram keeps, each with or without
//! labels.
//!
//! Invariants: every label value comes from a closed set (names of
//! operations, transports, error codes, configured model names), never from
//! a request, so each family has a bounded number of series; counters only
//! grow; a histogram's `count` is the sum of its buckets, `+Inf` included.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A label value: a name from engram's own vocabulary, or (model names) the
/// operator's configuration.
pub type Label = Cow<'static, str>;

/// A value that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as an `f64`'s bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into fixed buckets (upper bounds, ascending; `+Inf`
/// implied), with their sum and count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`: observations in that bucket alone (the
    /// exposition makes them cumulative).
    counts: Vec<AtomicU64>,
    /// The sum of observations, as an `f64`'s bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Cumulative counts per bound (`+Inf` last), the sum and the count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            running += count.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied(), running));
        }
        HistogramSnapshot {
            buckets,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            count: running,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations at or below it); `None` is `+Inf`.
    pub buckets: Vec<(Option<f64>, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// One metric per combination of `N` label values, made on first use.
#[derive(Debug)]
pub struct Family<M, const N: usize> {
    names: [&'static str; N],
    make: fn() -> M,
    series: Mutex<BTreeMap<[Label; N], Arc<M>>>,
}

impl<M, const N: usize> Family<M, N> {
    pub fn new(names: [&'static str; N], make: fn() -> M) -> Self {
        Self {
            names,
            make,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The metric for these label values (in the order of the names).
    pub fn with(&self, values: [Label; N]) -> Arc<M> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series
            .entry(values)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    pub fn label_names(&self) -> &[&'static str; N] {
        &self.names
    }

    /// Every series so far, in label order.
    pub fn series(&self) -> Vec<([Label; N], Arc<M>)> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_each_observation_once_and_cumulate() {
        static BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];
        let h = Histogram::new(&BOUNDS);
        for v in [0.05, 0.1, 0.5, 20.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            [(Some(0.1), 2), (Some(1.0), 3), (Some(10.0), 3), (None, 4)]
        );
        assert_eq!(s.count, 4);
        assert!((s.sum - 20.65).abs() < 1e-9);
    }

    #[test]
    fn a_family_keeps_one_series_per_label_set() {
        let f: Family<Counter, 1> = Family::new(["kind"], Counter::default);
        f.with([Label::Borrowed("a")]).inc();
        f.with([Label::Borrowed("a")]).inc();
        f.with([Label::Owned("b".into())]).inc();
        let series = f.series();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].1.get(), 2);
        assert_eq!(series[1].1.get(), 1);
    }
}
