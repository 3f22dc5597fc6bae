//! Builders of the objects a KVCluster owns: plain functions from the spec (and the planner's
//! decisions) to Kubernetes objects, so they can be tested without a cluster.
//!
//! This is the one place each child is built. Nothing here talks to the API server; the
//! controller applies what these functions return with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};

use crate::backup::destination::{ACCESS_KEY_ID_KEY, SECRET_ACCESS_KEY_KEY, SESSION_TOKEN_KEY};
use crate::bootstrap::BootstrapConfig;
use crate::crd::{
    CertManagerTls, KVCluster, KVClusterBackup, KVClusterBackupSpec, RestoreStatus, TlsMode,
    TlsSource, VolumeSpec,
};
use crate::names::{
    ClusterNames, TlsSide, BACKUP_ATTEMPT_ANNOTATION, BACKUP_OF_LABEL, BACKUP_PURPOSE_LABEL,
    CLIENT_PORT, CLIENT_TLS_DIR, DATA_DIR, DATA_VOLUME, INITIAL_CLUSTER_KEY,
    INITIAL_CLUSTER_STATE_KEY, METRICS_PORT, PEER_PORT, PEER_TLS_DIR, PRE_UPGRADE_PURPOSE,
    ROLL_OUT_IMAGE_ANNOTATION, WAL_DIR, WAL_VOLUME,
};

/// Name of the node's container in every member pod.
pub const CONTAINER_NAME: &str = "ferrokv";
/// Name of the init container that restores a member's data dir from a snapshot.
pub const RESTORE_CONTAINER_NAME: &str = "restore";
/// The claim holding a snapshot to restore, and where the init container mounts it.
pub const RESTORE_SOURCE_VOLUME: &str = "restore-source";
pub const RESTORE_SOURCE_DIR: &str = "/var/lib/ferrokv/restore-source";
/// Where the node writes why it refused to start; the operator reads it from the pod status.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The unprivileged user and group members run as: the `ferrokv` image's own user (see the
/// Dockerfile), and the group that owns their volumes.
pub const MEMBER_UID: i64 = 65532;

/// Settings of the operator that shape what it builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildDefaults {
    /// Repository of the `ferrokv` image; a cluster's `spec.version` is a tag of it.
    pub image_repository: String,
    /// Tag used when a cluster names neither `image` nor `version`.
    pub default_version: String,
}

impl Default for BuildDefaults {
    fn default() -> Self {
        Self {
            image_repository: "ghcr.io/ferrokv/ferrokv".to_string(),
            default_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl BuildDefaults {
    /// The image the cluster's members run.
    pub fn image_for(&self, kvc: &KVCluster) -> String {
        if let Some(image) = &kvc.spec.image {
            return image.clone();
        }
        let tag = kvc.spec.version.as_deref().unwrap_or(&self.default_version);
        let tag = tag.strip_prefix('v').unwrap_or(tag);
        format!("{}:v{tag}", self.image_repository)
    }
}

pub fn names_of(kvc: &KVCluster) -> ClusterNames {
    ClusterNames::new(kvc.name_any(), kvc.namespace().unwrap_or_default()).with_tls(
        kvc.spec.client_tls().is_some(),
        kvc.spec.peer_tls().is_some(),
    )
}

fn metadata(kvc: &KVCluster, name: String) -> ObjectMeta {
    let names = names_of(kvc);
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: kvc.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The `KVClusterBackup` a roll-out of `image` waits for: taken by the on-demand backup
/// controller to the cluster's `spec.backup.destination`. It is not owned by the KVCluster, so
/// it outlives it like any backup, and a restore can name it.
pub fn pre_upgrade_backup(kvc: &KVCluster, image: &str, attempt: u32) -> KVClusterBackup {
    let names = names_of(kvc);
    let mut labels = names.labels();
    labels.insert(
        BACKUP_PURPOSE_LABEL.to_string(),
        PRE_UPGRADE_PURPOSE.to_string(),
    );
    let mut backup = KVClusterBackup::new(
        &names.pre_upgrade_backup(image, attempt),
        KVClusterBackupSpec {
            cluster_name: names.cluster.clone(),
            destination: None,
        },
    );
    backup.metadata.namespace = Some(names.namespace.clone());
    backup.metadata.labels = Some(labels);
    backup.metadata.annotations = Some(BTreeMap::from([
        (ROLL_OUT_IMAGE_ANNOTATION.to_string(), image.to_string()),
        (BACKUP_ATTEMPT_ANNOTATION.to_string(), attempt.to_string()),
    ]));
    backup
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: number,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

/// The headless Service that gives each member its stable DNS name. It publishes pods that are
/// not ready, because members must resolve each other before any of them can be ready.
pub fn peer_service(kvc: &KVCluster) -> Service {
    let names = names_of(kvc);
    Service {
        metadata: metadata(kvc, names.peer_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("peer", PEER_PORT), port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service clients use: ready members only.
pub fn client_service(kvc: &KVCluster) -> Service {
    let names = names_of(kvc);
    Service {
        metadata: metadata(kvc, names.client_service()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The ConfigMap holding the bootstrap state members start from.
pub fn bootstrap_config_map(kvc: &KVCluster, config: &BootstrapConfig) -> ConfigMap {
    let names = names_of(kvc);
    ConfigMap {
        metadata: metadata(kvc, names.bootstrap_config_map()),
        data: Some(config.to_data(&names)),
        ..ConfigMap::default()
    }
}

/// Lets voluntary disruptions (drains) take down at most one member at a time.
pub fn pod_disruption_budget(kvc: &KVCluster) -> PodDisruptionBudget {
    let names = names_of(kvc);
    PodDisruptionBudget {
        metadata: metadata(kvc, names.pod_disruption_budget()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

fn claim_template(kvc: &KVCluster, template: &str, volume: &VolumeSpec) -> PersistentVolumeClaim {
    let names = names_of(kvc);
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(template.to_string()),
            labels: Some(names.selector_labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: volume.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    volume.size.clone(),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn env_from_bootstrap(kvc: &KVCluster, name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: names_of(kvc).bootstrap_config_map(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The `ferrokv` command line of every member. `$(VAR)` references are expanded by the kubelet
/// from the container's environment: the pod's own name, and the bootstrap state.
pub fn member_args(kvc: &KVCluster) -> Vec<String> {
    let names = names_of(kvc);
    let host = format!(
        "$(POD_NAME).{}.{}.svc",
        names.peer_service(),
        names.namespace
    );
    let token = match kvc.uid() {
        Some(uid) => format!("{}-{}", names.cluster, uid),
        None => format!("{}-{}", names.namespace, names.cluster),
    };
    let client = if names.client_tls() { "https" } else { "http" };
    let peer = if names.peer_tls() { "https" } else { "http" };
    let mut args = vec![
        "--name=$(POD_NAME)".to_string(),
        format!("--data-dir={DATA_DIR}"),
        format!("--wal-dir={WAL_DIR}"),
        format!("--listen-client-urls={client}://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls={client}://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls={peer}://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls={peer}://{host}:{PEER_PORT}"),
        "--initial-cluster=$(INITIAL_CLUSTER)".to_string(),
        "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)".to_string(),
        format!("--initial-cluster-token={token}"),
    ];
    if let Some(files) = member_tls_files(kvc, TlsSide::Client) {
        args.extend([
            format!("--cert-file={}", files.cert),
            format!("--key-file={}", files.key),
            format!("--trusted-ca-file={}", files.ca),
            "--client-cert-auth".to_string(),
            format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
        ]);
    }
    if let Some(files) = member_tls_files(kvc, TlsSide::Peer) {
        args.extend([
            format!("--peer-cert-file={}", files.cert),
            format!("--peer-key-file={}", files.key),
            format!("--peer-trusted-ca-file={}", files.ca),
            "--peer-client-cert-auth".to_string(),
        ]);
    }
    let tuning = &kvc.spec.tuning;
    if let Some(ms) = tuning.heartbeat_interval_millis {
        args.push(format!("--heartbeat-interval={ms}"));
    }
    if let Some(ms) = tuning.election_timeout_millis {
        args.push(format!("--election-timeout={ms}"));
    }
    if let Some(count) = tuning.snapshot_count {
        args.push(format!("--snapshot-count={count}"));
    }
    if let Some(bytes) = tuning.quota_backend_bytes {
        args.push(format!("--quota-backend-bytes={bytes}"));
    }
    // `maintenance.compaction` is where compaction is declared; `tuning` held it first.
    let (mode, retention) = match &kvc.spec.maintenance.compaction {
        Some(compaction) => (Some(compaction.mode), Some(&compaction.retention)),
        None => (
            tuning.auto_compaction_mode,
            tuning.auto_compaction_retention.as_ref(),
        ),
    };
    if let Some(mode) = mode {
        args.push(format!("--auto-compaction-mode={}", mode.as_flag_value()));
    }
    if let Some(retention) = retention {
        args.push(format!("--auto-compaction-retention={retention}"));
    }
    args
}

/// Where a member finds one side's certificate, key and trusted CA bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// The side's TLS settings of the cluster, when that side has TLS.
pub fn tls_source(kvc: &KVCluster, side: TlsSide) -> Option<&TlsSource> {
    match side {
        TlsSide::Client => kvc.spec.client_tls(),
        TlsSide::Peer => kvc.spec.peer_tls(),
    }
}

/// The Secret member pods mount for a side: the operator's (`auto`, `certManager`) or the user's.
pub fn member_tls_secret(kvc: &KVCluster, side: TlsSide) -> Option<String> {
    Some(match tls_source(kvc, side)?.mode() {
        TlsMode::SecretRef(secret) => secret.name.clone(),
        TlsMode::Auto(_) | TlsMode::CertManager(_) => names_of(kvc).tls_secret(side),
    })
}

/// The files of a side in the member's container. `auto` Secrets hold one certificate per
/// member, named after it (`NAME-N.crt`, `NAME-N.key`); the others one for all members, in
/// cert-manager's layout (`tls.crt`, `tls.key`). `ca.crt` is the trusted bundle either way.
pub fn member_tls_files(kvc: &KVCluster, side: TlsSide) -> Option<TlsFiles> {
    let dir = match side {
        TlsSide::Client => CLIENT_TLS_DIR,
        TlsSide::Peer => PEER_TLS_DIR,
    };
    let (cert, key) = match tls_source(kvc, side)?.mode() {
        TlsMode::Auto(_) => (
            format!("{dir}/$(POD_NAME).crt"),
            format!("{dir}/$(POD_NAME).key"),
        ),
        TlsMode::SecretRef(_) | TlsMode::CertManager(_) => {
            (format!("{dir}/tls.crt"), format!("{dir}/tls.key"))
        }
    };
    Some(TlsFiles {
        cert,
        key,
        ca: format!("{dir}/ca.crt"),
    })
}

/// The certificate Secrets mounted read-only in member pods; the node re-reads the files when
/// the kubelet updates them, so a renewal needs no restart.
fn tls_volumes(kvc: &KVCluster) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (side, dir) in [
        (TlsSide::Client, CLIENT_TLS_DIR),
        (TlsSide::Peer, PEER_TLS_DIR),
    ] {
        let Some(secret) = member_tls_secret(kvc, side) else {
            continue;
        };
        let name = format!("{}-tls", side.as_str());
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: dir.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// cert-manager's Certificate kind (cert-manager.io/v1).
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ))
}

/// The cert-manager Certificate of a side's member certificate: one for every member, naming
/// them all, in the Secret the members mount; usable to serve and to authenticate, as peers
/// and the operator need.
pub fn member_certificate(
    kvc: &KVCluster,
    side: TlsSide,
    cert_manager: &CertManagerTls,
) -> DynamicObject {
    let names = names_of(kvc);
    let dns: Vec<String> = names
        .shared_certificate_names()
        .into_iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_err())
        .collect();
    certificate(
        kvc,
        names.certificate(side),
        serde_json::json!({
            "secretName": names.tls_secret(side),
            "commonName": format!("{}-{}", names.cluster, side.as_str()),
            "dnsNames": dns,
            "ipAddresses": ["127.0.0.1"],
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        }),
        cert_manager,
    )
}

/// The cert-manager Certificate the operator itself connects to members with.
pub fn operator_certificate(kvc: &KVCluster, cert_manager: &CertManagerTls) -> DynamicObject {
    let names = names_of(kvc);
    certificate(
        kvc,
        names.operator_certificate(),
        serde_json::json!({
            "secretName": names.operator_tls_secret(),
            "commonName": crate::tls::OPERATOR_COMMON_NAME,
            "usages": ["digital signature", "key encipherment", "client auth"],
        }),
        cert_manager,
    )
}

fn certificate(
    kvc: &KVCluster,
    name: String,
    mut spec: serde_json::Value,
    cert_manager: &CertManagerTls,
) -> DynamicObject {
    let issuer = &cert_manager.issuer_ref;
    spec["issuerRef"] = serde_json::json!({
        "name": issuer.name, "kind": issuer.kind, "group": issuer.group,
    });
    spec["privateKey"] =
        serde_json::json!({"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"});
    if let Some(duration) = &cert_manager.duration {
        spec["duration"] = serde_json::json!(duration);
    }
    let mut object = DynamicObject::new(&name, &certificate_resource());
    object.metadata = metadata(kvc, name);
    object.data = serde_json::json!({ "spec": spec });
    object
}

/// The flags of [`member_args`] that say who a member is and where its data goes: what
/// `ferrokv snapshot restore` needs to build the data dir the member then starts from.
const IDENTITY_FLAGS: &[&str] = &[
    "--name=",
    "--data-dir=",
    "--wal-dir=",
    "--initial-advertise-peer-urls=",
    "--initial-cluster=",
    "--initial-cluster-state=",
    "--initial-cluster-token=",
];

/// The command line of the restore init step: `ferrokv snapshot restore --member-init` with the
/// member's own identity flags, from the object (checked against the SHA-256 the operator
/// found) or the file on the claim.
pub fn restore_args(kvc: &KVCluster, restore: &RestoreStatus) -> Vec<String> {
    let mut args = vec![
        "snapshot".to_string(),
        "restore".to_string(),
        "--member-init".to_string(),
    ];
    args.extend(
        member_args(kvc)
            .into_iter()
            .filter(|arg| IDENTITY_FLAGS.iter().any(|flag| arg.starts_with(flag))),
    );
    if let Some(object) = &restore.s3 {
        args.push(format!("--s3-bucket={}", object.bucket));
        args.push(format!("--s3-key={}", object.key));
        if let Some(endpoint) = &object.endpoint {
            args.push(format!("--s3-endpoint={endpoint}"));
        }
        if let Some(region) = &object.region {
            args.push(format!("--s3-region={region}"));
        }
        if object.force_path_style {
            args.push("--s3-force-path-style".to_string());
        }
    }
    if let Some(sha256) = &restore.sha256 {
        args.push(format!("--sha256={sha256}"));
    }
    if let (Some(prefix), Some(revision)) = (&restore.segments_prefix, restore.to_revision) {
        args.push(format!("--segments-s3-prefix={prefix}"));
        args.push(format!("--to-revision={revision}"));
    }
    if let Some(file) = &restore.volume {
        args.push(format!("{RESTORE_SOURCE_DIR}/{}", file.path));
    }
    args
}

fn env_from_secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(optional),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The init container of a restored cluster's members, with the main container's environment
/// and volumes, the object's credentials, and the claim holding the file.
fn restore_container(kvc: &KVCluster, restore: &RestoreStatus, member: &Container) -> Container {
    let mut env = member.env.clone().unwrap_or_default();
    if let Some(secret) = restore
        .s3
        .as_ref()
        .and_then(|o| o.credentials_secret.as_deref())
    {
        env.push(env_from_secret(
            "AWS_ACCESS_KEY_ID",
            secret,
            ACCESS_KEY_ID_KEY,
            false,
        ));
        env.push(env_from_secret(
            "AWS_SECRET_ACCESS_KEY",
            secret,
            SECRET_ACCESS_KEY_KEY,
            false,
        ));
        env.push(env_from_secret(
            "AWS_SESSION_TOKEN",
            secret,
            SESSION_TOKEN_KEY,
            true,
        ));
    }
    let mut mounts = member.volume_mounts.clone().unwrap_or_default();
    if restore.volume.is_some() {
        mounts.push(VolumeMount {
            name: RESTORE_SOURCE_VOLUME.to_string(),
            mount_path: RESTORE_SOURCE_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: RESTORE_CONTAINER_NAME.to_string(),
        image: member.image.clone(),
        command: Some(vec!["ferrokv".to_string()]),
        args: Some(restore_args(kvc, restore)),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: member.resources.clone(),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_string()),
        termination_message_policy: Some("File".to_string()),
        security_context: Some(member_container_security()),
        ..Container::default()
    }
}

fn http_probe(path: &str, port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(port.to_string()),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Without affinity from the user, members prefer distinct nodes, so one node failure costs at
/// most one member.
fn default_affinity(names: &ClusterNames) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: HOSTNAME_TOPOLOGY_KEY.to_string(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(names.selector_labels()),
                            match_expressions: None,
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    }
}

/// The node label naming a node, and the well-known label of its zone.
pub const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
pub const ZONE_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";

/// Without spread constraints from the user, members spread over nodes and over zones, a skew
/// of at most one member in each, and both only as a preference (`ScheduleAnyway`):
/// - zones, because a cluster without zone labels, or with one zone, must still schedule;
/// - nodes too, because a hard constraint counts every node the pod could use as a domain,
///   full ones included, so a member that does not fit beside the others would stay Pending
///   and leave the cluster a member short, which costs the same failure margin as two members
///   on one node, and blocks every later step (scaling, replacing, rolling) besides.
///   `nodeTaintsPolicy: Honor` keeps cordoned and unreachable nodes out of the count.
///
/// Those who want a hard guarantee give their own constraints (`DoNotSchedule`), which replace
/// these.
fn default_topology_spread(names: &ClusterNames) -> Vec<TopologySpreadConstraint> {
    [HOSTNAME_TOPOLOGY_KEY, ZONE_TOPOLOGY_KEY]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_string(),
            when_unsatisfiable: "ScheduleAnyway".to_string(),
            label_selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            }),
            node_taints_policy: Some("Honor".to_string()),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Members run unprivileged. A freshly formatted volume belongs to root, so the kubelet hands
/// it to the member's group (`fsGroup`) before the node starts; `OnRootMismatch` skips the
/// recursive walk when it already does, so a large data dir does not slow every restart.
fn member_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(MEMBER_UID),
        run_as_group: Some(MEMBER_UID),
        fs_group: Some(MEMBER_UID),
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The node needs no capability: its ports are above 1024 and it writes only its volumes.
fn member_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The StatefulSet running the members, at the size the planner decided, on `image` (the
/// spec's unless the version rules refuse it: see `planner::image_decision`).
///
/// Pods are created in parallel (a forming cluster needs all of them at once) and updated only
/// when the operator deletes them (`OnDelete`), so a template change restarts one member at a
/// time and only while every other voter is healthy.
pub fn stateful_set(kvc: &KVCluster, replicas: i32, image: &str) -> StatefulSet {
    let names = names_of(kvc);
    let spec = &kvc.spec;
    let mut ports = vec![
        ContainerPort {
            name: Some("client".to_string()),
            container_port: CLIENT_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("peer".to_string()),
            container_port: PEER_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        },
    ];
    // Probes hold no client certificate: with TLS on the client port they use the metrics port.
    let probe_port = if names.client_tls() {
        ports.push(ContainerPort {
            name: Some("metrics".to_string()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        });
        "metrics"
    } else {
        "client"
    };
    let (tls_volumes, tls_mounts) = tls_volumes(kvc);
    let mut volume_mounts = vec![
        VolumeMount {
            name: DATA_VOLUME.to_string(),
            mount_path: DATA_DIR.to_string(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: WAL_VOLUME.to_string(),
            mount_path: WAL_DIR.to_string(),
            ..VolumeMount::default()
        },
    ];
    volume_mounts.extend(tls_mounts);
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["ferrokv".to_string()]),
        args: Some(member_args(kvc)),
        env: Some(vec![
            env_from_field("POD_NAME", "metadata.name"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
            env_from_bootstrap(kvc, "INITIAL_CLUSTER", INITIAL_CLUSTER_KEY),
            env_from_bootstrap(kvc, "INITIAL_CLUSTER_STATE", INITIAL_CLUSTER_STATE_KEY),
        ]),
        ports: Some(ports),
        volume_mounts: Some(volume_mounts),
        resources: spec.resources.clone(),
        // A member replaying a long WAL is alive but not live-probe-ready; the startup probe
        // gives it up to ten minutes before liveness takes over.
        startup_probe: Some(http_probe("/livez", probe_port, 10, 60)),
        liveness_probe: Some(http_probe("/livez", probe_port, 10, 6)),
        readiness_probe: Some(http_probe("/readyz", probe_port, 5, 3)),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_string()),
        termination_message_policy: Some("File".to_string()),
        security_context: Some(member_container_security()),
        ..Container::default()
    };
    // A restored cluster's members start from the snapshot the operator checked.
    let restore = kvc.status.as_ref().and_then(|s| s.restore.as_ref());
    let init_containers = restore.map(|r| vec![restore_container(kvc, r, &container)]);
    let mut volumes = tls_volumes;
    if let Some(file) = restore.and_then(|r| r.volume.as_ref()) {
        volumes.push(Volume {
            name: RESTORE_SOURCE_VOLUME.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: file.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }
    let pod = PodSpec {
        init_containers,
        volumes: (!volumes.is_empty()).then_some(volumes),
        containers: vec![container],
        affinity: Some(
            spec.affinity
                .clone()
                .unwrap_or_else(|| default_affinity(&names)),
        ),
        topology_spread_constraints: Some(if spec.topology_spread_constraints.is_empty() {
            default_topology_spread(&names)
        } else {
            spec.topology_spread_constraints.clone()
        }),
        tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        priority_class_name: spec.priority_class_name.clone(),
        termination_grace_period_seconds: Some(30),
        security_context: Some(member_pod_security()),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: metadata(kvc, names.stateful_set()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peer_service()),
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                rolling_update: None,
            }),
            // Claims are deleted by the operator only, as planned steps: a removed member's
            // after it left, and all of them by the KVCluster's finalizer. Deleting them with
            // the StatefulSet would lose every member's data to a mistaken `kubectl delete sts`.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_string()),
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names.labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![
                claim_template(kvc, DATA_VOLUME, &spec.storage.data),
                claim_template(kvc, WAL_VOLUME, &spec.storage.wal),
            ]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The claim of `spec.backup.destination.volume` in a backup pod, and where it is mounted.
pub const BACKUP_VOLUME: &str = "backup";
pub const BACKUP_DIR: &str = "/var/lib/ferrokv/backup";
/// The Secret a backup pod reaches the member with (TLS identity, root password), and where it
/// is mounted.
pub const BACKUP_ACCESS_VOLUME: &str = "backup-access";
pub const BACKUP_ACCESS_DIR: &str = "/etc/ferrokv/backup-access";
/// Keys of that Secret.
pub const BACKUP_ACCESS_CA: &str = "ca.crt";
pub const BACKUP_ACCESS_CERT: &str = "tls.crt";
pub const BACKUP_ACCESS_KEY: &str = "tls.key";
pub const BACKUP_ACCESS_PASSWORD: &str = "password";
/// Name of the container of a backup pod.
pub const BACKUP_CONTAINER_NAME: &str = "backup";

/// One backup to a volume, as its pod takes it (`ferrokv snapshot save --backup-dir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeBackupPlan {
    /// Name of the pod, and of its access Secret when it has one.
    pub name: String,
    pub claim_name: String,
    /// The backups' directory from the claim's root, e.g. `default/example/scheduled`.
    pub directory: String,
    /// Time of the backup, UTC to the second: it names the files.
    pub time: String,
    /// The member the snapshot is taken from.
    pub member: String,
    pub member_url: String,
    pub cluster_id: String,
    /// The access Secret holds a TLS identity.
    pub tls: bool,
    /// The user the pod authenticates as, with the password of the access Secret.
    pub user: Option<String>,
    /// Retention, applied in the directory after the backup.
    pub keep: Option<u32>,
    pub delete_before: Option<String>,
}

impl VolumeBackupPlan {
    /// Whether the pod needs an access Secret.
    pub fn needs_access(&self) -> bool {
        self.tls || self.user.is_some()
    }
}

/// The labels of a cluster's backup pods (not its selector labels: they are no members).
pub fn backup_pod_labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::names::FIELD_MANAGER.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "backup".to_string(),
        ),
        (BACKUP_OF_LABEL.to_string(), kvc.name_any()),
    ])
}

/// The Secret a backup pod reaches its member with: the operator's own TLS identity and the
/// root password, copied for the one backup and owned by its `pod`, so that it goes with it.
pub fn volume_backup_secret(
    kvc: &KVCluster,
    plan: &VolumeBackupPlan,
    pod: &Pod,
    identity: Option<(&str, &str, &str)>,
    password: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::new();
    if let Some((ca, cert, key)) = identity {
        data.insert(BACKUP_ACCESS_CA.to_string(), ca.to_string());
        data.insert(BACKUP_ACCESS_CERT.to_string(), cert.to_string());
        data.insert(BACKUP_ACCESS_KEY.to_string(), key.to_string());
    }
    if let Some(password) = password {
        data.insert(BACKUP_ACCESS_PASSWORD.to_string(), password.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            labels: Some(backup_pod_labels(kvc)),
            owner_references: pod.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..metadata(kvc, plan.name.clone())
        },
        string_data: Some(data),
        ..Secret::default()
    }
}

/// The pod that takes one backup to a volume: the members' image running `ferrokv snapshot
/// save --backup-dir` against one member, with the claim mounted, once (`restartPolicy:
/// Never`). What it wrote is its termination message.
pub fn volume_backup_pod(kvc: &KVCluster, image: &str, plan: &VolumeBackupPlan) -> Pod {
    let names = names_of(kvc);
    let mut args = vec![
        "snapshot".to_string(),
        "save".to_string(),
        format!("--endpoint={}", plan.member_url),
        format!("--backup-dir={BACKUP_DIR}/{}", plan.directory),
        format!("--key-prefix={}", plan.directory),
        format!("--time={}", plan.time),
        format!("--cluster={}/{}", names.namespace, names.cluster),
        format!("--cluster-id={}", plan.cluster_id),
        format!("--member={}", plan.member),
    ];
    if plan.tls {
        args.push(format!("--cacert={BACKUP_ACCESS_DIR}/{BACKUP_ACCESS_CA}"));
        args.push(format!("--cert={BACKUP_ACCESS_DIR}/{BACKUP_ACCESS_CERT}"));
        args.push(format!("--key={BACKUP_ACCESS_DIR}/{BACKUP_ACCESS_KEY}"));
    }
    let mut env = Vec::new();
    if let Some(user) = &plan.user {
        args.push(format!("--user={user}"));
        env.push(env_from_secret(
            crate::names::SNAPSHOT_PASSWORD_ENV,
            &plan.name,
            BACKUP_ACCESS_PASSWORD,
            false,
        ));
    }
    if let Some(keep) = plan.keep {
        args.push(format!("--keep={keep}"));
    }
    if let Some(before) = &plan.delete_before {
        args.push(format!("--delete-before={before}"));
    }
    let mut mounts = vec![VolumeMount {
        name: BACKUP_VOLUME.to_string(),
        mount_path: BACKUP_DIR.to_string(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: BACKUP_VOLUME.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: plan.claim_name.clone(),
            read_only: Some(false),
        }),
        ..Volume::default()
    }];
    if plan.tls {
        mounts.push(VolumeMount {
            name: BACKUP_ACCESS_VOLUME.to_string(),
            mount_path: BACKUP_ACCESS_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: BACKUP_ACCESS_VOLUME.to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(plan.name.clone()),
                // Group-readable: the files belong to the pod's fsGroup, the member user's group.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            labels: Some(backup_pod_labels(kvc)),
            ..metadata(kvc, plan.name.clone())
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_string()),
            containers: vec![Container {
                name: BACKUP_CONTAINER_NAME.to_string(),
                image: Some(image.to_string()),
                command: Some(vec!["ferrokv".to_string()]),
                args: Some(args),
                env: (!env.is_empty()).then_some(env),
                volume_mounts: Some(mounts),
                termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_string()),
                termination_message_policy: Some("File".to_string()),
                security_context: Some(member_container_security()),
                ..Container::default()
            }],
            volumes: Some(volumes),
            security_context: Some(member_pod_security()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AutoCompactionMode, KVClusterSpec};

    const TEST_IMAGE: &str = "ghcr.io/ferrokv/ferrokv:v0.1.0";

    fn cluster(spec_json: serde_json::Value) -> KVCluster {
        let spec: KVClusterSpec = serde_json::from_value(spec_json).unwrap();
        let mut kvc = KVCluster::new("kv", spec);
        kvc.metadata.namespace = Some("prod".to_string());
        kvc.metadata.uid = Some("0b5ee4c8-uid".to_string());
        kvc
    }

    fn pod_spec(sts: &StatefulSet) -> &PodSpec {
        sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn volume_backup_plan(tls: bool, user: Option<&str>) -> VolumeBackupPlan {
        VolumeBackupPlan {
            name: "kv-backup-scheduled-20261206t140000z".to_string(),
            claim_name: "backups".to_string(),
            directory: "prod/kv/scheduled".to_string(),
            time: "2026-12-06T14:00:00Z".to_string(),
            member: "kv-1".to_string(),
            member_url: "http://kv-1.kv.prod.svc:2379".to_string(),
            cluster_id: "c0ffee".to_string(),
            tls,
            user: user.map(str::to_string),
            keep: Some(3),
            delete_before: Some("2026-11-29T14:00:00Z".to_string()),
        }
    }

    #[test]
    fn volume_backup_pod_saves_once_into_the_mounted_claim_and_is_no_member() {
        let kvc = cluster(serde_json::json!({"replicas": 3}));
        let plan = volume_backup_plan(false, None);
        let pod = volume_backup_pod(&kvc, TEST_IMAGE, &plan);
        let labels = pod.metadata.labels.as_ref().unwrap();
        // Not selected by the cluster's Services or budget.
        for (key, value) in names_of(&kvc).selector_labels() {
            assert_ne!(labels.get(&key), Some(&value), "{key}");
        }
        assert_eq!(labels[BACKUP_OF_LABEL], "kv");
        assert_eq!(
            pod.metadata.owner_references.as_ref().unwrap()[0].kind,
            "KVCluster"
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some(TEST_IMAGE));
        let args = container.args.as_ref().unwrap();
        assert_eq!(args[..2], ["snapshot", "save"]);
        for expected in [
            "--endpoint=http://kv-1.kv.prod.svc:2379",
            "--backup-dir=/var/lib/ferrokv/backup/prod/kv/scheduled",
            "--key-prefix=prod/kv/scheduled",
            "--time=2026-12-06T14:00:00Z",
            "--cluster=prod/kv",
            "--member=kv-1",
            "--keep=3",
            "--delete-before=2026-11-29T14:00:00Z",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--cacert") || a.starts_with("--user")));
        let volume = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(
            volume.persistent_volume_claim.as_ref().unwrap().claim_name,
            "backups"
        );
        assert_eq!(
            container.volume_mounts.as_ref().unwrap()[0].mount_path,
            BACKUP_DIR
        );
        assert!(!plan.needs_access());
    }

    #[test]
    fn volume_backup_pod_reaches_a_tls_cluster_with_auth_through_its_own_secret() {
        let kvc = cluster(serde_json::json!({"replicas": 3}));
        let plan = volume_backup_plan(true, Some("root"));
        let pod = volume_backup_pod(&kvc, TEST_IMAGE, &plan);
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let args = container.args.as_ref().unwrap();
        for expected in [
            "--cacert=/etc/ferrokv/backup-access/ca.crt",
            "--cert=/etc/ferrokv/backup-access/tls.crt",
            "--key=/etc/ferrokv/backup-access/tls.key",
            "--user=root",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        let env = &container.env.as_ref().unwrap()[0];
        assert_eq!(env.name, crate::names::SNAPSHOT_PASSWORD_ENV);
        let key_ref = env
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (key_ref.name.as_str(), key_ref.key.as_str()),
            (plan.name.as_str(), "password")
        );
        let mut created = pod.clone();
        created.metadata.uid = Some("pod-uid".to_string());
        let secret = volume_backup_secret(
            &kvc,
            &plan,
            &created,
            Some(("CA", "CERT", "KEY")),
            Some("pw"),
        );
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Pod", "pod-uid")
        );
        let data = secret.string_data.unwrap();
        assert_eq!(data["ca.crt"], "CA");
        assert_eq!(data["password"], "pw");
    }

    #[test]
    fn peer_service_is_headless_and_publishes_not_ready_members() {
        let svc = peer_service(&cluster(serde_json::json!({})));
        let spec = svc.spec.unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("kv-peer"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
    }

    #[test]
    fn every_child_is_owned_by_the_cluster() {
        let kvc = cluster(serde_json::json!({}));
        let defaults = BuildDefaults::default();
        let owners = [
            peer_service(&kvc).metadata.owner_references,
            client_service(&kvc).metadata.owner_references,
            bootstrap_config_map(&kvc, &BootstrapConfig::new_cluster(3))
                .metadata
                .owner_references,
            pod_disruption_budget(&kvc).metadata.owner_references,
            stateful_set(&kvc, 3, &defaults.image_for(&kvc))
                .metadata
                .owner_references,
        ];
        for owner in owners {
            let owner = owner.expect("owner reference");
            assert_eq!(owner[0].kind, "KVCluster");
            assert_eq!(owner[0].controller, Some(true));
        }
    }

    #[test]
    fn stateful_set_mounts_data_and_wal_claims_at_the_flag_paths() {
        let kvc = cluster(serde_json::json!({
            "storage": {"data": {"size": "20Gi", "storageClassName": "ssd"}, "wal": {"size": "4Gi"}}
        }));
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("kv-peer"));
        assert_eq!(spec.replicas, Some(3));
        let templates = spec.volume_claim_templates.as_ref().unwrap();
        let claim = |name: &str| {
            templates
                .iter()
                .find(|t| t.metadata.name.as_deref() == Some(name))
                .unwrap()
                .spec
                .clone()
                .unwrap()
        };
        assert_eq!(claim("data").storage_class_name.as_deref(), Some("ssd"));
        assert_eq!(
            claim("wal").resources.unwrap().requests.unwrap()["storage"].0,
            "4Gi"
        );
        let container = &pod_spec(&sts).containers[0];
        let args = container.args.as_ref().unwrap();
        let mounts = container.volume_mounts.as_ref().unwrap();
        for (volume, dir) in [("data", DATA_DIR), ("wal", WAL_DIR)] {
            let mount = mounts.iter().find(|m| m.name == volume).unwrap();
            assert_eq!(mount.mount_path, dir);
            assert!(args.contains(&format!("--{volume}-dir={dir}")), "{args:?}");
        }
    }

    #[test]
    fn probes_hit_readyz_and_livez_on_the_client_port() {
        let sts = stateful_set(&cluster(serde_json::json!({})), 1, TEST_IMAGE);
        let container = &pod_spec(&sts).containers[0];
        let path = |probe: &Option<Probe>| {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.port, IntOrString::String("client".into()));
            get.path.clone().unwrap()
        };
        assert_eq!(path(&container.readiness_probe), "/readyz");
        assert_eq!(path(&container.liveness_probe), "/livez");
        assert_eq!(path(&container.startup_probe), "/livez");
    }

    #[test]
    fn members_advertise_their_stable_peer_dns_name_and_read_bootstrap_from_the_config_map() {
        let kvc = cluster(serde_json::json!({}));
        let args = member_args(&kvc);
        assert!(args.contains(&"--name=$(POD_NAME)".to_string()));
        assert!(args.contains(
            &"--initial-advertise-peer-urls=http://$(POD_NAME).kv-peer.prod.svc:2380".to_string()
        ));
        assert!(args.contains(&"--initial-cluster=$(INITIAL_CLUSTER)".to_string()));
        assert!(args.contains(&"--initial-cluster-state=$(INITIAL_CLUSTER_STATE)".to_string()));
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let env = pod_spec(&sts).containers[0].env.clone().unwrap();
        let pod_name = env.iter().find(|e| e.name == "POD_NAME").unwrap();
        assert_eq!(
            pod_name
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let initial = env.iter().find(|e| e.name == "INITIAL_CLUSTER").unwrap();
        let key_ref = initial
            .value_from
            .as_ref()
            .unwrap()
            .config_map_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(key_ref.name, "kv-bootstrap");
        assert_eq!(key_ref.key, INITIAL_CLUSTER_KEY);
    }

    #[test]
    fn tuning_becomes_etcd_flags() {
        let kvc = cluster(serde_json::json!({"tuning": {
            "heartbeatIntervalMillis": 100, "electionTimeoutMillis": 1000, "snapshotCount": 10000,
            "quotaBackendBytes": 8589934592i64, "autoCompactionMode": "periodic",
            "autoCompactionRetention": "1h"
        }}));
        assert_eq!(
            kvc.spec.tuning.auto_compaction_mode,
            Some(AutoCompactionMode::Periodic)
        );
        let args = member_args(&kvc);
        for flag in [
            "--heartbeat-interval=100",
            "--election-timeout=1000",
            "--snapshot-count=10000",
            "--quota-backend-bytes=8589934592",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
        ] {
            assert!(
                args.contains(&flag.to_string()),
                "missing {flag} in {args:?}"
            );
        }
    }

    #[test]
    fn maintenance_compaction_becomes_the_auto_compaction_flags_over_tuning() {
        let kvc = cluster(serde_json::json!({
            "tuning": {"autoCompactionMode": "periodic", "autoCompactionRetention": "1h"},
            "maintenance": {"compaction": {"mode": "revision", "retention": "10000"}}
        }));
        let args = member_args(&kvc);
        let compaction: Vec<&String> = args
            .iter()
            .filter(|a| a.starts_with("--auto-compaction"))
            .collect();
        assert_eq!(
            compaction,
            [
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=10000"
            ]
        );
    }

    #[test]
    fn untuned_cluster_passes_no_tuning_flags() {
        let args = member_args(&cluster(serde_json::json!({})));
        assert!(!args.iter().any(|a| a.starts_with("--heartbeat-interval")
            || a.starts_with("--snapshot-count")
            || a.starts_with("--auto-compaction")));
    }

    #[test]
    fn placement_is_passed_through_and_defaults_to_spreading_members() {
        let placed = cluster(serde_json::json!({
            "nodeSelector": {"disk": "nvme"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "kv", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
            "affinity": {"nodeAffinity": {}}
        }));
        let sts = stateful_set(&placed, 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "nvme");
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-cluster-critical")
        );
        assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_none());

        let default = stateful_set(&cluster(serde_json::json!({})), 3, TEST_IMAGE);
        assert!(pod_spec(&default)
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .is_some());
    }

    #[test]
    fn members_spread_over_nodes_and_zones_without_ever_staying_pending_for_it() {
        let sts = stateful_set(&cluster(serde_json::json!({})), 3, TEST_IMAGE);
        let spread = pod_spec(&sts).topology_spread_constraints.clone().unwrap();
        let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(keys, [HOSTNAME_TOPOLOGY_KEY, ZONE_TOPOLOGY_KEY]);
        let selector = sts.spec.as_ref().unwrap().selector.match_labels.clone();
        for constraint in &spread {
            assert_eq!(constraint.max_skew, 1);
            assert_eq!(constraint.when_unsatisfiable, "ScheduleAnyway");
            assert_eq!(constraint.node_taints_policy.as_deref(), Some("Honor"));
            // The members of this cluster, and only they, are counted.
            assert_eq!(
                constraint.label_selector.as_ref().unwrap().match_labels,
                selector
            );
        }
    }

    #[test]
    fn spread_resources_and_placement_from_the_spec_replace_the_defaults() {
        let placed = cluster(serde_json::json!({
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"ferrokv.io/cluster": "kv"}}
            }],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"ferrokv.io/cluster": "kv"}}
            }]}},
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "priorityClassName": "kv-critical"
        }));
        let sts = stateful_set(&placed, 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        let spread = pod.topology_spread_constraints.as_ref().unwrap();
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
        let anti = pod.affinity.as_ref().unwrap().pod_anti_affinity.as_ref();
        assert!(anti
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .is_some());
        assert!(anti
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .is_none());
        let resources = pod.containers[0].resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "2Gi");
        assert_eq!(pod.priority_class_name.as_deref(), Some("kv-critical"));
    }

    #[test]
    fn a_backup_before_a_roll_out_names_the_image_and_attempt_and_is_not_owned() {
        let kvc = cluster(serde_json::json!({}));
        let backup = pre_upgrade_backup(&kvc, "ghcr.io/ferrokv/ferrokv:v0.2.0", 2);
        let name = backup.name_any();
        assert!(
            name.starts_with("kv-pre-upgrade-") && name.ends_with("-2"),
            "{name}"
        );
        assert_eq!(
            name,
            names_of(&kvc).pre_upgrade_backup("ghcr.io/ferrokv/ferrokv:v0.2.0", 2)
        );
        assert_ne!(
            name,
            names_of(&kvc).pre_upgrade_backup("ghcr.io/ferrokv/ferrokv:v0.3.0", 2)
        );
        assert_eq!(backup.spec.cluster_name, "kv");
        assert!(
            backup.spec.destination.is_none(),
            "the cluster's destination"
        );
        assert_eq!(backup.labels()[BACKUP_PURPOSE_LABEL], PRE_UPGRADE_PURPOSE);
        assert_eq!(backup.labels()[crate::names::CLUSTER_LABEL], "kv");
        assert_eq!(
            backup.annotations()[ROLL_OUT_IMAGE_ANNOTATION],
            "ghcr.io/ferrokv/ferrokv:v0.2.0"
        );
        assert_eq!(backup.annotations()[BACKUP_ATTEMPT_ANNOTATION], "2");
        assert!(backup.metadata.owner_references.is_none());
    }

    #[test]
    fn image_comes_from_image_then_version_then_operator_default() {
        let defaults = BuildDefaults {
            image_repository: "registry.example/ferrokv".into(),
            default_version: "0.1.0".into(),
        };
        let image = |spec| defaults.image_for(&cluster(spec));
        assert_eq!(
            image(serde_json::json!({})),
            "registry.example/ferrokv:v0.1.0"
        );
        assert_eq!(
            image(serde_json::json!({"version": "0.2.1"})),
            "registry.example/ferrokv:v0.2.1"
        );
        assert_eq!(
            image(serde_json::json!({"version": "v0.2.1", "image": "mine:dev"})),
            "mine:dev"
        );
    }

    #[test]
    fn members_run_unprivileged_and_own_their_volumes_through_fs_group() {
        let sts = stateful_set(&cluster(serde_json::json!({})), 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(MEMBER_UID));
        assert_eq!(security.fs_group, Some(MEMBER_UID));
        let container = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(container.allow_privilege_escalation, Some(false));
    }

    fn restored(restore: serde_json::Value) -> KVCluster {
        let mut kvc = cluster(serde_json::json!({}));
        let mut restore = restore;
        restore["source"] = "test".into();
        restore["verifiedTime"] = "2026-12-06T00:00:00Z".into();
        kvc.status = Some(crate::crd::KVClusterStatus {
            restore: Some(serde_json::from_value(restore).unwrap()),
            ..Default::default()
        });
        kvc
    }

    #[test]
    fn restore_to_a_revision_replays_the_change_log_in_the_init_step() {
        let kvc = restored(serde_json::json!({
            "s3": {"bucket": "b", "key": "p/ns/a/scheduled/x-r10.db"},
            "toRevision": 42,
            "segmentsPrefix": "p/ns/a/segments",
        }));
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let args = pod_spec(&sts).init_containers.as_ref().unwrap()[0]
            .args
            .clone()
            .unwrap();
        for arg in [
            "--s3-key=p/ns/a/scheduled/x-r10.db",
            "--segments-s3-prefix=p/ns/a/segments",
            "--to-revision=42",
        ] {
            assert!(args.contains(&arg.to_string()), "missing {arg} in {args:?}");
        }
    }

    #[test]
    fn unrestored_members_have_no_init_container_and_no_extra_volume() {
        let sts = stateful_set(&cluster(serde_json::json!({})), 3, TEST_IMAGE);
        assert!(pod_spec(&sts).init_containers.is_none());
        assert!(pod_spec(&sts).volumes.is_none());
    }

    #[test]
    fn restore_init_step_downloads_the_checked_object_into_the_member_volumes() {
        let kvc = restored(serde_json::json!({
            "s3": {"bucket": "b", "key": "p/ns/a/on-demand/x.db", "endpoint": "http://s3:9000",
                   "credentialsSecret": "creds", "forcePathStyle": true},
            "sha256": "ab12",
        }));
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        let init = &pod.init_containers.as_ref().expect("an init container")[0];
        assert_eq!(init.name, RESTORE_CONTAINER_NAME);
        assert_eq!(init.image.as_deref(), Some(TEST_IMAGE));
        let args = init.args.clone().unwrap();
        assert_eq!(args[..3], ["snapshot", "restore", "--member-init"]);
        for arg in [
            "--name=$(POD_NAME)",
            &format!("--data-dir={DATA_DIR}"),
            &format!("--wal-dir={WAL_DIR}"),
            "--initial-cluster=$(INITIAL_CLUSTER)",
            "--initial-cluster-state=$(INITIAL_CLUSTER_STATE)",
            "--initial-cluster-token=kv-0b5ee4c8-uid",
            "--initial-advertise-peer-urls=http://$(POD_NAME).kv-peer.prod.svc:2380",
            "--s3-bucket=b",
            "--s3-key=p/ns/a/on-demand/x.db",
            "--s3-endpoint=http://s3:9000",
            "--s3-force-path-style",
            "--sha256=ab12",
        ] {
            assert!(args.contains(&arg.to_string()), "missing {arg} in {args:?}");
        }
        // Only identity flags: the init step listens on nothing.
        assert!(!args.iter().any(|a| a.starts_with("--listen")), "{args:?}");
        // The member's own identity is the one restored: the same flags as the main container.
        let member = pod.containers[0].args.clone().unwrap();
        for arg in args
            .iter()
            .filter(|a| a.starts_with("--initial") || a.starts_with("--name"))
        {
            assert!(
                member.contains(arg),
                "{arg} differs from the member's {member:?}"
            );
        }
        let mounts = init.volume_mounts.clone().unwrap();
        assert_eq!(mounts, pod.containers[0].volume_mounts.clone().unwrap());
        let env = init.env.clone().unwrap();
        let secret = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
                .unwrap()
        };
        assert_eq!(secret("AWS_ACCESS_KEY_ID").name, "creds");
        assert_eq!(secret("AWS_ACCESS_KEY_ID").key, ACCESS_KEY_ID_KEY);
        assert_eq!(secret("AWS_SECRET_ACCESS_KEY").key, SECRET_ACCESS_KEY_KEY);
        assert_eq!(secret("AWS_SESSION_TOKEN").optional, Some(true));
        assert!(env.iter().any(|e| e.name == "INITIAL_CLUSTER_STATE"));
        assert!(pod.volumes.is_none());
    }

    #[test]
    fn restore_init_step_reads_a_file_from_the_claim_mounted_read_only() {
        let kvc = restored(serde_json::json!({
            "volume": {"claimName": "snapshots", "path": "etcd/backup.db"},
        }));
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        let init = &pod.init_containers.as_ref().unwrap()[0];
        let args = init.args.clone().unwrap();
        assert_eq!(
            args.last().unwrap(),
            &format!("{RESTORE_SOURCE_DIR}/etcd/backup.db")
        );
        assert!(!args
            .iter()
            .any(|a| a.starts_with("--s3") || a.starts_with("--sha256")));
        let mount = init
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == RESTORE_SOURCE_VOLUME)
            .unwrap();
        assert_eq!(mount.mount_path, RESTORE_SOURCE_DIR);
        assert_eq!(mount.read_only, Some(true));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        let claim = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(
            (volume.name.as_str(), claim.claim_name.as_str()),
            (RESTORE_SOURCE_VOLUME, "snapshots")
        );
        assert_eq!(claim.read_only, Some(true));
        // The member itself never mounts the snapshot's claim.
        assert!(!pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == RESTORE_SOURCE_VOLUME));
    }

    #[test]
    fn pod_disruption_budget_allows_one_member_down() {
        let pdb = pod_disruption_budget(&cluster(serde_json::json!({})));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert!(spec.min_available.is_none());
    }

    #[test]
    fn tls_sides_become_https_urls_file_flags_secret_volumes_and_a_plain_probe_port() {
        let kvc = cluster(serde_json::json!({"tls": {
            "client": {"auto": {}},
            "peer": {"secretRef": {"name": "mine"}},
        }}));
        let args = member_args(&kvc);
        for flag in [
            "--listen-client-urls=https://0.0.0.0:2379",
            "--advertise-client-urls=https://$(POD_NAME).kv-peer.prod.svc:2379",
            "--listen-peer-urls=https://0.0.0.0:2380",
            "--initial-advertise-peer-urls=https://$(POD_NAME).kv-peer.prod.svc:2380",
            "--cert-file=/etc/ferrokv/tls/client/$(POD_NAME).crt",
            "--key-file=/etc/ferrokv/tls/client/$(POD_NAME).key",
            "--trusted-ca-file=/etc/ferrokv/tls/client/ca.crt",
            "--client-cert-auth",
            "--listen-metrics-urls=http://0.0.0.0:2381",
            "--peer-cert-file=/etc/ferrokv/tls/peer/tls.crt",
            "--peer-key-file=/etc/ferrokv/tls/peer/tls.key",
            "--peer-trusted-ca-file=/etc/ferrokv/tls/peer/ca.crt",
            "--peer-client-cert-auth",
        ] {
            assert!(
                args.contains(&flag.to_string()),
                "missing {flag} in {args:?}"
            );
        }
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        let secrets: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(secrets, ["kv-client-tls", "mine"]);
        let container = &pod.containers[0];
        let mounts: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.read_only == Some(true))
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, [CLIENT_TLS_DIR, PEER_TLS_DIR]);
        let probe = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().port,
            IntOrString::String("metrics".into())
        );
        assert!(container
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == METRICS_PORT));
    }

    #[test]
    fn plain_clusters_mount_no_certificates_and_probe_the_client_port() {
        let kvc = cluster(serde_json::json!({}));
        assert!(!member_args(&kvc).iter().any(|a| a.contains("https")
            || a.starts_with("--cert-file")
            || a.starts_with("--listen-metrics-urls")));
        let sts = stateful_set(&kvc, 3, TEST_IMAGE);
        let pod = pod_spec(&sts);
        assert!(pod.volumes.is_none());
        let probe = pod.containers[0].readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().port,
            IntOrString::String("client".into())
        );
    }

    #[test]
    fn cert_manager_certificates_name_every_member_and_the_issuer() {
        let kvc = cluster(serde_json::json!({"tls": {"client": {"certManager": {
            "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}, "duration": "720h"
        }}}}));
        let crate::crd::TlsMode::CertManager(cert_manager) = kvc.spec.client_tls().unwrap().mode()
        else {
            panic!("certManager expected");
        };
        let members = member_certificate(&kvc, TlsSide::Client, cert_manager);
        let value = serde_json::to_value(&members).unwrap();
        assert_eq!(value["apiVersion"], "cert-manager.io/v1");
        assert_eq!(value["kind"], "Certificate");
        assert_eq!(value["metadata"]["name"], "kv-client");
        assert_eq!(value["metadata"]["ownerReferences"][0]["kind"], "KVCluster");
        let spec = &value["spec"];
        assert_eq!(spec["secretName"], "kv-client-tls");
        assert_eq!(spec["duration"], "720h");
        assert_eq!(
            spec["issuerRef"],
            serde_json::json!({"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        let dns: Vec<&str> = spec["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(dns.contains(&"*.kv-peer.prod.svc") && dns.contains(&"kv-client.prod.svc"));
        assert!(!dns.contains(&"127.0.0.1"), "an address is not a DNS name");
        assert_eq!(spec["ipAddresses"], serde_json::json!(["127.0.0.1"]));
        let operator = serde_json::to_value(operator_certificate(&kvc, cert_manager)).unwrap();
        assert_eq!(operator["spec"]["secretName"], "kv-operator-tls");
        assert_eq!(operator["spec"]["usages"][2], "client auth");
    }
}
