//! The `KVCluster` custom resource: what a user declares (`spec`) and what the operator
//! reports back (`status`), plus the CustomResourceDefinition generated from them.
//!
//! This module owns the shape of the API only. Defaults that depend on the operator's
//! configuration (the image repository) and every decision about members live elsewhere.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::crd::CustomResourceExt;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The message the API server returns when `spec.replicas` is even; it is the only place a
/// user learns why, so it says so.
pub const ODD_REPLICAS_MESSAGE: &str = "replicas must be odd (1, 3, 5, 7 or 9): a cluster of \
    2N members needs N+1 for quorum and so tolerates no more failures than one of 2N-1 members, \
    while it has one more member that can fail";

/// The message the API server returns when TLS is turned on or off on one side of an existing
/// cluster: members advertise their URLs with the scheme they were created with.
pub const TLS_SIDES_IMMUTABLE_MESSAGE: &str = "tls.client and tls.peer cannot be added or \
    removed after the cluster is created: members keep the http:// or https:// URLs they were \
    created with (switching between auto, secretRef and certManager is allowed)";

/// The message the API server returns when `spec.storage` is changed.
pub const STORAGE_IMMUTABLE_MESSAGE: &str = "storage cannot change after the cluster is \
    created: the members' volume claim templates are fixed when their StatefulSet is made";

/// The message the API server returns when `spec.bootstrap` is set, changed or removed after
/// creation.
pub const BOOTSTRAP_IMMUTABLE_MESSAGE: &str = "bootstrap cannot change after the cluster is \
    created: it says what the members started from";

/// The smallest and largest cluster the operator runs.
pub const MIN_REPLICAS: i32 = 1;
pub const MAX_REPLICAS: i32 = 9;

/// A ferrokv cluster: `replicas` members, each a pod of one StatefulSet with its own `data`
/// and `wal` volumes.
// Two printer columns of the same type read to clippy as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrokv.io",
    version = "v1alpha1",
    kind = "KVCluster",
    plural = "kvclusters",
    shortname = "kvc",
    category = "ferrokv",
    namespaced,
    doc = "A ferrokv cluster: an odd number of members speaking the etcd v3 API",
    status = "KVClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        description = "Members the cluster should have",
        json_path = ".spec.replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        description = "Members that are healthy voters",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        description = "Name of the member that leads the cluster",
        json_path = ".status.leader"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        description = "The version every member runs",
        json_path = ".status.version"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        description = "What the cluster is doing",
        json_path = ".status.phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.tls) == has(oldSelf.tls) && (!has(self.tls) || (has(self.tls.client) == has(oldSelf.tls.client) && has(self.tls.peer) == has(oldSelf.tls.peer)))").message(TLS_SIDES_IMMUTABLE_MESSAGE),
    validation = Rule::new("has(self.bootstrap) == has(oldSelf.bootstrap)").message(BOOTSTRAP_IMMUTABLE_MESSAGE)
)]
pub struct KVClusterSpec {
    /// Number of members: odd, from 1 to 9. Changed one member at a time.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))]
    #[x_kube(validation = Rule::new("self % 2 == 1").message(ODD_REPLICAS_MESSAGE).reason(Reason::FieldValueInvalid))]
    pub replicas: i32,

    /// ferrokv version to run, a tag of the operator's default image repository.
    /// Defaults to the operator's own version. Ignored when `image` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Full image reference of the `ferrokv` node; takes precedence over `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// The two volumes of every member. Fixed at creation: a StatefulSet's volume claim
    /// templates cannot change.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(STORAGE_IMMUTABLE_MESSAGE))]
    pub storage: StorageSpec,

    /// Compute resources of the `ferrokv` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Pod affinity rules. Without them, members prefer to run on distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How member pods spread over nodes and zones. Without them, members spread over
    /// `kubernetes.io/hostname` and `topology.kubernetes.io/zone` with a skew of at most one,
    /// both `ScheduleAnyway`: a member is never left Pending for the sake of spreading. Given
    /// here, they replace those defaults (select the members with the label
    /// `ferrokv.io/cluster: NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// Tolerations of the member pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node labels the member pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// PriorityClass of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Settings passed to every `ferrokv` member as its etcd-compatible flags.
    #[serde(default)]
    pub tuning: NodeTuning,

    /// When the operator moves a member whose node is lost.
    #[serde(default)]
    pub replacement: ReplacementPolicy,

    /// What becomes of the members' volume claims when the KVCluster is deleted. (A member
    /// removed by scaling down always loses its claims, so that it can never come back stale.)
    #[serde(default)]
    pub volume_claim_retention_policy: VolumeClaimRetentionPolicy,

    /// Upkeep the operator does by itself: defragmentation and history compaction.
    #[serde(default, skip_serializing_if = "MaintenanceSpec::is_empty")]
    pub maintenance: MaintenanceSpec,

    /// How a change of `version` or `image` is rolled out.
    #[serde(default)]
    pub upgrade: UpgradeSpec,

    /// Scheduled backups of the keyspace to object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// TLS on the members' client and peer URLs (`https://`). Each side can be turned on only
    /// when the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// etcd's authentication: the operator creates the `root` user and turns auth on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// What a new cluster starts from: empty, or a backup. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message(BOOTSTRAP_IMMUTABLE_MESSAGE))]
    pub bootstrap: Option<BootstrapSpec>,
}

/// TLS of the two ports of every member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// The client port (2379): members serve `https://` and require a client certificate from
    /// the same CA (`--client-cert-auth`). Health checks use a plain-HTTP port (2381) that
    /// answers only `/livez`, `/readyz`, `/health`, `/version` and `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<TlsSource>,
    /// The peer port (2380): members talk Raft over mutual TLS (`--peer-client-cert-auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<TlsSource>,
}

/// Where the certificates of one side come from: exactly one of `auto`, `secretRef` and
/// `certManager`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.auto) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) + (has(self.certManager) ? 1 : 0) == 1").message("give exactly one of auto, secretRef and certManager")
)]
pub struct TlsSource {
    /// The operator keeps a CA of its own (Secret `NAME-ca`), issues every member a
    /// certificate for its DNS names (Secret `NAME-client-tls` / `NAME-peer-tls`), renews them
    /// at two thirds of their lifetime and rotates the CA with an overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoTls>,
    /// A Secret of yours with `tls.crt`, `tls.key` and `ca.crt`, as cert-manager writes them.
    /// The certificate must name every member (`*.NAME-peer.NAMESPACE.svc`) and have both the
    /// server and client usages; the operator uses it as its own client certificate too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<TlsSecretRef>,
    /// cert-manager issues the certificates: the operator creates `Certificate` resources
    /// (cert-manager.io/v1) for the members and, on the client side, for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerTls>,
}

impl TlsSource {
    /// Which of the three this is; `auto` when (against the schema) none is given.
    pub fn mode(&self) -> TlsMode<'_> {
        match (&self.secret_ref, &self.cert_manager, &self.auto) {
            (Some(secret), _, _) => TlsMode::SecretRef(secret),
            (None, Some(cert_manager), _) => TlsMode::CertManager(cert_manager),
            (None, None, auto) => TlsMode::Auto(auto.clone().unwrap_or_default()),
        }
    }
}

/// A [`TlsSource`] resolved to the one it names.
#[derive(Clone, Debug, PartialEq)]
pub enum TlsMode<'a> {
    Auto(AutoTls),
    SecretRef(&'a TlsSecretRef),
    CertManager(&'a CertManagerTls),
}

/// Lifetimes of the certificates the operator issues.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoTls {
    /// Days a member certificate is valid; it is renewed after two thirds of them.
    #[serde(default = "AutoTls::default_certificate_days")]
    #[schemars(range(min = 1))]
    pub certificate_lifetime_days: u32,
    /// Days the CA is valid; it is rotated after two thirds of them (and whenever the
    /// annotation `ferrokv.io/rotate-ca` of the KVCluster changes).
    #[serde(default = "AutoTls::default_ca_days")]
    #[schemars(range(min = 1))]
    pub ca_lifetime_days: u32,
}

impl AutoTls {
    fn default_certificate_days() -> u32 {
        90
    }

    fn default_ca_days() -> u32 {
        5 * 365
    }
}

impl Default for AutoTls {
    fn default() -> Self {
        Self {
            certificate_lifetime_days: Self::default_certificate_days(),
            ca_lifetime_days: Self::default_ca_days(),
        }
    }
}

/// A Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecretRef {
    pub name: String,
}

/// Certificates issued by cert-manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerTls {
    pub issuer_ref: IssuerRef,
    /// Lifetime of the certificates, as cert-manager's `duration` (e.g. `2160h`); the issuer's
    /// default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

/// cert-manager's issuer reference.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`.
    #[serde(default = "IssuerRef::default_kind")]
    pub kind: String,
    #[serde(default = "IssuerRef::default_group")]
    pub group: String,
}

impl IssuerRef {
    fn default_kind() -> String {
        "Issuer".to_string()
    }

    fn default_group() -> String {
        "cert-manager.io".to_string()
    }
}

/// etcd's authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.enabled || has(self.rootPasswordSecret)").message("auth.enabled needs rootPasswordSecret")
)]
pub struct AuthSpec {
    /// Turn auth on: the operator adds the user `root` with the role `root` and the password
    /// from `rootPasswordSecret`, enables auth, and from then on uses those credentials itself.
    /// Setting it back to false does not turn auth off (do that with `etcdctl auth disable`).
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_secret: Option<SecretKeyRef>,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl KVClusterSpec {
    /// The client side's TLS, when on.
    pub fn client_tls(&self) -> Option<&TlsSource> {
        self.tls.as_ref().and_then(|t| t.client.as_ref())
    }

    /// The peer side's TLS, when on.
    pub fn peer_tls(&self) -> Option<&TlsSource> {
        self.tls.as_ref().and_then(|t| t.peer.as_ref())
    }

    /// Where the root password is, when auth is to be on.
    pub fn root_password(&self) -> Option<&SecretKeyRef> {
        self.auth
            .as_ref()
            .filter(|a| a.enabled)
            .and_then(|a| a.root_password_secret.as_ref())
    }

    /// The snapshot the cluster is restored from, when it is.
    pub fn restore_source(&self) -> Option<&RestoreSource> {
        self.bootstrap.as_ref()?.restore.as_ref()
    }
}

/// What a new cluster starts from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Start every member from this snapshot rather than empty. The operator checks it before
    /// any member is created; each member restores it in an init step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSource>,
}

/// The snapshot a new cluster is restored from: exactly one of `backup`, `s3`, `volume` or
/// `pointInTime`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.backup) ? 1 : 0) + (has(self.s3) ? 1 : 0) + (has(self.volume) ? 1 : 0) + (has(self.pointInTime) ? 1 : 0) == 1").message("a restore names exactly one of backup, s3, volume or pointInTime"))]
pub struct RestoreSource {
    /// A `KVClusterBackup` in this namespace that has `Succeeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupReference>,
    /// A snapshot object in an S3-compatible bucket, with the manifest beside it when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
    /// A snapshot file on a PersistentVolumeClaim of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeFile>,
    /// A cluster with continuous backup, as it was at a revision or a time: the newest full
    /// backup at or before it, and the change log from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<PointInTimeSource>,
}

/// A revision (or time) of a cluster whose backups and change log are in `destination`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.revision) ? 1 : 0) + (has(self.time) ? 1 : 0) == 1").message("a point in time is exactly one of revision or time"))]
pub struct PointInTimeSource {
    /// Name of the backed-up KVCluster (it need not exist any more).
    pub cluster: String,
    /// Its namespace; this one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Where its backups went: its `spec.backup.destination.s3`.
    pub destination: S3Destination,
    /// The revision to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub revision: Option<i64>,
    /// Restore the last revision the change log saw made at or before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// A `KVClusterBackup`, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupReference {
    pub name: String,
}

/// One object in an S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Object {
    pub bucket: String,
    /// The object's whole key, e.g. `prod/default/example/scheduled/20261205T230000Z-r41250.db`.
    pub key: String,
    /// URL of an S3-compatible server; AWS S3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket; `us-east-1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Name of a Secret in the cluster's namespace with the keys `accessKeyID` and
    /// `secretAccessKey` (and optionally `sessionToken`), used by the operator and by every
    /// member's init step. Without it, each uses its own environment and instance credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Address buckets as `ENDPOINT/BUCKET` rather than `BUCKET.ENDPOINT`.
    #[serde(default)]
    pub force_path_style: bool,
}

impl S3Object {
    /// The object `key` of the bucket `destination` names.
    pub fn in_destination(destination: &S3Destination, key: &str) -> Self {
        Self {
            bucket: destination.bucket.clone(),
            key: key.to_string(),
            endpoint: destination.endpoint.clone(),
            region: destination.region.clone(),
            credentials_secret: destination.credentials_secret.clone(),
            force_path_style: destination.force_path_style,
        }
    }

    /// The bucket, as a backup destination (whose prefix plays no part here).
    pub fn destination(&self) -> S3Destination {
        S3Destination {
            bucket: self.bucket.clone(),
            prefix: None,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials_secret: self.credentials_secret.clone(),
            force_path_style: self.force_path_style,
        }
    }

    /// `s3://BUCKET/KEY`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// A file on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.path.startsWith('/') && !self.path.contains('..')").message("path is relative to the claim's root and stays inside it"))]
pub struct VolumeFile {
    pub claim_name: String,
    /// Path of the snapshot file from the claim's root, e.g. `backups/snapshot.db`.
    pub path: String,
}

/// How members move to a new version: one at a time, followers first and the leader last
/// after a leader transfer, each only while every other voter is healthy and caught up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// Allow what is otherwise refused: a downgrade to an older minor version, a skip of more
    /// than one minor version, a change of major version other than to its first minor.
    #[serde(default)]
    pub force: bool,
    /// Seconds an updated member may take to become ready again; after that the roll-out
    /// pauses with a `RolloutPaused` condition naming it, and nothing else is touched until
    /// it recovers or the spec changes.
    #[serde(default = "UpgradeSpec::default_member_ready_timeout")]
    #[schemars(range(min = 1))]
    pub member_ready_timeout_seconds: u32,
    /// Roll out without the backup otherwise taken first when `spec.backup` is set. With
    /// backups configured, a change of `version` or `image` first makes a `KVClusterBackup`
    /// named `NAME-pre-upgrade-...` and starts restarting members only once it succeeded; a
    /// failed one is retried with backoff, and the roll-out waits meanwhile.
    #[serde(default)]
    pub skip_backup: bool,
}

impl UpgradeSpec {
    fn default_member_ready_timeout() -> u32 {
        300
    }
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        Self {
            force: false,
            member_ready_timeout_seconds: Self::default_member_ready_timeout(),
            skip_backup: false,
        }
    }
}

/// Scheduled backups: a snapshot from a healthy member, checked, uploaded with its manifest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.continuous) || has(self.destination.s3)").message("continuous backup needs an s3 destination"))]
pub struct BackupSpec {
    /// A cron schedule of five fields in UTC, e.g. `0 */6 * * *`: a backup is taken at each
    /// time it names. Without it, backups are only taken by `KVClusterBackup` resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Which scheduled backups are kept.
    #[serde(default)]
    pub retention: BackupRetention,
    /// Where backups go.
    pub destination: BackupDestination,
    /// Continuous backup: every change after the last full backup, uploaded in segments next
    /// to the snapshots, so that a new cluster can be restored to any revision since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous: Option<ContinuousBackupSpec>,
}

/// How the change log of continuous backup is written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContinuousBackupSpec {
    /// Seconds between segments: at most this much time of changes (plus the upload) is lost
    /// when every member and its disk is lost at once.
    #[serde(default = "ContinuousBackupSpec::default_segment_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub segment_seconds: u32,
}

impl ContinuousBackupSpec {
    fn default_segment_seconds() -> u32 {
        5
    }
}

/// Which scheduled backups are kept: a backup is deleted when it is beyond `count` newest or
/// older than `maxAge`. The newest backup is never deleted. Backups of `KVClusterBackup`
/// resources are not counted and never deleted by retention.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRetention {
    /// How many scheduled backups to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u32>,
    /// How old a scheduled backup may grow, e.g. `7d` or `36h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// Where backups are written: exactly one of an S3-compatible bucket or a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.s3) ? 1 : 0) + (has(self.volume) ? 1 : 0) == 1").message("a backup destination names exactly one of s3 or volume"))]
pub struct BackupDestination {
    /// An S3-compatible bucket (AWS S3, MinIO, Ceph, Garage...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A PersistentVolumeClaim of the cluster's namespace. Each backup is taken by a pod that
    /// mounts it (the members' image running `ferrokv snapshot save`), and is laid out as in a
    /// bucket: `NAMESPACE/CLUSTER/scheduled/TIME-rREVISION.db` and its `.json` manifest from
    /// the claim's root. Continuous backup needs `s3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,
}

impl BackupDestination {
    /// Where the backup at `key` is, for a person: `s3://BUCKET/KEY` or `PersistentVolumeClaim
    /// NAME, file KEY`.
    pub fn describe(&self, key: &str) -> String {
        match (&self.s3, &self.volume) {
            (Some(s3), _) => format!("s3://{}/{key}", s3.bucket),
            (None, Some(volume)) => {
                format!("PersistentVolumeClaim {}, file {key}", volume.claim_name)
            }
            (None, None) => key.to_string(),
        }
    }
}

/// A PersistentVolumeClaim backups are written to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDestination {
    pub claim_name: String,
}

/// An S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    pub bucket: String,
    /// Key prefix of every object, e.g. `prod/`; objects of a cluster go under
    /// `PREFIX/NAMESPACE/CLUSTER/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// URL of an S3-compatible server; AWS S3 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket; `us-east-1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Name of a Secret in the cluster's namespace with the keys `accessKeyID` and
    /// `secretAccessKey` (and optionally `sessionToken`). Without it, the operator's own
    /// environment and instance credentials are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Address buckets as `ENDPOINT/BUCKET` rather than `BUCKET.ENDPOINT`, as most
    /// S3-compatible servers want.
    #[serde(default)]
    pub force_path_style: bool,
}

/// Upkeep of the members' databases.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceSpec {
    /// When members are defragmented: on a schedule, past a threshold of free space, or both.
    /// One member at a time, followers first and the leader last, only while every voter is
    /// healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defragmentation: Option<DefragmentationSpec>,
    /// Automatic compaction of history, as the members' `--auto-compaction-mode` and
    /// `--auto-compaction-retention`. Takes precedence over the same settings in `tuning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactionSpec>,
}

impl MaintenanceSpec {
    fn is_empty(&self) -> bool {
        self.defragmentation.is_none() && self.compaction.is_none()
    }
}

/// When members are defragmented.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefragmentationSpec {
    /// A cron schedule of five fields in UTC, e.g. `0 3 * * *`: after each time it names,
    /// every member is defragmented once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Defragment a member as soon as its free space is this large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<DefragmentationThreshold>,
}

/// Free space worth giving back: a member's database size minus its size in use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefragmentationThreshold {
    /// Free space over space in use, e.g. `0.5`: free space half the data's size or more.
    #[schemars(range(min = 0.0))]
    pub free_to_in_use_ratio: f64,
    /// And at least this many free bytes, so that small databases are left alone.
    #[serde(default = "DefragmentationThreshold::default_min_free_bytes")]
    #[schemars(range(min = 0))]
    pub min_free_bytes: i64,
}

impl DefragmentationThreshold {
    fn default_min_free_bytes() -> i64 {
        64 << 20
    }
}

/// How history is compacted automatically.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompactionSpec {
    /// `periodic` keeps the history of the last `retention` (a duration such as `1h`);
    /// `revision` keeps the last `retention` revisions.
    pub mode: AutoCompactionMode,
    pub retention: String,
}

fn default_replicas() -> i32 {
    3
}

/// The `data` and `wal` volumes of each member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The state machine and snapshots (`--data-dir`).
    #[serde(default = "VolumeSpec::default_data")]
    pub data: VolumeSpec,
    /// The Raft write-ahead log (`--wal-dir`): put it on the fastest fsync you have.
    #[serde(default = "VolumeSpec::default_wal")]
    pub wal: VolumeSpec,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            data: VolumeSpec::default_data(),
            wal: VolumeSpec::default_wal(),
        }
    }
}

/// One PersistentVolumeClaim template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Requested capacity, e.g. `8Gi`.
    pub size: Quantity,
    /// StorageClass of the claim; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl VolumeSpec {
    fn default_data() -> Self {
        Self {
            size: Quantity("8Gi".into()),
            storage_class_name: None,
        }
    }

    fn default_wal() -> Self {
        Self {
            size: Quantity("2Gi".into()),
            storage_class_name: None,
        }
    }
}

/// Node settings, each mapped onto the etcd flag of the same meaning. Unset means the
/// node's default (which is etcd's).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.heartbeatIntervalMillis) || !has(self.electionTimeoutMillis) || self.electionTimeoutMillis >= 5 * self.heartbeatIntervalMillis").message("electionTimeoutMillis must be at least 5 times heartbeatIntervalMillis, or followers call elections while the leader is healthy")
)]
pub struct NodeTuning {
    /// `--heartbeat-interval`: milliseconds between leader heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub heartbeat_interval_millis: Option<u32>,
    /// `--election-timeout`: milliseconds a follower waits for a heartbeat before it calls an election.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub election_timeout_millis: Option<u32>,
    /// `--snapshot-count`: applied entries between snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<u64>,
    /// `--quota-backend-bytes`: size in bytes at which the store raises a NOSPACE alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub quota_backend_bytes: Option<i64>,
    /// `--auto-compaction-mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_mode: Option<AutoCompactionMode>,
    /// `--auto-compaction-retention`: a duration such as `1h` for `periodic`, a revision count
    /// for `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction_retention: Option<String>,
}

/// How history is compacted automatically.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

impl AutoCompactionMode {
    pub fn as_flag_value(self) -> &'static str {
        match self {
            Self::Periodic => "periodic",
            Self::Revision => "revision",
        }
    }
}

/// What becomes of the members' volume claims when the KVCluster is deleted, after the
/// StatefulSet field of the same name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimRetentionPolicy {
    /// `Delete` (the default) deletes the claims with the cluster; `Retain` keeps them, for
    /// copying data out. A new KVCluster does not start on retained claims: its members refuse
    /// data of another cluster (another `--initial-cluster-token`).
    #[serde(default)]
    pub when_deleted: WhenDeleted,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WhenDeleted {
    #[default]
    Delete,
    Retain,
}

/// When a member's pod is moved off a node that is lost.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacementPolicy {
    /// Seconds a member's pod may sit on a NotReady or vanished node before the operator
    /// force-deletes it, so that the StatefulSet recreates it elsewhere with the same volumes.
    #[serde(default = "ReplacementPolicy::default_node_lost_timeout")]
    #[schemars(range(min = 0))]
    pub node_lost_timeout_seconds: u32,
}

impl ReplacementPolicy {
    fn default_node_lost_timeout() -> u32 {
        300
    }
}

impl Default for ReplacementPolicy {
    fn default() -> Self {
        Self {
            node_lost_timeout_seconds: Self::default_node_lost_timeout(),
        }
    }
}

/// What the operator last observed and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterStatus {
    /// One word for what the cluster is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Members registered in the cluster (voters and learners).
    #[serde(default)]
    pub replicas: i32,
    /// Healthy voting members.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods, for the scale subresource.
    #[serde(default)]
    pub selector: String,
    /// Name of the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Cluster ID as etcd prints it (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The image every member runs, recorded once all of them run it and are ready; while a
    /// new one rolls out, the one they ran before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The tag of `image`: the version every member runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Member pods that run the StatefulSet's current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Every registered member.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// `Available`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Scheduled backups: written by the operator's backup scheduler under its own field
    /// manager, so that the reconcile's status writes leave it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// The snapshot the cluster was restored from, once the operator checked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
}

/// The snapshot a restored cluster started from, as the operator found and checked it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// What it is, for a person: `KVClusterBackup NAME (s3://BUCKET/KEY)`, `s3://BUCKET/KEY`,
    /// `PersistentVolumeClaim NAME, file PATH`.
    pub source: String,
    /// The object members download, resolved (a `KVClusterBackup`'s bucket and key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Object>,
    /// The file members read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeFile>,
    /// Revision of the keyspace the snapshot holds, from its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Bytes of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// SHA-256 of the snapshot, which every member checks again after downloading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// When the operator checked it.
    pub verified_time: Time,
    /// When the cluster was first Available with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_time: Option<Time>,
    /// A point-in-time restore: the revision the members restore, replaying the change log
    /// after the snapshot up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<i64>,
    /// The key prefix of the change log's segments, in the snapshot's bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_prefix: Option<String>,
    /// How many segments the operator checked between the snapshot and `toRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<i64>,
}

/// What scheduled backups have done and will do.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<BackupRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupAttempt>,
    /// A scheduled time passed without a backup, and why (the cluster was degraded, another
    /// backup was running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<BackupAttempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled_backup: Option<Time>,
    /// Continuous backup: the newest state a restore can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<RecoveryPoint>,
    /// Why continuous backup last stopped (`WaitingForFullBackup`, `ChangeLogGap`,
    /// `UploadFailed`...); cleared by the next upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_failure: Option<BackupAttempt>,
}

/// The end of the change log in object storage, as of its last upload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPoint {
    /// The last revision a restore can reach.
    pub revision: i64,
    /// When the segment ending at it was uploaded.
    pub time: Time,
    /// The leader's revision just after the upload.
    pub leader_revision: i64,
    /// How many revisions the leader was ahead.
    pub lag_revisions: i64,
    /// How old the segment's oldest change was when it was uploaded, in seconds: how much
    /// time of changes the loss of every member at once could have cost.
    pub lag_seconds: f64,
    /// Key of the last segment.
    pub segment: String,
}

/// One backup in object storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    pub time: Time,
    /// Key of the snapshot object; its manifest is the same key with `.json` for `.db`.
    pub key: String,
    /// Revision of the keyspace the snapshot holds.
    pub revision: i64,
    /// Bytes of the snapshot.
    pub size: i64,
}

/// A backup that did not happen, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupAttempt {
    pub time: Time,
    /// A stable reason code (`SnapshotFailed`, `UploadFailed`, `CredentialsInvalid`...).
    pub reason: String,
    pub message: String,
}

/// What the cluster is doing, in one word.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Children are being created and the first members are forming the cluster.
    Bootstrapping,
    /// Every member is a healthy voter and the member count matches the spec.
    Running,
    /// Members are being added or removed towards `spec.replicas`.
    Scaling,
    /// A member is being moved off a lost node or replaced after losing its data.
    Repairing,
    /// Members are being restarted one at a time onto a new pod template.
    Updating,
    /// The cluster serves, but a member is unhealthy or the spec cannot be applied.
    Degraded,
    /// Fewer than a quorum of voters are healthy: the cluster cannot serve writes.
    QuorumLost,
}

/// One member as the cluster and its pod report it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name, the same as its pod's.
    pub name: String,
    /// Member ID as etcd prints it (hex).
    pub id: String,
    #[serde(default)]
    pub peer_url: String,
    #[serde(default)]
    pub client_url: String,
    pub healthy: bool,
    pub leader: bool,
    pub learner: bool,
    /// Size of the member's database file, in bytes, as its Status reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<i64>,
    /// Bytes of that file in use; the rest is free space a defragmentation gives back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size_in_use: Option<i64>,
    /// When the operator last defragmented this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_defragmentation_time: Option<Time>,
    /// Bytes the last defragmentation gave back to the file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_defragmentation_reclaimed_bytes: Option<i64>,
}

/// A backup taken now: `kubectl apply` one to back a cluster up once. The backup is kept until
/// deleted from the bucket; deleting this resource does not delete it.
// Two printer columns of the same type read to clippy as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ferrokv.io",
    version = "v1alpha1",
    kind = "KVClusterBackup",
    plural = "kvclusterbackups",
    shortname = "kvcb",
    category = "ferrokv",
    namespaced,
    doc = "A backup of a KVCluster taken once, to object storage",
    status = "KVClusterBackupStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        description = "The KVCluster backed up",
        json_path = ".spec.clusterName"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        description = "Where the backup is",
        json_path = ".status.phase"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        description = "Revision of the keyspace backed up",
        json_path = ".status.revision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterBackupSpec {
    /// Name of the KVCluster, in this namespace.
    pub cluster_name: String,
    /// Where the backup goes; the cluster's `spec.backup.destination` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
}

/// Where an on-demand backup is and what it produced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// A stable reason code for the phase (`ClusterNotFound`, `UploadFailed`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Key of the snapshot object in the bucket; its manifest is beside it with `.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Bytes of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// SHA-256 of the snapshot object, lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The member the snapshot was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The bucket the backup went to, so that it can be restored once its cluster is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Where an on-demand backup is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting: for the cluster to be healthy, or for another backup of it to end.
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// The KVClusterBackup CustomResourceDefinition as YAML, exactly as `crds/` holds it.
pub fn backup_crd_yaml() -> String {
    let crd = KVClusterBackup::crd();
    let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
    format!("---\n{yaml}")
}

/// The CustomResourceDefinition as YAML, exactly as `crds/` holds it.
pub fn crd_yaml() -> String {
    let crd = KVCluster::crd();
    let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes to YAML");
    format!("---\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_file_matches_the_generated_crd() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/kvclusters.ferrokv.io.yaml"
        );
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "{path} differs from the CRD generated from the Rust types; \
             regenerate it with `cargo run -p ferrokv-operator -- crd > crds/kvclusters.ferrokv.io.yaml`"
        );
    }

    #[test]
    fn backup_crd_file_matches_the_generated_crd() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/kvclusterbackups.ferrokv.io.yaml"
        );
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == backup_crd_yaml(),
            "{path} differs from the CRD generated from the Rust types; regenerate it with \
             `cargo run -p ferrokv-operator -- crd kvclusterbackup > crds/kvclusterbackups.ferrokv.io.yaml`"
        );
    }

    #[test]
    fn backup_spec_reads_an_s3_destination() {
        let spec: KVClusterSpec = serde_json::from_value(serde_json::json!({
            "backup": {
                "schedule": "0 */6 * * *",
                "retention": {"count": 3, "maxAge": "7d"},
                "destination": {"s3": {
                    "bucket": "b", "endpoint": "http://127.0.0.1:9000",
                    "credentialsSecret": "s3", "forcePathStyle": true
                }}
            }
        }))
        .unwrap();
        let backup = spec.backup.unwrap();
        assert_eq!(backup.retention.count, Some(3));
        let s3 = backup.destination.s3.unwrap();
        assert!(s3.force_path_style);
        assert_eq!(s3.credentials_secret.as_deref(), Some("s3"));
    }

    #[test]
    fn crd_has_the_scale_subresource_on_replicas_and_selector() {
        let crd = KVCluster::crd();
        let version = &crd.spec.versions[0];
        let scale = version
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .expect("scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn crd_replicas_carry_the_odd_rule_and_its_reason() {
        let crd = serde_json::to_value(KVCluster::crd()).unwrap();
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0));
        assert_eq!(replicas["maximum"].as_f64(), Some(9.0));
        let rule = &replicas["x-kubernetes-validations"][0];
        assert_eq!(rule["rule"], "self % 2 == 1");
        let message = rule["message"].as_str().unwrap();
        assert!(
            message.contains("odd") && message.contains("quorum"),
            "{message}"
        );
    }

    #[test]
    fn crd_names_and_printer_columns() {
        let crd = KVCluster::crd();
        assert_eq!(crd.spec.group, "ferrokv.io");
        assert_eq!(crd.spec.names.short_names, Some(vec!["kvc".to_string()]));
        let columns: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Replicas", "Ready", "Leader", "Version", "Phase", "Age"]
        );
    }

    #[test]
    fn crd_refuses_storage_changes() {
        let crd = serde_json::to_value(KVCluster::crd()).unwrap();
        let storage = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["storage"];
        assert_eq!(
            storage["x-kubernetes-validations"][0]["rule"],
            "self == oldSelf"
        );
    }

    #[test]
    fn spec_defaults_fill_an_empty_spec() {
        let spec: KVClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.storage.data.size, Quantity("8Gi".into()));
        assert_eq!(spec.storage.wal.size, Quantity("2Gi".into()));
        assert_eq!(spec.replacement.node_lost_timeout_seconds, 300);
    }
}
