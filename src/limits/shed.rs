//! Load shedding: a bound on the calls in the pipeline at once.
//!
//! A call over the bound is refused at once (RESOURCE_EXHAUSTED
//! `overloaded`) instead of queueing until its deadline: under overload the
//! admitted calls keep their latency and the rest get a fast, retryable
//! answer, where a queue would make every call slow and then time out. The
//! per-connection bound (`limits.concurrency`) still applies underneath.
//!
//! The server counts a call from its arrival ([`Arrival`], taken when the
//! HTTP/2 stream is accepted, before the call waits for a worker thread)
//! to its response, so the bound sees the calls queued for the CPU, not
//! only those running; a pipeline used without the server counts its calls
//! itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The count of calls in flight, shared by every call of the process.
#[derive(Debug, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
}

/// One admitted call; dropping it (the call's end) frees its place.
#[derive(Debug)]
pub struct Admitted {
    count: Arc<AtomicUsize>,
}

/// What the transport decided for a call when it arrived, handed to the
/// pipeline with the request.
#[derive(Debug, Clone)]
pub enum Arrival {
    /// Counted from its arrival; its place is held until its response.
    Admitted(Arc<Admitted>),
    /// The bound was reached when it arrived: refuse it without work.
    Shed,
}

impl InFlight {
    /// No call in flight.
    pub fn new() -> Self {
        Self::default()
    }

    /// A place for one more call, if fewer than `bound` are in flight.
    pub fn enter(&self, bound: usize) -> Option<Admitted> {
        // Incremented first and undone on refusal: a compare-and-swap loop
        // would retry under exactly the contention this guards against.
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        if before >= bound {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted {
            count: Arc::clone(&self.count),
        })
    }

    /// The calls in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_and_places_come_back() {
        let gate = InFlight::new();
        let first = gate.enter(2).unwrap();
        let second = gate.enter(2).unwrap();
        assert!(gate.enter(2).is_none());
        assert_eq!(gate.current(), 2);
        drop(first);
        let third = gate.enter(2).unwrap();
        assert!(gate.enter(2).is_none());
        drop((second, third));
        assert_eq!(gate.current(), 0);
    }
}
