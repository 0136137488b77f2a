//! The metrics catalogue of `pcpm`. Every metric carries the label `pool` (the key id,
//! [`crate::NetworkKey::id`]); label values come from bounded sets. `docs/metrics.md` lists
//! them for operators.

/// Gauge: pause containers ready to hand out.
pub const IDLE: &str = "pcpm_pause_containers_idle";
/// Gauge: pause containers handed out.
pub const LEASED: &str = "pcpm_pause_containers_leased";
/// Histogram: time `acquire` took, by `outcome` (`hit`, `waited`, `fallback`, `exhausted`).
pub const ACQUIRE_SECONDS: &str = "pcpm_acquire_seconds";
/// Counter: acquisitions on an empty pool that fell back to ordinary Docker networking.
pub const FALLBACKS_TOTAL: &str = "pcpm_fallbacks_total";
/// Counter: acquisitions that found nothing before their deadline.
pub const EXHAUSTED_TOTAL: &str = "pcpm_exhausted_total";
/// Counter: pause containers created and started.
pub const CREATED_TOTAL: &str = "pcpm_pause_containers_created_total";
/// Histogram: time to create, start and fingerprint one pause container.
pub const CREATE_SECONDS: &str = "pcpm_pause_create_seconds";
/// Counter: creations that failed (and were undone).
pub const CREATE_FAILURES_TOTAL: &str = "pcpm_pause_create_failures_total";
/// Counter: pause containers of an earlier run taken over at start-up.
pub const ADOPTED_TOTAL: &str = "pcpm_pause_containers_adopted_total";
/// Counter: released pause containers that passed the checks and went back to the pool.
pub const RECYCLED_TOTAL: &str = "pcpm_pause_containers_recycled_total";
/// Counter: pause containers removed, by `reason` (`dirty`, `dropped`, `shutdown`,
/// `reconcile`).
pub const REMOVED_TOTAL: &str = "pcpm_pause_containers_removed_total";
/// Histogram: time the release checks took.
pub const RELEASE_CHECK_SECONDS: &str = "pcpm_release_check_seconds";

/// Every metric above, for documentation and the catalogue test.
pub const ALL: &[&str] = &[
    IDLE,
    LEASED,
    ACQUIRE_SECONDS,
    FALLBACKS_TOTAL,
    EXHAUSTED_TOTAL,
    CREATED_TOTAL,
    CREATE_SECONDS,
    CREATE_FAILURES_TOTAL,
    ADOPTED_TOTAL,
    RECYCLED_TOTAL,
    REMOVED_TOTAL,
    RELEASE_CHECK_SECONDS,
];

/// Describes every metric to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(IDLE, Unit::Count, "pause containers ready to hand out");
    describe_gauge!(LEASED, Unit::Count, "pause containers handed out");
    describe_histogram!(
        ACQUIRE_SECONDS,
        Unit::Seconds,
        "time acquire took, by outcome"
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        Unit::Count,
        "acquisitions that fell back to ordinary Docker networking"
    );
    describe_counter!(
        EXHAUSTED_TOTAL,
        Unit::Count,
        "acquisitions that found nothing in time"
    );
    describe_counter!(CREATED_TOTAL, Unit::Count, "pause containers created");
    describe_histogram!(
        CREATE_SECONDS,
        Unit::Seconds,
        "time to create one pause container"
    );
    describe_counter!(
        CREATE_FAILURES_TOTAL,
        Unit::Count,
        "pause container creations that failed"
    );
    describe_counter!(
        ADOPTED_TOTAL,
        Unit::Count,
        "pause containers of an earlier run taken over"
    );
    describe_counter!(
        RECYCLED_TOTAL,
        Unit::Count,
        "released pause containers returned to the pool"
    );
    describe_counter!(
        REMOVED_TOTAL,
        Unit::Count,
        "pause containers removed, by reason"
    );
    describe_histogram!(
        RELEASE_CHECK_SECONDS,
        Unit::Seconds,
        "time the release checks took"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_recorded() {
        let sources = include_str!("pool.rs");
        let consts: Vec<&str> = include_str!("metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split(':').next())
            .filter(|name| *name != "ALL")
            .collect();
        assert_eq!(consts.len(), super::ALL.len(), "ALL misses a metric");
        for name in consts {
            assert!(
                sources.contains(&format!("m::{name}")),
                "metric {name} is never recorded"
            );
        }
    }

    #[test]
    fn names_follow_the_convention() {
        for name in super::ALL {
            assert!(name.starts_with("pcpm_"), "{name}");
            assert!(
                name.ends_with("_total")
                    || name.ends_with("_seconds")
                    || name.ends_with("_idle")
                    || name.ends_with("_leased"),
                "{name} has no unit suffix"
            );
        }
    }
}
