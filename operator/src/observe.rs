//! Observation: reads a cluster's children, its pods' nodes and its members into the
//! planner's [`Observed`] state. Reads only; every change goes through the controller.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::bootstrap::BootstrapConfig;
use crate::children::{BuildDefaults, CONTAINER_NAME, RESTORE_CONTAINER_NAME};
use crate::crd::{BackupPhase, KVCluster, KVClusterBackup};
use crate::error::Error;
use crate::etcd_access::EtcdAccess;
use crate::membership::{self, MembershipView};
use crate::names::{
    ClusterNames, BACKUP_ATTEMPT_ANNOTATION, BACKUP_PURPOSE_LABEL, CLUSTER_LABEL,
    PRE_UPGRADE_PURPOSE, ROLL_OUT_IMAGE_ANNOTATION,
};
use crate::planner::{
    Claim, DefragPolicy, MemberPod, NodeState, Observed, ObservedStatefulSet, PreUpgradeBackup,
    PreUpgradeBackupAttempt, PreUpgradeBackupState, RestoreSourceCheck, StartRefusal,
    UpgradePolicy,
};

/// What one pass observed: the planner's input and the cluster ID for status.
pub struct Observation {
    pub observed: Observed,
    pub cluster_id: Option<u64>,
}

pub async fn observe(
    client: &Client,
    kvc: &KVCluster,
    names: &ClusterNames,
    defaults: &BuildDefaults,
    access: &EtcdAccess,
) -> Result<Observation, Error> {
    let ns = &names.namespace;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let nodes: Api<Node> = Api::all(client.clone());

    let bootstrap = config_maps
        .get_opt(&names.bootstrap_config_map())
        .await?
        .and_then(|cm| BootstrapConfig::from_data(names, &cm.data.unwrap_or_default()));

    let stateful_set = stateful_sets
        .get_opt(&names.stateful_set())
        .await?
        .map(|sts| ObservedStatefulSet {
            replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            image: sts
                .spec
                .as_ref()
                .and_then(|s| container_image(s.template.spec.as_ref()?.containers.as_slice())),
            update_revision: sts.status.and_then(|s| s.update_revision),
        });

    let selector = ListParams::default().labels(&names.selector());
    let pod_list = pods.list(&selector).await?;
    let mut node_states: BTreeMap<String, NodeState> = BTreeMap::new();
    let mut member_pods = Vec::new();
    for pod in pod_list {
        let Some(ordinal) = names.ordinal_of_member(&pod.name_any()) else {
            continue;
        };
        let node = match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            None => NodeState::Unscheduled,
            Some(node_name) => match node_states.get(&node_name) {
                Some(state) => state.clone(),
                None => {
                    let state = node_state(nodes.get_opt(&node_name).await?);
                    node_states.insert(node_name, state.clone());
                    state
                }
            },
        };
        member_pods.push(member_pod(&pod, ordinal, node));
    }

    let claim_list = claims.list(&ListParams::default()).await?;
    let member_claims = claim_list
        .iter()
        .filter_map(|claim| {
            let (kind, ordinal) = names.ordinal_of_claim(&claim.name_any())?;
            Some(Claim {
                ordinal,
                kind,
                terminating: claim.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect();

    let desired_image = defaults.image_for(kvc);
    let pre_upgrade_backup = observe_pre_upgrade_backup(client, kvc, names, &desired_image).await?;

    // Only the StatefulSet's pods can answer; before it exists there is no cluster to ask.
    let view: Option<MembershipView> = match &stateful_set {
        Some(sts) if sts.replicas > 0 => {
            let endpoints = membership::endpoints(names, sts.replicas as u32);
            membership::observe(access, names, &endpoints).await
        }
        _ => None,
    };

    Ok(Observation {
        cluster_id: view.as_ref().map(|v| v.cluster_id),
        observed: Observed {
            spec_replicas: kvc.spec.replicas,
            node_lost_timeout: Duration::from_secs(
                kvc.spec.replacement.node_lost_timeout_seconds.into(),
            ),
            now: Timestamp::now(),
            bootstrap,
            stateful_set,
            members: view.map(|v| v.members),
            pods: member_pods,
            claims: member_claims,
            defragmentation: kvc
                .spec
                .maintenance
                .defragmentation
                .as_ref()
                .map(|d| DefragPolicy::new(d.schedule.as_deref(), d.threshold.clone())),
            last_defragmented: last_defragmented(kvc),
            created: kvc
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(Timestamp::now, |t| t.0),
            desired_image,
            rolled_out_image: kvc.status.as_ref().and_then(|s| s.image.clone()),
            upgrade: UpgradePolicy {
                force: kvc.spec.upgrade.force,
                member_ready_timeout: Duration::from_secs(
                    kvc.spec.upgrade.member_ready_timeout_seconds.into(),
                ),
            },
            restore_source: restore_source_check(kvc),
            pre_upgrade_backup,
        },
    })
}

/// Whether the snapshot of `spec.bootstrap.restore` is known to be good: the status records the
/// snapshot once it was checked. The controller checks it while it is not.
fn restore_source_check(kvc: &KVCluster) -> RestoreSourceCheck {
    match kvc.spec.restore_source() {
        None => RestoreSourceCheck::NotRequested,
        Some(_) if kvc.status.as_ref().is_some_and(|s| s.restore.is_some()) => {
            RestoreSourceCheck::Verified
        }
        Some(_) => RestoreSourceCheck::Unchecked,
    }
}

/// The image of the `ferrokv` container among `containers`.
fn container_image(containers: &[Container]) -> Option<String> {
    containers
        .iter()
        .find(|c| c.name == CONTAINER_NAME)
        .and_then(|c| c.image.clone())
}

/// When the operator last defragmented each member, as its status says.
fn last_defragmented(kvc: &KVCluster) -> BTreeMap<String, Timestamp> {
    kvc.status
        .iter()
        .flat_map(|status| &status.members)
        .filter_map(|m| Some((m.name.clone(), m.last_defragmentation_time.as_ref()?.0)))
        .collect()
}

fn node_state(node: Option<Node>) -> NodeState {
    let Some(node) = node else {
        return NodeState::Missing;
    };
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => NodeState::Ready,
        Some(c) => NodeState::NotReady {
            since: c.last_transition_time.map_or_else(Timestamp::now, |t| t.0),
        },
        // A node that never reported is not known to be lost.
        None => NodeState::Ready,
    }
}

fn member_pod(pod: &Pod, ordinal: u32, node: NodeState) -> MemberPod {
    let status = pod.status.clone().unwrap_or_default();
    let ready_condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    let ready = ready_condition.as_ref().is_some_and(|c| c.status == "True");
    let not_ready_since = ready_condition
        .filter(|c| c.status != "True")
        .and_then(|c| c.last_transition_time)
        .map(|t| t.0);
    let container = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == CONTAINER_NAME);
    let running = container
        .as_ref()
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    // The current state holds the refusal while the container is terminated; the last state
    // holds it while the kubelet waits to restart it.
    let start_refusal = container.as_ref().and_then(|c| {
        [c.state.as_ref(), c.last_state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref())
            .filter_map(|t| t.message.as_deref())
            .find_map(StartRefusal::parse)
    });
    // A failed init step waits for its restart with the failure as its last state.
    let restore_failure = status
        .init_container_statuses
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.name == RESTORE_CONTAINER_NAME)
        .flat_map(|c| [c.state, c.last_state])
        .flatten()
        .filter_map(|s| s.terminated)
        .find(|t| t.exit_code != 0)
        .map(|t| {
            t.message
                .unwrap_or_else(|| format!("exit code {}", t.exit_code))
        });
    MemberPod {
        ordinal,
        ready,
        running,
        not_ready_since,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        node,
        start_refusal,
        restore_failure,
        revision: pod.labels().get("controller-revision-hash").cloned(),
        image: pod
            .spec
            .as_ref()
            .and_then(|s| container_image(&s.containers)),
    }
}

/// Whether a roll-out waits for a backup and, if so, the latest `KVClusterBackup` the operator
/// made before rolling out `image`.
async fn observe_pre_upgrade_backup(
    client: &Client,
    kvc: &KVCluster,
    names: &ClusterNames,
    image: &str,
) -> Result<PreUpgradeBackup, Error> {
    let wanted = kvc
        .spec
        .backup
        .as_ref()
        .is_some_and(|b| b.destination.s3.is_some())
        && !kvc.spec.upgrade.skip_backup;
    if !wanted {
        return Ok(PreUpgradeBackup::NotWanted);
    }
    let backups: Api<KVClusterBackup> = Api::namespaced(client.clone(), &names.namespace);
    let selector = format!(
        "{CLUSTER_LABEL}={},{BACKUP_PURPOSE_LABEL}={PRE_UPGRADE_PURPOSE}",
        names.cluster
    );
    let list = backups
        .list(&ListParams::default().labels(&selector))
        .await?;
    let latest = list
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter(|b| {
            b.annotations()
                .get(ROLL_OUT_IMAGE_ANNOTATION)
                .map(String::as_str)
                == Some(image)
        })
        .filter_map(|b| {
            let attempt = b
                .annotations()
                .get(BACKUP_ATTEMPT_ANNOTATION)?
                .parse()
                .ok()?;
            Some((attempt, b))
        })
        .max_by_key(|(attempt, _)| *attempt)
        .map(|(attempt, backup)| PreUpgradeBackupAttempt {
            name: backup.name_any(),
            attempt,
            state: pre_upgrade_backup_state(backup),
        });
    Ok(PreUpgradeBackup::Wanted(latest))
}

fn pre_upgrade_backup_state(backup: &KVClusterBackup) -> PreUpgradeBackupState {
    let status = backup.status.clone().unwrap_or_default();
    match status.phase {
        Some(BackupPhase::Succeeded) => PreUpgradeBackupState::Succeeded,
        Some(BackupPhase::Failed) => PreUpgradeBackupState::Failed {
            reason: status.reason.unwrap_or_default(),
            message: status.message.unwrap_or_default(),
            finished: status
                .completion_time
                .or(backup.metadata.creation_timestamp.clone())
                .map_or_else(Timestamp::now, |t| t.0),
        },
        Some(BackupPhase::Pending | BackupPhase::Running) | None => {
            PreUpgradeBackupState::InProgress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn crash_looping_member_reports_its_refusal_from_the_last_state() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "kv-1", "labels": {"controller-revision-hash": "kv-abc"}},
            "status": {
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "containerStatuses": [{
                    "name": "ferrokv", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1,
                        "message": "data dir empty but member kv-1 is registered as ID 2a"}}
                }]
            }
        }));
        let member = member_pod(&pod, 1, NodeState::Ready);
        assert!(!member.ready && !member.running);
        assert_eq!(
            member.start_refusal,
            Some(StartRefusal::EmptyDataDir {
                registered_id: Some(0x2a),
                wal_holds_log: false,
            })
        );
        assert_eq!(
            member.not_ready_since.map(|t| t.as_second()),
            Some(1_767_225_600)
        );
        assert_eq!(member.revision.as_deref(), Some("kv-abc"));
    }

    #[test]
    fn running_ready_member_has_no_refusal() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "kv-0"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "ferrokv", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                    "state": {"running": {}}
                }]
            }
        }));
        let member = member_pod(&pod, 0, NodeState::Ready);
        assert!(member.ready && member.running);
        assert_eq!(member.start_refusal, None);
        assert_eq!(member.not_ready_since, None);
    }

    #[test]
    fn node_readiness_comes_from_its_ready_condition() {
        let node = |status: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n"},
                "status": {"conditions": [{"type": "Ready", "status": status,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        assert_eq!(node_state(Some(node("True"))), NodeState::Ready);
        assert_eq!(
            node_state(Some(node("Unknown"))),
            NodeState::NotReady {
                since: Timestamp::from_second(1_767_225_600).unwrap()
            }
        );
        assert_eq!(node_state(None), NodeState::Missing);
    }
}
