//! `kubectl kvc`, the kubectl plugin: a person's view of a KVCluster and the few day-2 actions
//! they take by hand — `status`, `backup`, `defrag`, `move-leader`.
//!
//! It reads the KVCluster and its pods with the user's own Kubernetes credentials, and reaches
//! each member's client port through the API server's port-forward ([`tunnel`]), with the
//! access the operator itself uses ([`crate::etcd_access::current`]: its client certificate
//! when the cluster has client TLS, root's password when it has auth), read from the cluster's
//! Secrets. What it prints is laid out in [`report`]. It changes nothing the operator decides:
//! a backup is a `KVClusterBackup` the operator takes, and a defragmentation or a leader move is
//! the same etcd call `etcdctl` makes.

pub mod report;
pub mod tunnel;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, Client as EtcdClient, StatusResponse};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::children::{names_of, CONTAINER_NAME};
use crate::crd::{BackupPhase, KVCluster, KVClusterBackup, KVClusterBackupSpec};
use crate::error::Error;
use crate::etcd_access::{self, EtcdAccess};
use crate::membership;
use crate::names::{ClusterNames, CLIENT_PORT, CLUSTER_LABEL};
use crate::status::{describe_defragmented, version_of};
use report::{LastBackup, MemberAnswer, MemberReport, StatusReport};
use tunnel::Tunnel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One member pod, reached through a tunnel when it runs.
struct MemberPod {
    name: String,
    ordinal: u32,
    /// The ferrokv release the pod runs, from its container's image.
    version: String,
    /// The client URL through the tunnel, or why there is none.
    url: Result<String, String>,
    _tunnel: Option<Tunnel>,
}

/// What a member answered to Status, or why it did not.
struct Probe {
    pod: String,
    ordinal: u32,
    version: String,
    url: Option<String>,
    status: Result<StatusResponse, String>,
}

impl Probe {
    fn member_id(&self) -> Option<u64> {
        let status = self.status.as_ref().ok()?;
        Some(status.header()?.member_id())
    }
}

/// A cluster the plugin talks to: its KVCluster, the access its members want, a tunnel to
/// each running member pod.
pub struct Session {
    client: Client,
    kvc: KVCluster,
    names: ClusterNames,
    access: EtcdAccess,
    pods: Vec<MemberPod>,
}

impl Session {
    /// Reads the KVCluster `name` in `namespace` and opens a tunnel to each running member.
    pub async fn open(client: Client, namespace: &str, name: &str) -> Result<Session, Error> {
        let clusters: Api<KVCluster> = Api::namespaced(client.clone(), namespace);
        let kvc = clusters
            .get_opt(name)
            .await?
            .ok_or_else(|| Error::ClusterNotFound {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })?;
        let names = names_of(&kvc);
        let access = etcd_access::current(&client, &kvc, namespace).await?;
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let listed = pods_api
            .list(&ListParams::default().labels(&names.selector()))
            .await?;
        let mut pods = Vec::new();
        for pod in listed {
            let pod_name = pod.name_any();
            let Some(ordinal) = names.ordinal_of_member(&pod_name) else {
                continue;
            };
            // Status answers with the etcd API version; the release is the image's.
            let version = pod
                .spec
                .iter()
                .flat_map(|spec| &spec.containers)
                .find(|c| c.name == CONTAINER_NAME)
                .and_then(|c| c.image.as_deref())
                .map_or_else(|| "unknown".to_string(), version_of);
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let (url, tunnel) = if phase != "Running" {
                (Err(format!("pod is {phase}")), None)
            } else {
                match Tunnel::open(pods_api.clone(), &pod_name, CLIENT_PORT as u16).await {
                    Ok(tunnel) => (Ok(tunnel.url(names.client_tls())), Some(tunnel)),
                    Err(error) => (Err(error.to_string()), None),
                }
            };
            pods.push(MemberPod {
                name: pod_name,
                ordinal,
                version,
                url,
                _tunnel: tunnel,
            });
        }
        pods.sort_by_key(|p| p.ordinal);
        Ok(Session {
            client,
            kvc,
            names,
            access,
            pods,
        })
    }

    async fn connect(&self, url: &str) -> Result<EtcdClient, Error> {
        Ok(self
            .access
            .connect(&[url.to_string()], CONNECT_TIMEOUT, REQUEST_TIMEOUT)
            .await?)
    }

    /// Status of every member pod, asked one by one.
    async fn probe(&self) -> Vec<Probe> {
        let mut probes = Vec::new();
        for pod in &self.pods {
            let status = match &pod.url {
                Err(why) => Err(why.clone()),
                Ok(url) => match self.connect(url).await {
                    Err(error) => Err(format!("unreachable: {error}")),
                    Ok(mut etcd) => etcd.status().await.map_err(|e| e.to_string()),
                },
            };
            probes.push(Probe {
                pod: pod.name.clone(),
                ordinal: pod.ordinal,
                version: pod.version.clone(),
                url: pod.url.clone().ok(),
                status,
            });
        }
        probes
    }

    /// The leader's ID as the members that answered see it.
    fn leader(probes: &[Probe]) -> Option<u64> {
        probes
            .iter()
            .filter_map(|p| p.status.as_ref().ok())
            .map(StatusResponse::leader)
            .find(|&leader| leader != 0)
    }

    /// A member to ask about the whole cluster: the leader when it answered, else any.
    fn spokesman(probes: &[Probe]) -> Option<&str> {
        let leader = Self::leader(probes);
        probes
            .iter()
            .filter(|p| p.status.is_ok() && p.url.is_some())
            .min_by_key(|p| p.member_id() != leader)
            .and_then(|p| p.url.as_deref())
    }

    /// Everything `kubectl kvc status` shows.
    pub async fn status_report(&self) -> Result<StatusReport, Error> {
        let probes = self.probe().await;
        let leader = Self::leader(&probes);
        let spokesman = Self::spokesman(&probes);
        let (listed, alarms) = match spokesman {
            Some(url) => {
                let mut etcd = self.connect(url).await?;
                let listed = etcd.member_list().await?.members().to_vec();
                let alarms = etcd
                    .alarm(AlarmAction::Get, AlarmType::None, None)
                    .await?
                    .alarms()
                    .iter()
                    .map(|a| (a.member_id(), a.alarm()))
                    .collect::<Vec<_>>();
                (Some(listed), Some(alarms))
            }
            None => (None, None),
        };
        let by_id: BTreeMap<u64, &Probe> = probes
            .iter()
            .filter_map(|p| Some((p.member_id()?, p)))
            .collect();
        let answer = |probe: &Probe| -> Result<MemberAnswer, String> {
            let status = probe.status.as_ref().map_err(Clone::clone)?;
            if status.leader() == 0 {
                return Err("no leader".to_string());
            }
            Ok(MemberAnswer {
                version: probe.version.clone(),
                revision: status.header().map_or(0, |h| h.revision()),
                raft_term: status.raft_term(),
                raft_index: status.raft_index(),
                db_size: status.db_size(),
                db_size_in_use: status.raft_used_db_size(),
            })
        };
        let members: Vec<MemberReport> = match &listed {
            Some(listed) => listed
                .iter()
                .map(|m| {
                    let probe = by_id
                        .get(&m.id())
                        .copied()
                        .or_else(|| probes.iter().find(|p| p.pod == m.name()));
                    MemberReport {
                        name: if m.name().is_empty() {
                            "(not started)".to_string()
                        } else {
                            m.name().to_string()
                        },
                        id: format!("{:x}", m.id()),
                        learner: m.is_learner(),
                        leader: leader == Some(m.id()),
                        answer: probe.map_or(Err("no pod".to_string()), answer),
                    }
                })
                .collect(),
            // No member answered: say so for each pod.
            None => probes
                .iter()
                .map(|p| MemberReport {
                    name: p.pod.clone(),
                    id: String::new(),
                    learner: false,
                    leader: false,
                    answer: answer(p),
                })
                .collect(),
        };
        let mut members = members;
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let name_of = |id: u64| {
            listed
                .iter()
                .flatten()
                .find(|m| m.id() == id)
                .map_or(format!("{id:x}"), |m| m.name().to_string())
        };
        let alarms = alarms.map(|alarms| {
            alarms
                .into_iter()
                .filter(|(_, alarm)| *alarm != AlarmType::None)
                .map(|(id, alarm)| format!("{}: {}", name_of(id), alarm.as_str_name()))
                .collect()
        });
        let status = self.kvc.status.clone().unwrap_or_default();
        let backup = status.backup.clone().unwrap_or_default();
        Ok(StatusReport {
            cluster: self.names.cluster.clone(),
            namespace: self.names.namespace.clone(),
            phase: status
                .phase
                .map_or("unknown".to_string(), |p| format!("{p:?}")),
            version: status.version.clone().unwrap_or_else(|| "unknown".into()),
            image: status.image.clone().unwrap_or_else(|| "unknown".into()),
            replicas: self.kvc.spec.replicas,
            updated_replicas: status.updated_replicas,
            cluster_id: status
                .cluster_id
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            tls: self.names.client_tls(),
            members,
            alarms,
            last_backup: self.last_backup(backup.last_successful_backup).await?,
            backup_failure: backup
                .last_failure
                .map(|f| format!("{} at {}: {}", f.reason, f.time.0, f.message)),
            conditions: status.conditions,
        })
    }

    /// The newest backup: the last scheduled one, or a `KVClusterBackup` of the cluster.
    async fn last_backup(
        &self,
        scheduled: Option<crate::crd::BackupRecord>,
    ) -> Result<Option<LastBackup>, Error> {
        let backups: Api<KVClusterBackup> =
            Api::namespaced(self.client.clone(), &self.names.namespace);
        let on_demand = backups
            .list(&ListParams::default())
            .await?
            .into_iter()
            .filter(|b| b.spec.cluster_name == self.names.cluster)
            .filter_map(|b| {
                let status = b.status.clone()?;
                (status.phase == Some(BackupPhase::Succeeded)).then_some(())?;
                Some((
                    status.completion_time?.0,
                    LastBackup {
                        time: String::new(),
                        revision: status.revision.unwrap_or_default(),
                        size: status.size.unwrap_or_default(),
                        source: format!("KVClusterBackup {}", b.name_any()),
                    },
                ))
            });
        let scheduled = scheduled.map(|r| {
            (
                r.time.0,
                LastBackup {
                    time: String::new(),
                    revision: r.revision,
                    size: r.size,
                    source: format!("scheduled, {}", r.key),
                },
            )
        });
        Ok(on_demand
            .chain(scheduled)
            .max_by_key(|(time, _)| *time)
            .map(|(time, backup)| LastBackup {
                time: time.to_string(),
                ..backup
            }))
    }

    /// Creates a `KVClusterBackup` of the cluster; answers its name.
    pub async fn create_backup(&self, now: Timestamp) -> Result<String, Error> {
        let name = format!("{}-{}", self.names.cluster, now.strftime("%Y%m%d-%H%M%S"));
        let mut backup = KVClusterBackup::new(
            &name,
            KVClusterBackupSpec {
                cluster_name: self.names.cluster.clone(),
                destination: None,
            },
        );
        backup.metadata.labels = Some(BTreeMap::from([(
            CLUSTER_LABEL.to_string(),
            self.names.cluster.clone(),
        )]));
        let backups: Api<KVClusterBackup> =
            Api::namespaced(self.client.clone(), &self.names.namespace);
        backups.create(&PostParams::default(), &backup).await?;
        Ok(name)
    }

    /// Waits until the backup `name` has succeeded or failed; answers what it says.
    pub async fn wait_backup(&self, name: &str, within: Duration) -> Result<String, Error> {
        let backups: Api<KVClusterBackup> =
            Api::namespaced(self.client.clone(), &self.names.namespace);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let status = backups.get(name).await?.status.unwrap_or_default();
            let message = status.message.clone().unwrap_or_default();
            match status.phase {
                Some(BackupPhase::Succeeded) => return Ok(message),
                Some(BackupPhase::Failed) => {
                    return Err(Error::BackupFailed {
                        name: name.to_string(),
                        reason: status.reason.unwrap_or_default(),
                        message,
                    })
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::BackupFailed {
                        name: name.to_string(),
                        reason: "Timeout".to_string(),
                        message: format!("not done after {}s: {message}", within.as_secs()),
                    })
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Defragments `member`, or every member one at a time, followers first and the leader
    /// last (as the operator does); answers a line for each.
    pub async fn defragment(&self, member: Option<&str>) -> Result<Vec<String>, Error> {
        let probes = self.probe().await;
        if let Some(member) = member {
            self.member_pod(member)?;
        }
        let leader = Self::leader(&probes);
        let mut chosen: Vec<&Probe> = probes
            .iter()
            .filter(|p| member.is_none_or(|m| p.pod == m))
            .collect();
        chosen.sort_by_key(|p| {
            (
                p.member_id().is_some() && p.member_id() == leader,
                p.ordinal,
            )
        });
        let mut lines = Vec::new();
        for probe in chosen {
            let url = probe
                .url
                .as_deref()
                .ok_or_else(|| Error::MemberNotAnswering {
                    member: probe.pod.clone(),
                    why: probe.status.as_ref().err().cloned().unwrap_or_default(),
                })?;
            let done = membership::defragment(&self.access, url).await?;
            lines.push(format!(
                "defragmented {}: {}",
                probe.pod,
                describe_defragmented(&done)
            ));
        }
        Ok(lines)
    }

    /// Hands leadership to `member`; answers what was done.
    pub async fn move_leader(&self, member: &str) -> Result<String, Error> {
        self.member_pod(member)?;
        let probes = self.probe().await;
        let leader_id = Self::leader(&probes).ok_or_else(|| Error::NoMemberAnswers {
            cluster: self.names.cluster.clone(),
        })?;
        let target = probes
            .iter()
            .find(|p| p.pod == member)
            .and_then(Probe::member_id)
            .ok_or_else(|| Error::MemberNotAnswering {
                member: member.to_string(),
                why: "it gave no Status".to_string(),
            })?;
        if target == leader_id {
            return Ok(format!("{member} ({target:x}) is the leader already"));
        }
        let leader = probes
            .iter()
            .find(|p| p.member_id() == Some(leader_id))
            .ok_or_else(|| Error::MemberNotAnswering {
                member: format!("{leader_id:x} (the leader)"),
                why: "its pod did not answer".to_string(),
            })?;
        let url = leader.url.as_deref().unwrap_or_default();
        membership::move_leader(&self.access, url, target).await?;
        Ok(format!(
            "leadership moved from {} ({leader_id:x}) to {member} ({target:x})",
            leader.pod
        ))
    }

    fn member_pod(&self, member: &str) -> Result<&MemberPod, Error> {
        self.pods
            .iter()
            .find(|p| p.name == member)
            .ok_or_else(|| Error::NoSuchMember {
                cluster: self.names.cluster.clone(),
                member: member.to_string(),
                known: self.pods.iter().map(|p| p.name.clone()).collect(),
            })
    }
}
