//! The metrics catalogue of the front door, served on `/metrics` in Prometheus text format.
//! Label values come from bounded sets. `docs/metrics.md` lists them for operators.

/// Counter: invocations answered, by `blocking` (`true`, `false`) and `outcome` (`success`,
/// `application_error`, `action_developer_error`, `whisk_internal_error`, `accepted` (202),
/// `not_found`, `no_invoker`, `rejected` (400/413), `failed` (the broker or database failed)).
pub const INVOCATIONS_TOTAL: &str = "standalone_invocations_total";
/// Histogram: time from an invoke request to its answer, by `blocking`.
pub const INVOKE_SECONDS: &str = "standalone_invoke_seconds";
/// Counter: HTTP requests, by `method` (`GET`, `PUT`, `POST`, `DELETE`, `HEAD`, `OPTIONS`,
/// `PATCH` or `other`) and `status` (the status class: `2xx`, `4xx`, `5xx`).
pub const REQUESTS_TOTAL: &str = "standalone_requests_total";
/// Gauge: invokers by `state` (`up`, `unhealthy`, `down`), set when `/metrics` is read.
pub const INVOKERS: &str = "standalone_invokers";
/// Counter: blocking invokes answered from the activations database instead of the ack.
pub const RECORDS_FROM_DATABASE_TOTAL: &str = "standalone_records_from_database_total";

/// Every metric above, for documentation and the catalogue test.
pub const ALL: &[&str] = &[
    INVOCATIONS_TOTAL,
    INVOKE_SECONDS,
    REQUESTS_TOTAL,
    INVOKERS,
    RECORDS_FROM_DATABASE_TOTAL,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_recorded_and_named_by_convention() {
        let sources = [include_str!("api.rs"), include_str!("invocations.rs")].concat();
        let consts: Vec<&str> = include_str!("metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split(':').next())
            .filter(|n| *n != "ALL")
            .collect();
        assert_eq!(consts.len(), super::ALL.len());
        for name in consts {
            assert!(
                sources.contains(&format!("metrics::{name}")),
                "metric {name} is never recorded"
            );
        }
        for name in super::ALL {
            assert!(name.starts_with("standalone_"), "{name}");
        }
    }
}
