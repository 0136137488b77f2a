//! The metrics catalogue of the invoker, served on `/metrics` in Prometheus text format.
//! Label values come from bounded sets. `docs/metrics.md` lists them for operators.

/// Counter: activations finished, by `status` (`success`, `application_error`,
/// `action_developer_error`, `whisk_internal_error`).
pub const ACTIVATIONS_TOTAL: &str = "invoker_activations_total";
/// Histogram: time from taking a message to its last ack and record.
pub const ACTIVATION_SECONDS: &str = "invoker_activation_seconds";
/// Gauge: activations held (at most maxPeek).
pub const IN_FLIGHT: &str = "invoker_activations_in_flight";
/// Counter: containers given to activations, by `start` (`warm`, `prewarm`, `cold`).
pub const CONTAINER_STARTS_TOTAL: &str = "invoker_container_starts_total";
/// Histogram: time to create and start a container (backend `create`).
pub const CONTAINER_CREATE_SECONDS: &str = "invoker_container_create_seconds";
/// Counter: containers removed by the pool, by `reason` (`evicted`, `idle`, `unhealthy`,
/// `abandoned`).
pub const CONTAINERS_REMOVED_TOTAL: &str = "invoker_containers_removed_total";
/// Counter: removals by the pool that failed (each is tried again while the pool runs).
pub const CONTAINER_REMOVE_FAILURES_TOTAL: &str = "invoker_container_remove_failures_total";
/// Gauge: memory of the containers that exist or are being created (limits, not usage).
pub const POOL_MEMORY_BYTES: &str = "invoker_pool_memory_used_bytes";
/// Gauge: the most [`POOL_MEMORY_BYTES`] ever was since start (a high-water mark, so a check
/// that memory never went over the user memory does not depend on when it samples).
pub const POOL_MEMORY_PEAK_BYTES: &str = "invoker_pool_memory_peak_bytes";
/// Counter: acks sent, by `kind` (`result`, `completion`, `combined`).
pub const ACKS_TOTAL: &str = "invoker_acks_total";
/// Counter: messages on `invoker<N>` that were not activation messages.
pub const MALFORMED_TOTAL: &str = "invoker_messages_malformed_total";
/// Counter: re-delivered activations answered from their stored record.
pub const REDELIVERED_TOTAL: &str = "invoker_redelivered_answered_total";
/// Histogram: records per `_bulk_docs` request.
pub const RECORD_BATCH_SIZE: &str = "invoker_record_batch_records";
/// Counter: records the database refused (an answer about the document; an unreachable
/// database is waited for, never counted here).
pub const RECORDS_LOST_TOTAL: &str = "invoker_records_lost_total";
/// Gauge: 1 while a component an activation needs is down (its last attempt failed and is
/// being retried), by `component` (`kafka`: acks, `couchdb`: records); the health pings stop
/// meanwhile.
pub const COMPONENT_DOWN: &str = "invoker_component_down";
/// Counter: activations whose task panicked (each answered with a system error).
pub const ACTIVATION_PANICS_TOTAL: &str = "invoker_activation_panics_total";
/// Counter: activations ended with a system error because the shutdown grace period ended.
pub const ENDED_AT_SHUTDOWN_TOTAL: &str = "invoker_activations_ended_at_shutdown_total";
/// Counter: activations given up at exit without their acks or record (the broker or the
/// database stayed down through the shutdown); their offsets stay uncommitted, so the broker
/// re-delivers them to the next start.
pub const ABANDONED_AT_EXIT_TOTAL: &str = "invoker_activations_abandoned_at_exit_total";

/// Counter: microVM boots (actions' and `auto`'s canaries), by `outcome` (`ready`,
/// `timeout`, `exited`, `error`).
pub const VM_BOOTS_TOTAL: &str = "invoker_vm_boots_total";
/// Histogram: QEMU's spawn to the guest's proxy accepting connections, for boots that got
/// there.
pub const VM_BOOT_SECONDS: &str = "invoker_vm_boot_seconds";
/// Gauge: 1 for the accelerator the VMs run with, 0 for the other, by `accelerator` (`tcg`,
/// `kvm`).
pub const VM_ACCELERATOR: &str = "invoker_vm_accelerator";
/// Counter: `auto`'s canary boots, by `accelerator` (`tcg`, `kvm`) and `outcome` (`ready`,
/// `timeout`, `exited`, `error`, `unavailable`: `/dev/kvm` does not open).
pub const VM_CANARY_TOTAL: &str = "invoker_vm_canary_total";

/// Gauge: netns mode's pre-created sandboxes waiting to be started, every shape together.
pub const PRESANDBOXES_READY: &str = "invoker_runc_presandboxes_ready";
/// Counter: cold starts that looked for a pre-created sandbox, by `outcome` (`hit`, `miss`).
pub const PRESANDBOX_TAKES_TOTAL: &str = "invoker_runc_presandbox_takes_total";
/// Counter: pre-created sandboxes that failed, by `stage` (`create`: a refill; `start`: taken
/// by a cold start, which then made a container as without them).
pub const PRESANDBOX_FAILURES_TOTAL: &str = "invoker_runc_presandbox_failures_total";

/// Every metric above, for documentation and the catalogue test.
pub const ALL: &[&str] = &[
    ACTIVATIONS_TOTAL,
    ACTIVATION_SECONDS,
    IN_FLIGHT,
    CONTAINER_STARTS_TOTAL,
    CONTAINER_CREATE_SECONDS,
    CONTAINERS_REMOVED_TOTAL,
    CONTAINER_REMOVE_FAILURES_TOTAL,
    POOL_MEMORY_BYTES,
    POOL_MEMORY_PEAK_BYTES,
    ACKS_TOTAL,
    MALFORMED_TOTAL,
    REDELIVERED_TOTAL,
    RECORD_BATCH_SIZE,
    RECORDS_LOST_TOTAL,
    COMPONENT_DOWN,
    ACTIVATION_PANICS_TOTAL,
    ENDED_AT_SHUTDOWN_TOTAL,
    ABANDONED_AT_EXIT_TOTAL,
    VM_BOOTS_TOTAL,
    VM_BOOT_SECONDS,
    VM_ACCELERATOR,
    VM_CANARY_TOTAL,
    PRESANDBOXES_READY,
    PRESANDBOX_TAKES_TOTAL,
    PRESANDBOX_FAILURES_TOTAL,
];

/// The status label of a status code.
pub fn status_label(code: u8) -> &'static str {
    match code {
        0 => "success",
        1 => "application_error",
        2 => "action_developer_error",
        _ => "whisk_internal_error",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_recorded_and_named_by_convention() {
        let sources = [
            include_str!("invoke.rs"),
            include_str!("feed.rs"),
            include_str!("pool.rs"),
            include_str!("store.rs"),
            include_str!("container/vm.rs"),
            include_str!("container/runc.rs"),
            include_str!("container/runc/presandbox.rs"),
        ]
        .concat();
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
            assert!(name.starts_with("invoker_"), "{name}");
        }
    }
}
