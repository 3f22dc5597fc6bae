//! Prometheus metrics of the operator, served on `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the controller updates, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconcile passes by outcome (`ok` or an error kind).
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    /// Steps taken, by step.
    pub steps: IntCounterVec,
    /// Registered members per cluster.
    pub members: IntGaugeVec,
    /// Healthy voters per cluster.
    pub healthy_voters: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("ferrokv_operator".into()), None)
            .expect("a valid metric prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconcile passes by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Duration of a reconcile pass")
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0]),
            &[],
        )
        .expect("valid metric");
        let steps = IntCounterVec::new(
            Opts::new("steps_total", "Membership and pod steps taken, by step"),
            &["step"],
        )
        .expect("valid metric");
        let members = IntGaugeVec::new(
            Opts::new("cluster_members", "Registered members of a KVCluster"),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        let healthy_voters = IntGaugeVec::new(
            Opts::new(
                "cluster_healthy_voters",
                "Healthy voting members of a KVCluster",
            ),
            &["namespace", "cluster"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(steps.clone()),
            Box::new(members.clone()),
            Box::new(healthy_voters.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            steps,
            members,
            healthy_voters,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding never fails");
        String::from_utf8(buffer).expect("text exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_the_operator_prefix() {
        let metrics = Metrics::default();
        metrics.reconciles.with_label_values(&["ok"]).inc();
        metrics.steps.with_label_values(&["MemberAdded"]).inc();
        let text = metrics.render();
        assert!(
            text.contains("ferrokv_operator_reconciles_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferrokv_operator_steps_total{step=\"MemberAdded\"} 1"),
            "{text}"
        );
    }
}
