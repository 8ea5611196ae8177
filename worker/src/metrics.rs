//! The worker's Prometheus metrics: slot use and the attempts it ran.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tunefleet_proto::v1::Outcome;

use crate::agent::SlotConfig;

/// Labels of the per-slot metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
    /// "cpu", or "cuda:" and the host's device numbers.
    device: String,
}

/// Labels of `tunefleet_worker_attempts_ended_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// "succeeded", "failed" or "cancelled" as reported to the coordinator, or "abandoned"
    /// when the coordinator rejected the attempt as stale.
    outcome: &'static str,
}

/// Counters and gauges of one worker agent; clones share the values.
#[derive(Debug, Clone, Default)]
pub struct WorkerMetrics {
    num_slots: Gauge,
    busy_slots: Gauge,
    busy_seconds: Family<SlotLabels, Counter<f64, AtomicU64>>,
    attempts_started: Counter,
    attempts_ended: Family<OutcomeLabels, Counter>,
    slots: Arc<Vec<SlotConfig>>,
}

impl WorkerMetrics {
    /// Creates the metrics of a worker with `slots` and registers them in `registry`.
    pub fn register(registry: &mut Registry, slots: &[SlotConfig]) -> Self {
        let metrics = Self::new(slots);
        registry.register(
            "tunefleet_worker_slots",
            "Slots this worker offers",
            metrics.num_slots.clone(),
        );
        registry.register(
            "tunefleet_worker_busy_slots",
            "Slots running an attempt now",
            metrics.busy_slots.clone(),
        );
        registry.register(
            "tunefleet_worker_slot_busy_seconds",
            "Seconds each slot spent running attempts, added when an attempt ends",
            metrics.busy_seconds.clone(),
        );
        registry.register(
            "tunefleet_worker_attempts_started",
            "Attempts this worker started",
            metrics.attempts_started.clone(),
        );
        registry.register(
            "tunefleet_worker_attempts_ended",
            "Attempts this worker ended, by outcome",
            metrics.attempts_ended.clone(),
        );
        metrics
    }

    /// Creates metrics for `slots` that no registry exports.
    pub fn new(slots: &[SlotConfig]) -> Self {
        let metrics = Self {
            slots: Arc::new(slots.to_vec()),
            ..Self::default()
        };
        metrics.num_slots.set(slots.len() as i64);
        for slot in slots {
            // Export every slot from the start, so a rate over an idle slot reads 0.
            let _ = metrics
                .busy_seconds
                .get_or_create(&metrics.labels(slot.index));
        }
        metrics
    }

    fn labels(&self, index: u32) -> SlotLabels {
        let device = self
            .slots
            .iter()
            .find(|slot| slot.index == index)
            .map_or_else(String::new, |slot| slot.device.clone());
        SlotLabels {
            slot: index.to_string(),
            device,
        }
    }

    pub(crate) fn attempt_started(&self) {
        self.attempts_started.inc();
        self.busy_slots.inc();
    }

    pub(crate) fn attempt_ended(&self, slot: u32, busy: Duration, outcome: Option<Outcome>) {
        self.busy_slots.dec();
        self.busy_seconds
            .get_or_create(&self.labels(slot))
            .inc_by(busy.as_secs_f64());
        let outcome = match outcome {
            Some(Outcome::Succeeded) => "succeeded",
            Some(Outcome::Failed) => "failed",
            Some(Outcome::Cancelled) => "cancelled",
            Some(Outcome::Unspecified) | None => "abandoned",
        };
        self.attempts_ended
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Returns how many slots run an attempt now.
    pub fn num_busy_slots(&self) -> i64 {
        self.busy_slots.get()
    }

    /// Returns the seconds slot `index` spent running attempts that ended.
    pub fn busy_seconds(&self, index: u32) -> f64 {
        self.busy_seconds.get_or_create(&self.labels(index)).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<SlotConfig> {
        (0..2)
            .map(|index| SlotConfig {
                index,
                device: "cpu".to_string(),
                num_threads: 1,
            })
            .collect()
    }

    #[test]
    fn busy_slots_follow_attempts() {
        let metrics = WorkerMetrics::new(&slots());
        metrics.attempt_started();
        metrics.attempt_started();
        metrics.attempt_ended(1, Duration::from_millis(1500), Some(Outcome::Succeeded));
        assert_eq!(metrics.num_busy_slots(), 1);
        assert_eq!(metrics.busy_seconds(1), 1.5);
        assert_eq!(metrics.busy_seconds(0), 0.0);
    }

    #[test]
    fn registry_exports_every_slot() {
        let mut registry = Registry::default();
        WorkerMetrics::register(&mut registry, &slots());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("tunefleet_worker_slots 2\n"), "{text}");
        assert!(
            text.contains(
                "tunefleet_worker_slot_busy_seconds_total{slot=\"1\",device=\"cpu\"} 0.0"
            ),
            "{text}"
        );
    }
}
