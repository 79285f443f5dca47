//! Per-thread scratch buffers for the scans over a user's in-process copy.
//!
//! A search over a copy of 100k rows needs a score per row: 400 KB of f32
//! for the vector scan and 800 KB of f64 for the keyword sums. Allocated
//! afresh, buffers that large come straight from the kernel (glibc maps
//! them), so every recall paid a page fault per 4 KB to first touch them
//! and an unmap to give them back: about a seventh of a recall's samples
//! at 100k (docs/benchmarks.md, SQLite, "Both 100k targets on a slower
//! machine"). Each thread keeps the last buffer it gave back instead, so
//! a thread's next scan reuses it.
//!
//! Invariants:
//! * a zeroed buffer ([`take_zeroed`]) holds only zeros, and is given back
//!   ([`give_zeroed`]) only when it holds only zeros again: its user resets
//!   what it wrote, which costs what it touched rather than its length;
//! * a thread holds at most one buffer of each kind, so what is kept is
//!   bounded by the threads times the largest copy's rows (and never more
//!   than [`KEEP_AT_MOST`] bytes a buffer).

use std::cell::Cell;

/// Bytes above which a buffer given back is freed rather than kept.
pub const KEEP_AT_MOST: usize = 64 << 20;

thread_local! {
    static SCORES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static ZEROED: Cell<Vec<f64>> = const { Cell::new(Vec::new()) };
}

/// A buffer of `len` f32 whose contents are unspecified: for a scan that
/// writes every element before it reads one.
pub fn take_scores(len: usize) -> Vec<f32> {
    let mut buffer = SCORES.with(Cell::take);
    buffer.resize(len, 0.0);
    buffer
}

/// Gives back a buffer from [`take_scores`] for this thread's next scan.
pub fn give_scores(buffer: Vec<f32>) {
    if buffer.capacity() * std::mem::size_of::<f32>() <= KEEP_AT_MOST {
        SCORES.with(|kept| kept.set(buffer));
    }
}

/// A buffer of at least `len` f64, every one zero.
pub fn take_zeroed(len: usize) -> Vec<f64> {
    let mut buffer = ZEROED.with(Cell::take);
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    buffer
}

/// Gives back a buffer from [`take_zeroed`], which must hold only zeros
/// again (checked in debug builds).
pub fn give_zeroed(buffer: Vec<f64>) {
    debug_assert!(
        buffer.iter().all(|&x| x == 0.0),
        "a zeroed buffer came back written"
    );
    if buffer.capacity() * std::mem::size_of::<f64>() <= KEEP_AT_MOST {
        ZEROED.with(|kept| kept.set(buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reuses_the_buffer_it_gave_back() {
        let mut scores = take_scores(1000);
        assert_eq!(scores.len(), 1000);
        scores[999] = 1.5;
        let at = scores.as_ptr();
        give_scores(scores);
        let again = take_scores(10);
        assert_eq!(
            (again.len(), again.as_ptr()),
            (10, at),
            "the same allocation"
        );
        give_scores(again);

        let mut zeroed = take_zeroed(500);
        assert!(zeroed.len() >= 500 && zeroed.iter().all(|&x| x == 0.0));
        zeroed[7] = 2.0;
        zeroed[7] = 0.0;
        give_zeroed(zeroed);
        let longer = take_zeroed(800);
        assert!(longer.len() >= 800 && longer.iter().all(|&x| x == 0.0));
        give_zeroed(longer);
    }

    #[test]
    fn another_thread_starts_with_its_own() {
        give_scores(vec![0.0; 64]);
        let elsewhere = std::thread::spawn(|| SCORES.with(Cell::take).capacity())
            .join()
            .unwrap();
        assert_eq!(elsewhere, 0);
    }
}
