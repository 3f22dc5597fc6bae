//! What `kubectl kvc status` prints: one screen about a cluster, from its KVCluster status and
//! what each member answered just now. Pure functions from [`StatusReport`] to text, so the
//! layout is tested without a cluster.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// One member, as the cluster lists it and as it answered a Status request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberReport {
    pub name: String,
    /// Hex, as etcd prints it; empty when only the pod is known.
    pub id: String,
    pub learner: bool,
    pub leader: bool,
    /// Its Status, or why it gave none (`unreachable: ...`, `no leader`).
    pub answer: Result<MemberAnswer, String>,
}

/// What a member said about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberAnswer {
    /// The ferrokv release of the member's pod (its image), not the etcd API version Status
    /// reports.
    pub version: String,
    pub revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
}

/// The last backup of the cluster the API server knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastBackup {
    /// RFC 3339.
    pub time: String,
    pub revision: i64,
    pub size: i64,
    /// Where it is: `KVClusterBackup NAME` or the key of a scheduled backup.
    pub source: String,
}

/// Everything the screen shows.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusReport {
    pub cluster: String,
    pub namespace: String,
    pub phase: String,
    pub version: String,
    pub image: String,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub cluster_id: String,
    pub tls: bool,
    pub members: Vec<MemberReport>,
    /// Active alarms as `MEMBER: ALARM`; `None` when no member could be asked.
    pub alarms: Option<Vec<String>>,
    pub last_backup: Option<LastBackup>,
    pub backup_failure: Option<String>,
    pub conditions: Vec<Condition>,
}

/// `1.5 MiB`: bytes for a person.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Lays out rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

fn role(member: &MemberReport) -> &'static str {
    match (member.leader, member.learner) {
        (true, _) => "leader",
        (false, true) => "learner",
        (false, false) => "follower",
    }
}

/// The screen.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let answered: Vec<&MemberAnswer> = report
        .members
        .iter()
        .filter_map(|m| m.answer.as_ref().ok())
        .collect();
    let healthy = answered.len();
    let leader = report
        .members
        .iter()
        .find(|m| m.leader)
        .map_or("none".to_string(), |m| format!("{} ({})", m.name, m.id));
    let revision = answered.iter().map(|a| a.revision).max();
    let _ = writeln!(out, "Cluster:      {}/{}", report.namespace, report.cluster);
    let _ = writeln!(out, "Phase:        {}", report.phase);
    let _ = writeln!(
        out,
        "Version:      {} ({}), {}/{} members on the current template",
        report.version, report.image, report.updated_replicas, report.replicas
    );
    let _ = writeln!(out, "Cluster ID:   {}", report.cluster_id);
    let _ = writeln!(out, "Leader:       {leader}");
    let _ = writeln!(
        out,
        "Members:      {} listed, {healthy} answering{}",
        report.members.len(),
        if report.tls { ", client TLS" } else { "" }
    );
    let _ = writeln!(
        out,
        "Revision:     {}",
        revision.map_or("unknown".to_string(), |r| r.to_string())
    );
    let alarms = match &report.alarms {
        None => "unknown (no member answered)".to_string(),
        Some(alarms) if alarms.is_empty() => "none".to_string(),
        Some(alarms) => alarms.join(", "),
    };
    let _ = writeln!(out, "Alarms:       {alarms}");
    let backup = match &report.last_backup {
        None => "none".to_string(),
        Some(b) => format!(
            "{}, revision {}, {}, {}",
            b.time,
            b.revision,
            human_bytes(b.size),
            b.source
        ),
    };
    let _ = writeln!(out, "Last backup:  {backup}");
    if let Some(failure) = &report.backup_failure {
        let _ = writeln!(out, "Last failure: {failure}");
    }
    out.push('\n');

    let rows: Vec<Vec<String>> = report
        .members
        .iter()
        .map(|m| {
            let mut row = vec![m.name.clone(), m.id.clone(), role(m).to_string()];
            match &m.answer {
                Ok(a) => row.extend([
                    "healthy".to_string(),
                    a.revision.to_string(),
                    format!("{}/{}", a.raft_term, a.raft_index),
                    human_bytes(a.db_size),
                    human_bytes(a.db_size_in_use),
                    a.version.clone(),
                ]),
                Err(why) => row.extend([
                    format!("unhealthy: {why}"),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]),
            }
            row
        })
        .collect();
    out.push_str(&table(
        &[
            "MEMBER",
            "ID",
            "ROLE",
            "HEALTH",
            "REVISION",
            "TERM/INDEX",
            "DB SIZE",
            "IN USE",
            "VERSION",
        ],
        &rows,
    ));
    out.push('\n');

    let rows: Vec<Vec<String>> = report
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["CONDITION", "STATUS", "REASON", "MESSAGE"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn answer(revision: i64) -> MemberAnswer {
        MemberAnswer {
            version: "0.2.0".into(),
            revision,
            raft_term: 3,
            raft_index: 57,
            db_size: 3 << 20,
            db_size_in_use: 1 << 20,
        }
    }

    fn report() -> StatusReport {
        StatusReport {
            cluster: "example".into(),
            namespace: "default".into(),
            phase: "Running".into(),
            version: "0.2.0".into(),
            image: "ghcr.io/ferrokv/ferrokv:v0.2.0".into(),
            replicas: 3,
            updated_replicas: 3,
            cluster_id: "5e1f0c4a9d3b7e21".into(),
            tls: false,
            members: vec![
                MemberReport {
                    name: "example-0".into(),
                    id: "8e9e05c521640000".into(),
                    leader: true,
                    learner: false,
                    answer: Ok(answer(42)),
                },
                MemberReport {
                    name: "example-1".into(),
                    id: "8e9e05c521640001".into(),
                    leader: false,
                    learner: false,
                    answer: Ok(answer(41)),
                },
                MemberReport {
                    name: "example-2".into(),
                    id: "8e9e05c521640002".into(),
                    leader: false,
                    learner: true,
                    answer: Err("unreachable: connection refused".into()),
                },
            ],
            alarms: Some(vec!["example-1: NOSPACE".into()]),
            last_backup: Some(LastBackup {
                time: "2026-12-06T10:00:00Z".into(),
                revision: 40,
                size: 20480,
                source: "KVClusterBackup nightly".into(),
            }),
            backup_failure: None,
            conditions: vec![Condition {
                type_: "Available".into(),
                status: "True".into(),
                reason: "QuorumHealthy".into(),
                message: "2 of 2 voters are healthy".into(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
        }
    }

    #[test]
    fn status_screen_shows_members_roles_health_sizes_alarms_backup_and_conditions() {
        let screen = render(&report());
        for says in [
            "Cluster:      default/example",
            "Phase:        Running",
            "Version:      0.2.0 (ghcr.io/ferrokv/ferrokv:v0.2.0), 3/3 members",
            "Leader:       example-0 (8e9e05c521640000)",
            "Members:      3 listed, 2 answering",
            "Revision:     42",
            "Alarms:       example-1: NOSPACE",
            "Last backup:  2026-12-06T10:00:00Z, revision 40, 20.0 KiB, KVClusterBackup nightly",
        ] {
            assert!(screen.contains(says), "{says:?} not in\n{screen}");
        }
        let row = |name: &str| {
            screen
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name} in\n{screen}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("example-0"),
            [
                "example-0",
                "8e9e05c521640000",
                "leader",
                "healthy",
                "42",
                "3/57",
                "3.0",
                "MiB",
                "1.0",
                "MiB",
                "0.2.0"
            ]
        );
        assert_eq!(row("example-2")[2..4], ["learner", "unhealthy:"]);
        assert_eq!(
            row("Available"),
            [
                "Available",
                "True",
                "QuorumHealthy",
                "2",
                "of",
                "2",
                "voters",
                "are",
                "healthy"
            ]
        );
        // The member table's columns line up under its header.
        let header = screen.lines().find(|l| l.starts_with("MEMBER")).unwrap();
        let at = header.find("ROLE").unwrap();
        assert_eq!(
            &screen.lines().find(|l| l.starts_with("example-1")).unwrap()[at..at + 8],
            "follower"
        );
    }

    #[test]
    fn unknown_alarms_and_no_backup_are_said_so() {
        let mut r = report();
        r.alarms = None;
        r.last_backup = None;
        r.backup_failure = Some("UploadFailed: connection refused".into());
        let screen = render(&r);
        assert!(screen.contains("Alarms:       unknown"), "{screen}");
        assert!(screen.contains("Last backup:  none"), "{screen}");
        assert!(screen.contains("Last failure: UploadFailed"), "{screen}");
        r.alarms = Some(vec![]);
        assert!(render(&r).contains("Alarms:       none"));
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
