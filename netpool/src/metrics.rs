//! The metrics catalogue of `netpool`. Every metric carries the label `pool` (the pool's
//! name); label values come from bounded sets. `docs/metrics.md` lists them for operators.

/// Gauge: slots ready to lease.
pub const SLOTS_IDLE: &str = "netpool_slots_idle";
/// Gauge: slots leased out.
pub const SLOTS_LEASED: &str = "netpool_slots_leased";
/// Histogram: time `lease` waited for a slot (zero on a hit).
pub const LEASE_WAIT_SECONDS: &str = "netpool_lease_wait_seconds";
/// Counter: leases that found no slot before their deadline.
pub const LEASE_TIMEOUTS_TOTAL: &str = "netpool_lease_timeouts_total";
/// Counter: slots created.
pub const SLOTS_CREATED_TOTAL: &str = "netpool_slots_created_total";
/// Histogram: time to create one slot.
pub const SLOT_CREATE_SECONDS: &str = "netpool_slot_create_seconds";
/// Counter: slot creations that failed (and were undone).
pub const SLOT_CREATE_FAILURES_TOTAL: &str = "netpool_slot_create_failures_total";
/// Counter: slots destroyed, by `reason` (`tainted`, `scrub_failed`, `shutdown`, `reconcile`).
pub const SLOTS_DESTROYED_TOTAL: &str = "netpool_slots_destroyed_total";
/// Counter: released slots that failed a scrub check, by `check` (`process`, `socket`,
/// `state`, `conntrack`, `error`).
pub const SCRUB_FAILURES_TOTAL: &str = "netpool_scrub_failures_total";
/// Counter: released slots that passed the scrub and went back to the pool.
pub const SLOTS_RECYCLED_TOTAL: &str = "netpool_slots_recycled_total";

/// Every metric above, for documentation and the catalogue test.
pub const ALL: &[&str] = &[
    SLOTS_IDLE,
    SLOTS_LEASED,
    LEASE_WAIT_SECONDS,
    LEASE_TIMEOUTS_TOTAL,
    SLOTS_CREATED_TOTAL,
    SLOT_CREATE_SECONDS,
    SLOT_CREATE_FAILURES_TOTAL,
    SLOTS_DESTROYED_TOTAL,
    SCRUB_FAILURES_TOTAL,
    SLOTS_RECYCLED_TOTAL,
];

/// Describes every metric to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(SLOTS_IDLE, Unit::Count, "slots ready to lease");
    describe_gauge!(SLOTS_LEASED, Unit::Count, "slots leased out");
    describe_histogram!(
        LEASE_WAIT_SECONDS,
        Unit::Seconds,
        "time lease waited for a slot"
    );
    describe_counter!(
        LEASE_TIMEOUTS_TOTAL,
        Unit::Count,
        "leases that found no slot in time"
    );
    describe_counter!(SLOTS_CREATED_TOTAL, Unit::Count, "slots created");
    describe_histogram!(
        SLOT_CREATE_SECONDS,
        Unit::Seconds,
        "time to create one slot"
    );
    describe_counter!(
        SLOT_CREATE_FAILURES_TOTAL,
        Unit::Count,
        "slot creations that failed"
    );
    describe_counter!(
        SLOTS_DESTROYED_TOTAL,
        Unit::Count,
        "slots destroyed, by reason"
    );
    describe_counter!(
        SCRUB_FAILURES_TOTAL,
        Unit::Count,
        "released slots failing a scrub check"
    );
    describe_counter!(
        SLOTS_RECYCLED_TOTAL,
        Unit::Count,
        "released slots returned to the pool"
    );
}

#[cfg(test)]
mod tests {
    /// Every declared metric is recorded somewhere in the crate's sources.
    #[test]
    fn every_metric_is_recorded() {
        let sources = [include_str!("pool.rs"), include_str!("slot.rs")].concat();
        for (konst, _) in [
            ("SLOTS_IDLE", ()),
            ("SLOTS_LEASED", ()),
            ("LEASE_WAIT_SECONDS", ()),
            ("LEASE_TIMEOUTS_TOTAL", ()),
            ("SLOTS_CREATED_TOTAL", ()),
            ("SLOT_CREATE_SECONDS", ()),
            ("SLOT_CREATE_FAILURES_TOTAL", ()),
            ("SLOTS_DESTROYED_TOTAL", ()),
            ("SCRUB_FAILURES_TOTAL", ()),
            ("SLOTS_RECYCLED_TOTAL", ()),
        ] {
            assert!(
                sources.contains(&format!("m::{konst}")),
                "metric {konst} is never recorded"
            );
        }
        assert_eq!(super::ALL.len(), 10);
    }
}
