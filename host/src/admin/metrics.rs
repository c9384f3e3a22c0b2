//! `/metrics`: the listeners' counts in the Prometheus text format.
//!
//! The workers already add up their counts (and the guest-time histogram) as plain
//! numbers; this module only hands a snapshot of them to `prometheus-client`'s
//! encoder as constant metrics, one family per kind of count, labelled by listener.
//! It never keeps or computes a count itself.

use std::net::SocketAddr;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::control::ListenerStatus;
use crate::handler::Event;
use crate::listener::{Limit, Worn};
use crate::reactor::{GateCounts, GuestTime, Refusal};

/// The exposition's content type (Prometheus text, version 0.0.4).
pub(super) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The listeners' metrics, and the routing addresses', as Prometheus text.
pub(super) fn encode(
    listeners: Vec<ListenerStatus>,
    addresses: Vec<(SocketAddr, GateCounts)>,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(listeners)));
    registry.register_collector(Box::new(Gates(addresses)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The listeners as they were when `/metrics` was asked for.
#[derive(Debug)]
struct Snapshot(Vec<ListenerStatus>);

/// The routing addresses' counts as they were when `/metrics` was asked for.
#[derive(Debug)]
struct Gates(Vec<(SocketAddr, GateCounts)>);

impl Collector for Gates {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "sandport_address_refused",
            "Connections to an address that routes, closed before a listener took them, by reason",
            None,
            MetricType::Counter,
        )?;
        for (address, counts) in &self.0 {
            let address = address.to_string();
            for reason in Refusal::ALL {
                let labels: Labels = vec![("address", address.as_str()), ("reason", reason.key())];
                ConstCounter::new(counts.refused[reason as usize]).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// A family's label set: the listener, and what the count is of when the family
/// has more than one per listener.
type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Snapshot {
    /// One counter family: `sandport_NAME_total`, with a value for each listener and
    /// each `(label, value)` pair `values` gives for it.
    fn counters<'a>(
        &'a self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        values: impl Fn(&'a ListenerStatus) -> Vec<(Labels<'a>, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for listener in &self.0 {
            for (mut labels, value) in values(listener) {
                labels.insert(0, ("listener", listener.name.as_str()));
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// A counter family with one value per listener.
    fn counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&ListenerStatus) -> u64,
    ) -> Result<(), std::fmt::Error> {
        self.counters(encoder, name, help, |listener| vec![(Vec::new(), value(listener))])
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let mut open = e.encode_descriptor(
            "sandport_connections_open",
            "Connections open now, on every version of the listener's plugin",
            None,
            MetricType::Gauge,
        )?;
        for listener in &self.0 {
            let labels: Labels = vec![("listener", listener.name.as_str())];
            ConstGauge::new(listener.open).encode(open.encode_family(&labels)?)?;
        }
        let mut version = e.encode_descriptor(
            "sandport_plugin_version",
            "The number of the plugin version serving new connections (1 at start, one more per swap)",
            None,
            MetricType::Gauge,
        )?;
        for listener in &self.0 {
            if let Some(current) = listener.history.last() {
                let labels: Labels = vec![("listener", listener.name.as_str()), ("hash", current.hash.as_str())];
                ConstGauge::new(current.number).encode(version.encode_family(&labels)?)?;
            }
        }
        self.counters(
            e,
            "sandport_connections",
            "Connections by what became of them: accepted, dialed by the plugin, refused at accept, closed",
            |l| {
                let c = &l.counts;
                let kinds =
                    [("accepted", c.accepted), ("dialed", c.dialed), ("refused", c.refused), ("closed", c.closed)];
                kinds.into_iter().map(|(kind, n)| (vec![("kind", kind)], n)).collect()
            },
        )?;
        self.counter(e, "sandport_bytes_in", "Bytes read from the listener's connections", |l| l.counts.bytes_in)?;
        self.counter(e, "sandport_bytes_out", "Bytes written to the listener's connections", |l| l.counts.bytes_out)?;
        self.counters(e, "sandport_events", "Events delivered to the plugin, by kind", |l| {
            Event::KINDS.iter().zip(l.counts.events).map(|(kind, n)| (vec![("kind", *kind)], n)).collect()
        })?;
        self.histogram(e, "sandport_guest_time", "Time the plugin took per event", |l| &l.counts.guest_time)?;
        self.counters(e, "sandport_tls_handshakes", "TLS handshakes ended by the host, by result", |l| {
            let c = &l.counts;
            let timeouts = c.hits(Limit::HandshakeTimeout);
            let results =
                [("ok", c.handshakes), ("failed", c.handshakes_failed.saturating_sub(timeouts)), ("timeout", timeouts)];
            results.into_iter().map(|(result, n)| (vec![("result", result)], n)).collect()
        })?;
        self.histogram(
            e,
            "sandport_tls_handshake_time",
            "Time from accept to the end of a completed TLS handshake",
            |l| &l.counts.handshake_time,
        )?;
        let mut expiry = e.encode_descriptor(
            "sandport_tls_certificate_expiry_time",
            "When the certificate a listener serves expires, in seconds since 1970",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for listener in &self.0 {
            let Some(certificate) = &listener.certificate else { continue };
            let at = certificate.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
            let labels: Labels = vec![("listener", listener.name.as_str())];
            ConstGauge::new(at as i64).encode(expiry.encode_family(&labels)?)?;
        }
        let mut artifact = e.encode_descriptor(
            "sandport_plugin_artifact",
            "The registry reference a listener's plugin is pulled from, and the digest serving (1)",
            None,
            MetricType::Gauge,
        )?;
        for listener in &self.0 {
            let Some(a) = &listener.artifact else { continue };
            let digest = a.digest.as_deref().unwrap_or("");
            let labels: Labels =
                vec![("listener", listener.name.as_str()), ("reference", a.reference.as_str()), ("digest", digest)];
            ConstGauge::new(1).encode(artifact.encode_family(&labels)?)?;
        }
        let mut refused = e.encode_descriptor(
            "sandport_plugin_artifact_refused",
            "A digest the followed tag points at that was refused or rolled back, not taken again until the tag moves (1)",
            None,
            MetricType::Gauge,
        )?;
        for listener in &self.0 {
            let Some(digest) = listener.artifact.as_ref().and_then(|a| a.refused.as_deref()) else { continue };
            let labels: Labels = vec![("listener", listener.name.as_str()), ("digest", digest)];
            ConstGauge::new(1).encode(refused.encode_family(&labels)?)?;
        }
        self.counters(e, "sandport_plugin_pulls", "Pulls and looks at a followed tag, by result", |l| {
            let Some(a) = &l.artifact else { return Vec::new() };
            vec![(vec![("result", "ok")], a.pulls), (vec![("result", "failed")], a.failed_pulls)]
        })?;
        self.counters(e, "sandport_faults", "Plugin faults, by kind: a trap, or the limit that stopped it", |l| {
            let c = &l.counts;
            let by_limits: u64 = c.fault_limits.iter().sum();
            let limits = Limit::ALL.iter().map(|limit| (vec![("kind", limit.key())], c.fault_limits[limit.index()]));
            std::iter::once((vec![("kind", "trap")], c.faults.saturating_sub(by_limits))).chain(limits).collect()
        })?;
        self.counters(e, "sandport_limit_hits", "Connections that hit a limit, by limit (once per connection)", |l| {
            Limit::ALL.iter().map(|limit| (vec![("limit", limit.key())], l.counts.hits(*limit))).collect()
        })?;
        self.counter(e, "sandport_swaps", "Plugin versions that took over, rollbacks included", |l| l.swaps)?;
        self.counter(e, "sandport_failed_swaps", "Plugin versions refused (read, compile, link or pre-flight)", |l| {
            l.failed_swaps
        })?;
        self.counter(
            e,
            "sandport_rollbacks",
            "Versions replaced by the one before, by the operator or after faults",
            |l| l.rollbacks,
        )?;
        self.counter(e, "sandport_migrated_connections", "Connections carried over to a new version", |l| {
            l.counts.migrated
        })?;
        self.counters(
            e,
            "sandport_recycles",
            "Instances replaced by fresh ones of the same version, by the recycle bound they passed",
            |l| Worn::ALL.iter().map(|worn| (vec![("reason", worn.key())], l.counts.recycles[worn.index()])).collect(),
        )?;
        self.counter(
            e,
            "sandport_drained_connections",
            "Connections closed when an old version's drain timeout passed",
            |l| l.counts.drained,
        )
    }
}

impl Snapshot {
    /// A histogram family in seconds, one per listener, from the [`GuestTime`]
    /// `time` gives for it.
    fn histogram(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        time: impl Fn(&ListenerStatus) -> &GuestTime,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for listener in &self.0 {
            let time = time(listener);
            // Bounds in seconds, then the overflow bucket; the encoder adds them up.
            let bounds = GuestTime::BOUNDS.iter().map(|&micros| micros as f64 / 1e6).chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(time.buckets).collect();
            let labels: Labels = vec![("listener", listener.name.as_str())];
            family.encode_family(&labels)?.encode_histogram::<Labels>(
                time.sum.as_secs_f64(),
                time.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}
