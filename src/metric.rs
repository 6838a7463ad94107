//! Metrics: the process-wide Prometheus recorder and every series Custodia records.
//!
//! Series are recorded through the `metrics` facade and rendered as Prometheus text by
//! `GET /metrics` (no second listener, no TLS stack). The recorder is installed once per process;
//! later calls reuse it, so tests that start many apps in one process share it.
//!
//! Labels never carry an id or a value: routes are templates (`/v1/customers/{id}`), methods
//! are the standard verbs or `other`, reasons and actions are fixed codes. Nothing that a caller
//! chooses freely (paths, query strings, header values, field values) ever becomes a label.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::audit::{Action, Outcome};
use crate::policy::Reason;

/// Requests answered, by route template, method and status.
pub const HTTP_REQUESTS: &str = "custodia_http_requests_total";
/// Request latency in seconds, by route template and method.
pub const HTTP_DURATION: &str = "custodia_http_request_duration_seconds";
/// Disclosure decisions, by outcome (`allowed`, `denied`) and reason code.
pub const DISCLOSURES: &str = "custodia_disclosures_total";
/// Audit events appended, by action and outcome.
pub const AUDIT_EVENTS: &str = "custodia_audit_events_total";
/// Number of events in the audit tree.
pub const AUDIT_TREE_SIZE: &str = "custodia_audit_tree_size";
/// Events (and changes) made durable by one group-commit flush (recorded by the store).
pub const GROUP_COMMIT_BATCH: &str = "custodia_group_commit_batch_size";
/// Duration of one group-commit flush in seconds (recorded by the store).
pub const GROUP_COMMIT_FLUSH: &str = "custodia_group_commit_flush_seconds";

/// Committed audit events not yet known to be held by a stream sink, by `sink`.
pub const AUDIT_STREAM_LAG: &str = "custodia_audit_stream_lag_events";
/// Audit events a stream sink is known to hold, by `sink` (each event once per process).
pub const AUDIT_STREAM_DELIVERED: &str = "custodia_audit_stream_delivered_total";
/// Failed deliveries to a stream sink, by `sink` (each is retried).
pub const AUDIT_STREAM_FAILURES: &str = "custodia_audit_stream_failures_total";
/// Unix time in seconds when a stream sink last confirmed events, by `sink`.
pub const AUDIT_STREAM_LAST_SUCCESS: &str = "custodia_audit_stream_last_success_timestamp_seconds";
/// Unix time in seconds when the server last completed a backup, by `kind` (`scheduled` or
/// `requested` over the control socket); alert on `kind="scheduled"`.
pub const BACKUP_LAST_SUCCESS: &str = "custodia_backup_last_success_timestamp_seconds";
/// Backups the server started and did not complete.
pub const BACKUP_FAILURES: &str = "custodia_backup_failures_total";
/// 1 while this node sequences the audit log (PostgreSQL backend), else 0.
pub const AUDIT_SEQUENCER: &str = "custodia_audit_sequencer";
/// Events integrated by one sequencer batch (PostgreSQL backend).
pub const AUDIT_INTEGRATION_BATCH: &str = "custodia_audit_integration_batch_size";
/// Duration of one sequencer batch in seconds (PostgreSQL backend).
pub const AUDIT_INTEGRATION_SECONDS: &str = "custodia_audit_integration_seconds";
/// From an event's decision (its `time`) to its seq, in seconds, per event (PostgreSQL backend).
pub const AUDIT_INTEGRATION_DELAY: &str = "custodia_audit_integration_delay_seconds";

/// The route label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Buckets of the request latency histogram, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the group-commit flush histogram, in seconds (a sled flush is ~0.1–10 ms).
const FLUSH_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Buckets of the group-commit batch size histogram, in writes per flush.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// How often histogram samples are folded into their buckets when nobody scrapes, so memory
/// stays bounded between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder on first call and returns its handle; later calls
/// return the same handle. If another recorder was installed first (an embedding application),
/// ours is kept aside: `/metrics` then renders only what it records itself, which is nothing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = spawned {
            // Rendering also folds samples in; without the thread memory grows only between
            // scrapes.
            tracing::warn!(error = %e, "could not start the metrics upkeep thread");
        }
        handle
    })
}

/// The current metrics as Prometheus text (installs the recorder if need be).
pub fn render() -> String {
    install().render()
}

/// The recorder configuration: a histogram (not a summary) with fixed buckets for every
/// histogram Custodia records, including the store's group-commit series.
fn builder() -> PrometheusBuilder {
    let buckets = [
        (HTTP_DURATION, LATENCY_BUCKETS),
        (GROUP_COMMIT_FLUSH, FLUSH_BUCKETS),
        (GROUP_COMMIT_BATCH, BATCH_BUCKETS),
        (AUDIT_INTEGRATION_BATCH, BATCH_BUCKETS),
        (AUDIT_INTEGRATION_SECONDS, FLUSH_BUCKETS),
        (AUDIT_INTEGRATION_DELAY, LATENCY_BUCKETS),
    ];
    buckets.into_iter().fold(PrometheusBuilder::new(), |builder, (name, values)| {
        // invariant: every bucket list above is non-empty, the only error this returns.
        builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), values).expect("non-empty buckets")
    })
}

/// Registers help texts (rendered as `# HELP`).
fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency, by route template and method."
    );
    metrics::describe_counter!(
        DISCLOSURES,
        "Disclosure decisions by outcome; a denial carries the reason of the first refused field \
         (fields in name order), an allowed decision the reason none."
    );
    metrics::describe_counter!(AUDIT_EVENTS, "Audit events appended, by action and outcome.");
    metrics::describe_gauge!(AUDIT_TREE_SIZE, "Events in the audit Merkle tree.");
    metrics::describe_gauge!(
        AUDIT_STREAM_LAG,
        "Committed audit events not yet known to be held by the stream sink (log size minus delivered)."
    );
    metrics::describe_counter!(AUDIT_STREAM_DELIVERED, "Audit events the stream sink is known to hold.");
    metrics::describe_counter!(
        AUDIT_STREAM_FAILURES,
        "Failed deliveries to the audit stream sink (retried)."
    );
    metrics::describe_gauge!(
        AUDIT_STREAM_LAST_SUCCESS,
        metrics::Unit::Seconds,
        "Unix time when the audit stream sink last confirmed events."
    );
    metrics::describe_gauge!(
        BACKUP_LAST_SUCCESS,
        metrics::Unit::Seconds,
        "Unix time when the server last completed a backup."
    );
    metrics::describe_counter!(BACKUP_FAILURES, "Backups the server started and did not complete.");
    metrics::describe_histogram!(GROUP_COMMIT_BATCH, "Writes made durable by one group-commit flush.");
    metrics::describe_gauge!(AUDIT_SEQUENCER, "1 while this node sequences the audit log (PostgreSQL).");
    metrics::describe_histogram!(
        AUDIT_INTEGRATION_BATCH,
        "Events integrated by one sequencer batch (PostgreSQL)."
    );
    metrics::describe_histogram!(
        AUDIT_INTEGRATION_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one sequencer batch (PostgreSQL)."
    );
    metrics::describe_histogram!(
        AUDIT_INTEGRATION_DELAY,
        metrics::Unit::Seconds,
        "From an event's decision (its time) to its seq (PostgreSQL)."
    );
    metrics::describe_histogram!(
        GROUP_COMMIT_FLUSH,
        metrics::Unit::Seconds,
        "Duration of one group-commit flush."
    );
}

/// Records one answered HTTP request. `route` must be a route template (or
/// [`UNMATCHED_ROUTE`]), never a raw path.
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.to_owned(),
        "method" => method,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method)
        .record(elapsed.as_secs_f64());
}

/// Records one disclosure decision: `None` when every field was allowed, otherwise the reason
/// reported for the first refused field.
pub fn disclosure(denied: Option<Reason>) {
    let (outcome, reason) = match denied {
        None => ("allowed", "none"),
        Some(reason) => ("denied", reason.as_str()),
    };
    metrics::counter!(DISCLOSURES, "outcome" => outcome, "reason" => reason).increment(1);
}

/// Records an appended audit event and the tree size after it.
pub fn audit_appended(action: Action, outcome: Outcome, tree_size: Option<u64>) {
    metrics::counter!(AUDIT_EVENTS, "action" => action_label(action), "outcome" => outcome_label(outcome))
        .increment(1);
    // Unknown when the write answered at its commit (PostgreSQL): the sequencer sets it.
    if let Some(size) = tree_size {
        audit_tree_size(size);
    }
}

/// Sets the audit tree size (at startup, before any append).
pub fn audit_tree_size(size: u64) {
    // A gauge is an f64: exact up to 2^53 events.
    metrics::gauge!(AUDIT_TREE_SIZE).set(size as f64);
}

/// Sets how many committed events `sink` (`file` or `syslog`) is not yet known to hold.
pub fn audit_stream_lag(sink: &'static str, lag: u64) {
    metrics::gauge!(AUDIT_STREAM_LAG, "sink" => sink).set(lag as f64);
}

/// Records `count` more events confirmed held by `sink`, at Unix time `now` (seconds).
pub fn audit_stream_delivered(sink: &'static str, count: u64, now: f64) {
    metrics::counter!(AUDIT_STREAM_DELIVERED, "sink" => sink).increment(count);
    metrics::gauge!(AUDIT_STREAM_LAST_SUCCESS, "sink" => sink).set(now);
}

/// Records a backup of `kind` (`scheduled`: written, verified and kept in the backup
/// directory; `requested`: streamed to a `custodia backup` client, which verifies and stores
/// it itself) completed at Unix time `now` (seconds).
pub fn backup_succeeded(kind: &'static str, now: f64) {
    metrics::gauge!(BACKUP_LAST_SUCCESS, "kind" => kind).set(now);
}

/// Records a backup of `kind` (as in [`backup_succeeded`]) that did not complete.
pub fn backup_failed(kind: &'static str) {
    metrics::counter!(BACKUP_FAILURES, "kind" => kind).increment(1);
}

/// Records a failed delivery to `sink`.
pub fn audit_stream_failure(sink: &'static str) {
    metrics::counter!(AUDIT_STREAM_FAILURES, "sink" => sink).increment(1);
}

/// Records whether this node sequences the audit log.
pub fn audit_sequencer(leading: bool) {
    metrics::gauge!(AUDIT_SEQUENCER).set(if leading { 1.0 } else { 0.0 });
}

/// Records one sequencer batch: its events and how long its transaction took.
pub fn audit_integrated(events: usize, elapsed: Duration) {
    metrics::histogram!(AUDIT_INTEGRATION_BATCH).record(events as f64);
    metrics::histogram!(AUDIT_INTEGRATION_SECONDS).record(elapsed.as_secs_f64());
}

/// Records one event's delay from its decision to its seq (the sequencer, after its batch commits).
pub fn audit_integration_delay(elapsed: Duration) {
    metrics::histogram!(AUDIT_INTEGRATION_DELAY).record(elapsed.as_secs_f64());
}

/// The method as a label: one of the standard verbs, else `other` (an extension method is text
/// the caller chose).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// The action's name as it appears in events (`customer.read`).
fn action_label(action: Action) -> &'static str {
    use Action as A;
    match action {
        A::CustomerCreate => "customer.create",
        A::CustomerRead => "customer.read",
        A::CustomerUpdate => "customer.update",
        A::CustomerLookup => "customer.lookup",
        A::CustomerErase => "customer.erase",
        A::CustomerExport => "customer.export",
        A::PaymentMethodCreate => "payment_method.create",
        A::PaymentMethodList => "payment_method.list",
        A::PaymentMethodDelete => "payment_method.delete",
        A::ConsentUpdate => "consent.update",
        A::ObjectionUpdate => "objection.update",
        A::RestrictionUpdate => "restriction.update",
        A::Disclosure => "disclosure",
        A::AuditRead => "audit.read",
        A::AuthDenied => "auth.denied",
        A::RetentionPurge => "retention.purge",
        A::KeyRotate => "key.rotate",
        A::StoreRestore => "store.restore",
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allowed => "allowed",
        Outcome::Denied => "denied",
        Outcome::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders what `record` records into a fresh recorder configured like the global one.
    fn rendered(record: impl FnOnce()) -> String {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, record);
        handle.render()
    }

    #[test]
    fn group_commit_series_render_as_histograms_with_buckets() {
        let text = rendered(|| {
            metrics::histogram!("custodia_group_commit_batch_size").record(3.0);
            metrics::histogram!("custodia_group_commit_flush_seconds").record(0.002);
        });
        assert!(text.contains("custodia_group_commit_batch_size_bucket{le=\"4\"} 1"), "{text}");
        assert!(text.contains("custodia_group_commit_flush_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("custodia_group_commit_flush_seconds_count 1"), "{text}");
        assert!(!text.contains("quantile"), "histograms, not summaries: {text}");
    }

    #[test]
    fn request_latency_renders_as_a_histogram_by_route_and_method() {
        let text = rendered(|| http_request("/v1/customers/{id}", "GET", 200, Duration::from_millis(3)));
        assert!(
            text.contains(
                "custodia_http_request_duration_seconds_bucket{route=\"/v1/customers/{id}\",method=\"GET\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains(
            "custodia_http_requests_total{route=\"/v1/customers/{id}\",method=\"GET\",status=\"200\"} 1"
        ));
    }

    #[test]
    fn extension_methods_are_not_labels() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("jane@example.com"), "other");
    }

    #[test]
    fn action_labels_are_the_event_names() {
        use Action as A;
        let every = [
            A::CustomerCreate,
            A::CustomerRead,
            A::CustomerUpdate,
            A::CustomerLookup,
            A::CustomerErase,
            A::CustomerExport,
            A::PaymentMethodCreate,
            A::PaymentMethodList,
            A::PaymentMethodDelete,
            A::ConsentUpdate,
            A::ObjectionUpdate,
            A::RestrictionUpdate,
            A::Disclosure,
            A::AuditRead,
            A::AuthDenied,
            A::RetentionPurge,
            A::KeyRotate,
            A::StoreRestore,
        ];
        for action in every {
            assert_eq!(serde_json::to_value(action).unwrap(), action_label(action));
        }
        for outcome in [Outcome::Allowed, Outcome::Denied, Outcome::Failed] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome_label(outcome));
        }
    }

    #[test]
    fn an_allowed_disclosure_has_reason_none() {
        let text = rendered(|| {
            disclosure(None);
            disclosure(Some(Reason::ConsentMissing));
        });
        assert!(text.contains("custodia_disclosures_total{outcome=\"allowed\",reason=\"none\"} 1"), "{text}");
        assert!(text.contains("custodia_disclosures_total{outcome=\"denied\",reason=\"consent_missing\"} 1"));
    }
}
