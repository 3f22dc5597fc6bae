//! Managed TLS (`spec.tls`): the Secrets and cert-manager Certificates behind each side, and
//! the identity the operator itself presents to members.
//!
//! - `auto`: a CA of the operator's own in the Secret `NAME-ca`, every member's certificate in
//!   `NAME-client-tls` / `NAME-peer-tls` (`NAME-N.crt`, `NAME-N.key`, and the trust bundle
//!   `ca.crt`), renewed at two thirds of their lifetime; the CA rotated with an overlap
//!   ([`renewal::ca_step`]). The operator's client certificate is kept in `NAME-ca`.
//! - `certManager`: Certificates for the members and the operator; cert-manager fills the
//!   Secrets, nothing else is written here.
//! - `secretRef`: the user's Secret, read only.
//!
//! Members re-read their files when the kubelet updates the mounted Secrets, so nothing here
//! restarts a pod. Certificates are only ever issued here; the builders in `children` say
//! where members find them.

pub mod pki;
pub mod renewal;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::children::{self, names_of};
use crate::crd::{AutoTls, KVCluster, TlsMode};
use crate::error::Error;
use crate::names::{ClusterNames, TlsSide, FIELD_MANAGER};
use pki::{CertFacts, KeyedCertificate};
use renewal::{ca_step, reissue_reason, CaPhase, CaStep, Reissue};

/// Subject CN of the operator's own client certificates.
pub const OPERATOR_COMMON_NAME: &str = "ferrokv-operator";
/// Changing this annotation of a KVCluster (to any new value) rotates its `auto` CA.
pub const ROTATE_CA_ANNOTATION: &str = "ferrokv.io/rotate-ca";
/// On the CA Secret: the value of [`ROTATE_CA_ANNOTATION`] the last rotation answered.
const ROTATED_FOR_ANNOTATION: &str = "ferrokv.io/rotated-for";
/// On the CA Secret: when the current rotation phase began.
const PHASE_SINCE_ANNOTATION: &str = "ferrokv.io/ca-phase-since";

/// Keys of the CA Secret.
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NEXT_CA_CERT: &str = "next-ca.crt";
const NEXT_CA_KEY: &str = "next-ca.key";
const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
const OPERATOR_CERT: &str = "operator.crt";
const OPERATOR_KEY: &str = "operator.key";

/// Keys of cert-manager's (and a user's) TLS Secrets; `ca.crt` is also the trust bundle of the
/// operator's member Secrets.
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CA: &str = "ca.crt";

/// Settings of the operator for TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// How long a changed Secret takes to reach the files of every pod that mounts it (the
    /// kubelet's sync period and cache): each step of a CA rotation waits this long.
    pub propagation: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            propagation: Duration::from_secs(120),
        }
    }
}

/// What the operator presents to a cluster's members on the client port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM certificates of the CAs that verify the members.
    pub ca_bundle: String,
    pub cert: String,
    pub key: String,
}

/// What one pass over a cluster's TLS did and needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOutcome {
    /// The operator's identity on the client port; `None` without client TLS, or while the
    /// Secret that holds it does not exist yet (cert-manager has not issued it).
    pub identity: Option<ClientIdentity>,
    /// When something falls due (a renewal, the next step of a CA rotation).
    pub next_check: Option<Timestamp>,
    /// Steps taken, as (reason, message) for Events.
    pub events: Vec<(&'static str, String)>,
}

/// Brings the cluster's certificates where its spec wants them: see the module docs.
pub async fn ensure(
    client: &Client,
    kvc: &KVCluster,
    settings: TlsSettings,
    now: Timestamp,
) -> Result<TlsOutcome, Error> {
    let names = names_of(kvc);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let mut outcome = TlsOutcome::default();
    let modes: Vec<(TlsSide, TlsMode)> = [TlsSide::Client, TlsSide::Peer]
        .into_iter()
        .filter_map(|side| Some((side, children::tls_source(kvc, side)?.mode())))
        .collect();

    let auto: Vec<(TlsSide, AutoTls)> = modes
        .iter()
        .filter_map(|(side, mode)| match mode {
            TlsMode::Auto(auto) => Some((*side, auto.clone())),
            _ => None,
        })
        .collect();
    if let Some((_, first)) = auto.first() {
        let ca = ensure_ca(&secrets, kvc, &names, first, settings, now, &mut outcome).await?;
        let count = member_count(client, kvc, &names).await?;
        for (side, lifetimes) in &auto {
            let secret = names.tls_secret(*side);
            ensure_member_certificates(
                &secrets,
                kvc,
                &secret,
                &ca,
                lifetimes,
                count,
                now,
                &mut outcome,
            )
            .await?;
        }
        if auto.iter().any(|(side, _)| *side == TlsSide::Client) {
            let cert =
                ensure_operator_certificate(&secrets, kvc, &names, &ca, first, now, &mut outcome)
                    .await?;
            outcome.identity = Some(ClientIdentity {
                ca_bundle: ca.bundle.clone(),
                cert: cert.cert,
                key: cert.key,
            });
        }
    }

    for (side, mode) in &modes {
        match mode {
            TlsMode::Auto(_) => {}
            TlsMode::CertManager(cert_manager) => {
                apply_certificate(
                    client,
                    kvc,
                    children::member_certificate(kvc, *side, cert_manager),
                )
                .await?;
                if *side == TlsSide::Client {
                    apply_certificate(
                        client,
                        kvc,
                        children::operator_certificate(kvc, cert_manager),
                    )
                    .await?;
                    outcome.identity =
                        read_tls_secret(&secrets, &names.operator_tls_secret()).await?;
                }
            }
            TlsMode::SecretRef(secret) => {
                if *side == TlsSide::Client {
                    outcome.identity = read_tls_secret(&secrets, &secret.name).await?;
                    if outcome.identity.is_none() {
                        return Err(Error::TlsSecret(format!(
                            "Secret {:?} of tls.client.secretRef does not exist",
                            secret.name
                        )));
                    }
                }
            }
        }
    }
    Ok(outcome)
}

/// The operator's identity on the client port as the Secrets hold it now, without changing
/// anything: what paths that do not reconcile (backups) connect with.
pub async fn identity(client: &Client, kvc: &KVCluster) -> Result<Option<ClientIdentity>, Error> {
    let names = names_of(kvc);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let Some(source) = kvc.spec.client_tls() else {
        return Ok(None);
    };
    match source.mode() {
        TlsMode::SecretRef(secret) => read_tls_secret(&secrets, &secret.name).await,
        TlsMode::CertManager(_) => read_tls_secret(&secrets, &names.operator_tls_secret()).await,
        TlsMode::Auto(_) => {
            let Some(secret) = secrets.get_opt(&names.ca_secret()).await? else {
                return Ok(None);
            };
            let data = secret.data.unwrap_or_default();
            let Some(cert) = keyed(&data, OPERATOR_CERT, OPERATOR_KEY) else {
                return Ok(None);
            };
            Ok(Some(ClientIdentity {
                ca_bundle: ca_state(&data)?.bundle,
                cert: cert.cert,
                key: cert.key,
            }))
        }
    }
}

/// The CA that signs now, and the trust bundle of this moment of a rotation.
struct CaState {
    signing: KeyedCertificate,
    /// DER subject of the signing CA: what issued certificates name as their issuer.
    subject: Vec<u8>,
    bundle: String,
}

/// How many members need a certificate: as many as the spec asks for or the StatefulSet runs,
/// whichever is more (a member being removed keeps its certificate until it is gone).
async fn member_count(
    client: &Client,
    kvc: &KVCluster,
    names: &ClusterNames,
) -> Result<u32, Error> {
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let running = stateful_sets
        .get_opt(&names.stateful_set())
        .await?
        .and_then(|sts| sts.spec?.replicas)
        .unwrap_or(0);
    Ok(kvc.spec.replicas.max(running).max(0) as u32)
}

/// A Secret as read: the object (whose version a replace carries), its data and annotations.
struct Stored {
    existing: Option<Secret>,
    data: BTreeMap<String, ByteString>,
    annotations: BTreeMap<String, String>,
}

async fn load(secrets: &Api<Secret>, name: &str) -> Result<Stored, Error> {
    let existing = secrets.get_opt(name).await?;
    Ok(Stored {
        data: existing
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default(),
        annotations: existing
            .as_ref()
            .map(|s| s.annotations().clone())
            .unwrap_or_default(),
        existing,
    })
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

fn keyed(data: &BTreeMap<String, ByteString>, cert: &str, key: &str) -> Option<KeyedCertificate> {
    Some(KeyedCertificate {
        cert: text(data, cert)?,
        key: text(data, key)?,
    })
}

fn put(data: &mut BTreeMap<String, ByteString>, key: &str, value: &str) {
    data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// Loads the CA Secret (making the first CA when there is none) and takes the next step of a
/// rotation when one is due.
#[allow(clippy::too_many_arguments)]
async fn ensure_ca(
    secrets: &Api<Secret>,
    kvc: &KVCluster,
    names: &ClusterNames,
    auto: &AutoTls,
    settings: TlsSettings,
    now: Timestamp,
    outcome: &mut TlsOutcome,
) -> Result<CaState, Error> {
    let name = names.ca_secret();
    let Stored {
        existing,
        mut data,
        mut annotations,
    } = load(secrets, &name).await?;
    let lifetime = days(auto.ca_lifetime_days);

    let event = match keyed(&data, CA_CERT, CA_KEY) {
        None => {
            let ca = pki::make_ca(&names.cluster, now, lifetime)?;
            put(&mut data, CA_CERT, &ca.cert);
            put(&mut data, CA_KEY, &ca.key);
            (
                "CACreated",
                format!("created the cluster CA in Secret {name}"),
            )
        }
        Some(current) => {
            let facts = CertFacts::read(&format!("Secret {name} key {CA_CERT}"), &current.cert)?;
            let since = annotations
                .get(PHASE_SINCE_ANNOTATION)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(now);
            let phase = if data.contains_key(NEXT_CA_CERT) {
                CaPhase::Introducing { since }
            } else if data.contains_key(PREVIOUS_CA_CERT) {
                CaPhase::Retiring { since }
            } else {
                CaPhase::Steady
            };
            let wanted_rotation = kvc.annotations().get(ROTATE_CA_ANNOTATION).cloned();
            let requested = wanted_rotation.is_some()
                && wanted_rotation.as_ref() != annotations.get(ROTATED_FOR_ANNOTATION);
            let (reason, note) = match ca_step(phase, &facts, requested, now, settings.propagation)
            {
                CaStep::Wait(next) => {
                    merge_next(outcome, next);
                    return ca_state(&data);
                }
                CaStep::Introduce => {
                    let next = pki::make_ca(&names.cluster, now, lifetime)?;
                    put(&mut data, NEXT_CA_CERT, &next.cert);
                    put(&mut data, NEXT_CA_KEY, &next.key);
                    if let Some(value) = wanted_rotation {
                        annotations.insert(ROTATED_FOR_ANNOTATION.to_string(), value);
                    }
                    (
                        "CARotationStarted",
                        "added a new CA to the trust bundles; it signs once every member has the bundle",
                    )
                }
                CaStep::Promote => {
                    let next = keyed(&data, NEXT_CA_CERT, NEXT_CA_KEY).ok_or_else(|| {
                        Error::TlsSecret(format!(
                            "Secret {name} has {NEXT_CA_CERT} without {NEXT_CA_KEY}"
                        ))
                    })?;
                    put(&mut data, PREVIOUS_CA_CERT, &current.cert);
                    put(&mut data, CA_CERT, &next.cert);
                    put(&mut data, CA_KEY, &next.key);
                    data.remove(NEXT_CA_CERT);
                    data.remove(NEXT_CA_KEY);
                    ("CARotated", "the new CA signs; every certificate is issued again, the old CA stays trusted for now")
                }
                CaStep::Retire => {
                    data.remove(PREVIOUS_CA_CERT);
                    (
                        "CARotationCompleted",
                        "removed the old CA from the trust bundles",
                    )
                }
            };
            (reason, note.to_string())
        }
    };
    annotations.insert(PHASE_SINCE_ANNOTATION.to_string(), now.to_string());
    write_secret(
        secrets,
        kvc,
        &name,
        existing.as_ref(),
        annotations,
        data.clone(),
    )
    .await?;
    outcome.events.push(event);
    // A rotation's next step is due after the propagation wait.
    merge_next(
        outcome,
        Timestamp::from_second(now.as_second() + settings.propagation.as_secs() as i64).ok(),
    );
    ca_state(&data)
}

/// The signing CA and the bundle: the signing CA, then the previous one while it retires, then
/// the next one while it is introduced.
fn ca_state(data: &BTreeMap<String, ByteString>) -> Result<CaState, Error> {
    let signing = keyed(data, CA_CERT, CA_KEY)
        .ok_or_else(|| Error::TlsSecret(format!("the CA Secret has no {CA_CERT} and {CA_KEY}")))?;
    let subject = CertFacts::read("the signing CA", &signing.cert)?.subject;
    let bundle = [PREVIOUS_CA_CERT, CA_CERT, NEXT_CA_CERT]
        .iter()
        .filter_map(|key| text(data, key))
        .map(|pem| format!("{}\n", pem.trim_end()))
        .collect();
    Ok(CaState {
        signing,
        subject,
        bundle,
    })
}

fn merge_next(outcome: &mut TlsOutcome, next: Option<Timestamp>) {
    if let Some(next) = next {
        outcome.next_check = Some(outcome.next_check.map_or(next, |t| t.min(next)));
    }
}

/// Whether `cert` must be issued again, noting when its renewal falls due otherwise.
fn must_reissue(
    cert: Option<&str>,
    what: &str,
    names: &BTreeSet<String>,
    ca: &CaState,
    now: Timestamp,
    outcome: &mut TlsOutcome,
) -> Option<Reissue> {
    let facts = cert.map(|pem| CertFacts::read(what, pem).map_err(drop));
    let current = facts.as_ref().map(|f| f.as_ref().map_err(|_| ()));
    let reason = reissue_reason(current, names, &ca.subject, now);
    if reason.is_none() {
        if let Some(Ok(facts)) = &facts {
            merge_next(outcome, Some(renewal::renewal_time(facts)));
        }
    }
    reason
}

/// Keeps one certificate per member in a side's Secret, and the trust bundle beside them.
#[allow(clippy::too_many_arguments)]
async fn ensure_member_certificates(
    secrets: &Api<Secret>,
    kvc: &KVCluster,
    secret: &str,
    ca: &CaState,
    auto: &AutoTls,
    count: u32,
    now: Timestamp,
    outcome: &mut TlsOutcome,
) -> Result<(), Error> {
    let names = names_of(kvc);
    let Stored {
        existing,
        data: old,
        ..
    } = load(secrets, secret).await?;
    let mut data = BTreeMap::new();
    put(&mut data, TLS_CA, &ca.bundle);
    let mut issued = Vec::new();
    for ordinal in 0..count {
        let member = names.member(ordinal);
        let (cert_key, key_key) = (format!("{member}.crt"), format!("{member}.key"));
        let wanted: BTreeSet<String> = names
            .member_certificate_names(ordinal)
            .into_iter()
            .collect();
        let current = keyed(&old, &cert_key, &key_key);
        let what = format!("Secret {secret} key {cert_key}");
        let cert = match must_reissue(
            current.as_ref().map(|c| c.cert.as_str()),
            &what,
            &wanted,
            ca,
            now,
            outcome,
        ) {
            None => current.expect("a certificate that needs no reissue exists"),
            Some(reason) => {
                issued.push(format!("{member} ({reason:?})"));
                pki::issue(
                    &ca.signing,
                    &member,
                    &wanted,
                    now,
                    days(auto.certificate_lifetime_days),
                )?
            }
        };
        put(&mut data, &cert_key, &cert.cert);
        put(&mut data, &key_key, &cert.key);
    }
    if data != old {
        write_secret(
            secrets,
            kvc,
            secret,
            existing.as_ref(),
            BTreeMap::new(),
            data,
        )
        .await?;
    }
    if !issued.is_empty() {
        outcome.events.push((
            "CertificatesIssued",
            format!(
                "issued certificates in Secret {secret}: {}",
                issued.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The operator's client certificate, kept in the CA Secret (which no pod mounts).
async fn ensure_operator_certificate(
    secrets: &Api<Secret>,
    kvc: &KVCluster,
    names: &ClusterNames,
    ca: &CaState,
    auto: &AutoTls,
    now: Timestamp,
    outcome: &mut TlsOutcome,
) -> Result<KeyedCertificate, Error> {
    let name = names.ca_secret();
    let Stored {
        existing,
        mut data,
        annotations,
    } = load(secrets, &name).await?;
    let current = keyed(&data, OPERATOR_CERT, OPERATOR_KEY);
    let what = format!("Secret {name} key {OPERATOR_CERT}");
    match must_reissue(
        current.as_ref().map(|c| c.cert.as_str()),
        &what,
        &BTreeSet::new(),
        ca,
        now,
        outcome,
    ) {
        None => Ok(current.expect("a certificate that needs no reissue exists")),
        Some(_) => {
            let cert = pki::issue(
                &ca.signing,
                OPERATOR_COMMON_NAME,
                &BTreeSet::new(),
                now,
                days(auto.certificate_lifetime_days),
            )?;
            put(&mut data, OPERATOR_CERT, &cert.cert);
            put(&mut data, OPERATOR_KEY, &cert.key);
            write_secret(secrets, kvc, &name, existing.as_ref(), annotations, data).await?;
            Ok(cert)
        }
    }
}

/// Creates or replaces an operator-kept Secret, owned by the cluster. A replace carries the
/// version read, so two writers never overwrite each other's certificates unseen.
async fn write_secret(
    secrets: &Api<Secret>,
    kvc: &KVCluster,
    name: &str,
    existing: Option<&Secret>,
    annotations: BTreeMap<String, String>,
    data: BTreeMap<String, ByteString>,
) -> Result<(), Error> {
    let names = names_of(kvc);
    let mut secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(names.namespace.clone()),
            labels: Some(names.labels()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: kvc.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    };
    match existing {
        Some(existing) => {
            secret.metadata.resource_version = existing.resource_version();
            secrets
                .replace(name, &PostParams::default(), &secret)
                .await?;
        }
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
    }
    Ok(())
}

/// A Secret in cert-manager's layout as the operator's identity; `None` while it is missing.
async fn read_tls_secret(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<ClientIdentity>, Error> {
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let get = |key: &str| {
        text(&data, key)
            .ok_or_else(|| Error::TlsSecret(format!("Secret {name:?} has no key {key:?}")))
    };
    Ok(Some(ClientIdentity {
        ca_bundle: get(TLS_CA)?,
        cert: get(TLS_CERT)?,
        key: get(TLS_KEY)?,
    }))
}

/// Server-side applies a cert-manager Certificate.
async fn apply_certificate(
    client: &Client,
    kvc: &KVCluster,
    certificate: kube::core::DynamicObject,
) -> Result<(), Error> {
    let names = names_of(kvc);
    let api: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &names.namespace,
        &children::certificate_resource(),
    );
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(
        &certificate.name_any(),
        &params,
        &Patch::Apply(&certificate),
    )
    .await?;
    Ok(())
}
