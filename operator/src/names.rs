//! Names and addresses of a cluster's children and members.
//!
//! Everything here is derived from the KVCluster's name and namespace (and, for the URLs' scheme,
//! whether each side has TLS), so the builders, the observer and the planner agree on them
//! without talking to each other. A member is named
//! after its pod (`NAME-N`) and reached at its stable peer DNS name
//! `NAME-N.NAME-peer.NAMESPACE.svc`.

use std::collections::BTreeMap;

/// Port the node serves the etcd v3 API and `/readyz`, `/livez` on.
pub const CLIENT_PORT: i32 = 2379;
/// Port members talk Raft to each other on.
pub const PEER_PORT: i32 = 2380;
/// Plain-HTTP port of `/livez`, `/readyz` and `/metrics` (`--listen-metrics-urls`) when the
/// client port requires client certificates, which probes and scrapers do not hold.
pub const METRICS_PORT: i32 = 2381;

/// Where a side's certificate Secret is mounted in member pods.
pub const CLIENT_TLS_DIR: &str = "/etc/ferrokv/tls/client";
pub const PEER_TLS_DIR: &str = "/etc/ferrokv/tls/peer";

/// Mount point of the `data` volume, passed as `--data-dir`.
pub const DATA_DIR: &str = "/var/lib/ferrokv/data";
/// Mount point of the `wal` volume, passed as `--wal-dir`.
pub const WAL_DIR: &str = "/var/lib/ferrokv/wal";

/// Names of the two volumeClaimTemplates; a member's PVCs are `TEMPLATE-NAME-N`.
pub const DATA_VOLUME: &str = "data";
pub const WAL_VOLUME: &str = "wal";

/// ConfigMap keys of the bootstrap state.
pub const INITIAL_CLUSTER_KEY: &str = "initial-cluster";
pub const INITIAL_CLUSTER_STATE_KEY: &str = "initial-cluster-state";

/// Label naming the KVCluster a child belongs to.
pub const CLUSTER_LABEL: &str = "ferrokv.io/cluster";

/// Label of the `KVClusterBackup`s the operator makes before a roll-out, with the value
/// [`PRE_UPGRADE_PURPOSE`].
pub const BACKUP_PURPOSE_LABEL: &str = "ferrokv.io/backup-purpose";
/// Label of the pods that write backups to a volume: the KVCluster they back up. (Not the
/// cluster's selector labels: a backup pod is no member, for Services and budgets alike.)
pub const BACKUP_OF_LABEL: &str = "ferrokv.io/backup-of";
/// The environment variable `ferrokv snapshot save --user` reads the password from.
pub const SNAPSHOT_PASSWORD_ENV: &str = "FERROKV_SNAPSHOT_PASSWORD";
pub const PRE_UPGRADE_PURPOSE: &str = "pre-upgrade";
/// Annotations of such a backup: the image whose roll-out waits for it, and which attempt for
/// that image it is (1, 2, ...).
pub const ROLL_OUT_IMAGE_ANNOTATION: &str = "ferrokv.io/roll-out-image";
pub const BACKUP_ATTEMPT_ANNOTATION: &str = "ferrokv.io/backup-attempt";

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ferrokv-operator";

/// The names of one KVCluster's children and members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNames {
    pub cluster: String,
    pub namespace: String,
    /// `https` when the client port has TLS.
    client_scheme: &'static str,
    /// `https` when the peer port has TLS.
    peer_scheme: &'static str,
}

/// The two ports of a member, each with TLS of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsSide {
    Client,
    Peer,
}

impl TlsSide {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Peer => "peer",
        }
    }
}

impl ClusterNames {
    pub fn new(cluster: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            namespace: namespace.into(),
            client_scheme: "http",
            peer_scheme: "http",
        }
    }

    /// The same names with `https://` URLs on the sides that have TLS.
    pub fn with_tls(mut self, client: bool, peer: bool) -> Self {
        self.client_scheme = if client { "https" } else { "http" };
        self.peer_scheme = if peer { "https" } else { "http" };
        self
    }

    pub fn client_tls(&self) -> bool {
        self.client_scheme == "https"
    }

    pub fn peer_tls(&self) -> bool {
        self.peer_scheme == "https"
    }

    /// The Secret holding the operator's own CA (`tls.*.auto`), and its client certificate.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }

    /// The Secret member pods mount for one side's certificates.
    pub fn tls_secret(&self, side: TlsSide) -> String {
        format!("{}-{}-tls", self.cluster, side.as_str())
    }

    /// The cert-manager Certificate of one side's member certificates (`tls.*.certManager`).
    pub fn certificate(&self, side: TlsSide) -> String {
        format!("{}-{}", self.cluster, side.as_str())
    }

    /// The cert-manager Certificate of the operator's own client certificate, and its Secret.
    pub fn operator_certificate(&self) -> String {
        format!("{}-operator", self.cluster)
    }

    pub fn operator_tls_secret(&self) -> String {
        format!("{}-operator-tls", self.cluster)
    }

    /// DNS names and addresses a member's certificate must hold: its peer DNS name (short and
    /// fully qualified), the client Service's names, and the loopback names.
    pub fn member_certificate_names(&self, ordinal: u32) -> Vec<String> {
        let host = self.member_host(ordinal);
        let mut names = vec![host.clone(), format!("{host}.cluster.local")];
        names.extend(self.client_service_names());
        names
    }

    /// The names of a certificate that every member shares (cert-manager's, a user's): the
    /// members' peer DNS names by wildcard, the client Service's names, the loopback names.
    pub fn shared_certificate_names(&self) -> Vec<String> {
        let wildcard = format!("*.{}.{}.svc", self.peer_service(), self.namespace);
        let mut names = vec![wildcard.clone(), format!("{wildcard}.cluster.local")];
        names.extend(self.client_service_names());
        names
    }

    fn client_service_names(&self) -> Vec<String> {
        let service = self.client_service();
        let ns = &self.namespace;
        vec![
            service.clone(),
            format!("{service}.{ns}"),
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local"),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ]
    }

    /// The StatefulSet; also the prefix of every member's pod name.
    pub fn stateful_set(&self) -> String {
        self.cluster.clone()
    }

    /// The headless Service that gives members their stable peer DNS names.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.cluster)
    }

    /// The Service clients connect to.
    pub fn client_service(&self) -> String {
        format!("{}-client", self.cluster)
    }

    /// The ConfigMap holding `initial-cluster` and `initial-cluster-state`.
    pub fn bootstrap_config_map(&self) -> String {
        format!("{}-bootstrap", self.cluster)
    }

    pub fn pod_disruption_budget(&self) -> String {
        self.cluster.clone()
    }

    /// The `KVClusterBackup` taken before rolling out `image`, attempt `attempt`: the image
    /// appears as the first 8 hex digits of its SHA-256, since a tag may hold characters a
    /// name may not.
    pub fn pre_upgrade_backup(&self, image: &str, attempt: u32) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(image.as_bytes());
        let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-pre-upgrade-{short}-{attempt}", self.cluster)
    }

    /// Member name of the given ordinal: the name of its pod.
    pub fn member(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    fn member_host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.member(ordinal),
            self.peer_service(),
            self.namespace
        )
    }

    pub fn peer_url(&self, ordinal: u32) -> String {
        format!(
            "{}://{}:{PEER_PORT}",
            self.peer_scheme,
            self.member_host(ordinal)
        )
    }

    pub fn client_url(&self, ordinal: u32) -> String {
        format!(
            "{}://{}:{CLIENT_PORT}",
            self.client_scheme,
            self.member_host(ordinal)
        )
    }

    /// The `--initial-cluster` value naming the given ordinals.
    pub fn initial_cluster(&self, ordinals: impl IntoIterator<Item = u32>) -> String {
        ordinals
            .into_iter()
            .map(|ordinal| format!("{}={}", self.member(ordinal), self.peer_url(ordinal)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Ordinal of a member named `NAME-N`, pod name included.
    pub fn ordinal_of_member(&self, member: &str) -> Option<u32> {
        let suffix = member.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        parse_ordinal(suffix)
    }

    /// Ordinal of the member that advertises this peer URL; a member that has been added but
    /// has not started yet has no name, only its peer URL.
    pub fn ordinal_of_peer_url(&self, url: &str) -> Option<u32> {
        let host = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))?;
        let host = host.split(':').next()?;
        let member =
            host.strip_suffix(&format!(".{}.{}.svc", self.peer_service(), self.namespace))?;
        self.ordinal_of_member(member)
    }

    /// Ordinal and template of a PVC named `TEMPLATE-NAME-N`.
    pub fn ordinal_of_claim(&self, claim: &str) -> Option<(VolumeKind, u32)> {
        for kind in [VolumeKind::Data, VolumeKind::Wal] {
            if let Some(member) = claim
                .strip_prefix(kind.template_name())
                .and_then(|rest| rest.strip_prefix('-'))
            {
                if let Some(ordinal) = self.ordinal_of_member(member) {
                    return Some((kind, ordinal));
                }
            }
        }
        None
    }

    /// Names of the PVCs the StatefulSet creates for one member.
    pub fn claims(&self, ordinal: u32) -> [String; 2] {
        [VolumeKind::Data, VolumeKind::Wal]
            .map(|kind| format!("{}-{}", kind.template_name(), self.member(ordinal)))
    }

    /// Labels selecting the member pods; stable for the life of the cluster, since a
    /// StatefulSet's selector cannot change.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "ferrokv".to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                self.cluster.clone(),
            ),
            (CLUSTER_LABEL.to_string(), self.cluster.clone()),
        ])
    }

    /// Labels of every child.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        );
        labels.insert(
            "app.kubernetes.io/component".to_string(),
            "kv-store".to_string(),
        );
        labels
    }

    /// The selector labels as a label-selector string, for `status.selector` and list calls.
    pub fn selector(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The two volumes of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VolumeKind {
    Data,
    Wal,
}

impl VolumeKind {
    pub fn template_name(self) -> &'static str {
        match self {
            Self::Data => DATA_VOLUME,
            Self::Wal => WAL_VOLUME,
        }
    }
}

/// A decimal ordinal without sign or leading zeros, as the StatefulSet writes it.
fn parse_ordinal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClusterNames {
        ClusterNames::new("kv", "prod")
    }

    #[test]
    fn peer_url_is_the_stable_dns_name_of_the_pod() {
        assert_eq!(names().peer_url(2), "http://kv-2.kv-peer.prod.svc:2380");
        assert_eq!(names().client_url(0), "http://kv-0.kv-peer.prod.svc:2379");
    }

    #[test]
    fn ordinal_round_trips_through_peer_url_and_member_name() {
        for ordinal in 0..12 {
            assert_eq!(
                names().ordinal_of_peer_url(&names().peer_url(ordinal)),
                Some(ordinal)
            );
            assert_eq!(
                names().ordinal_of_member(&names().member(ordinal)),
                Some(ordinal)
            );
        }
    }

    #[test]
    fn names_of_other_clusters_have_no_ordinal() {
        // "kv-extra-1" belongs to a cluster named "kv-extra", not to "kv".
        assert_eq!(names().ordinal_of_member("kv-extra-1"), None);
        assert_eq!(names().ordinal_of_member("kv-01"), None);
        assert_eq!(names().ordinal_of_member("kv-"), None);
        assert_eq!(
            names().ordinal_of_peer_url("http://kv-1.kv-peer.other.svc:2380"),
            None
        );
    }

    #[test]
    fn claim_names_map_back_to_their_member() {
        let [data, wal] = names().claims(3);
        assert_eq!(data, "data-kv-3");
        assert_eq!(wal, "wal-kv-3");
        assert_eq!(names().ordinal_of_claim(&data), Some((VolumeKind::Data, 3)));
        assert_eq!(names().ordinal_of_claim(&wal), Some((VolumeKind::Wal, 3)));
        assert_eq!(names().ordinal_of_claim("data-other-3"), None);
    }

    #[test]
    fn urls_are_https_on_the_sides_with_tls() {
        let names = names().with_tls(true, false);
        assert_eq!(names.client_url(1), "https://kv-1.kv-peer.prod.svc:2379");
        assert_eq!(names.peer_url(1), "http://kv-1.kv-peer.prod.svc:2380");
        let names = names.with_tls(false, true);
        assert_eq!(names.peer_url(0), "https://kv-0.kv-peer.prod.svc:2380");
        assert_eq!(names.ordinal_of_peer_url(&names.peer_url(4)), Some(4));
    }

    #[test]
    fn member_certificates_name_the_member_and_the_client_service() {
        let sans = names().member_certificate_names(2);
        for name in [
            "kv-2.kv-peer.prod.svc",
            "kv-2.kv-peer.prod.svc.cluster.local",
            "kv-client",
            "kv-client.prod.svc",
            "kv-client.prod.svc.cluster.local",
            "localhost",
            "127.0.0.1",
        ] {
            assert!(
                sans.contains(&name.to_string()),
                "{name} missing in {sans:?}"
            );
        }
        assert!(names()
            .shared_certificate_names()
            .contains(&"*.kv-peer.prod.svc".to_string()));
    }

    #[test]
    fn initial_cluster_lists_name_equals_peer_url() {
        assert_eq!(
            names().initial_cluster([0, 1]),
            "kv-0=http://kv-0.kv-peer.prod.svc:2380,kv-1=http://kv-1.kv-peer.prod.svc:2380"
        );
    }
}
