//! When certificates of `tls.*.auto` are issued again, and where a CA rotation stands: pure
//! functions of what the certificates say and the time, tested on tables of cases.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::pki::CertFacts;

/// Why a certificate is issued (again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reissue {
    /// There is none yet (a new cluster, a new member).
    Missing,
    /// What is there cannot be read.
    Unreadable,
    /// It does not name every name it must (the cluster's names changed).
    NamesChanged,
    /// Another CA issued it: the CA was rotated.
    OtherCa,
    /// Two thirds of its lifetime have passed.
    RenewalDue,
}

/// Renewal is due once two thirds of a certificate's lifetime have passed: the remaining
/// third leaves time to notice and retry a renewal that fails.
pub fn renewal_due(facts: &CertFacts, now: Timestamp) -> bool {
    let start = facts.not_before.as_second();
    let lifetime = facts.not_after.as_second() - start;
    now.as_second() >= start + lifetime * 2 / 3
}

/// When a certificate's renewal falls due.
pub fn renewal_time(facts: &CertFacts) -> Timestamp {
    let start = facts.not_before.as_second();
    let lifetime = facts.not_after.as_second() - start;
    Timestamp::from_second(start + lifetime * 2 / 3).unwrap_or(facts.not_after)
}

/// Whether the certificate `current` (`None`: missing, `Some(Err)`: unreadable) must be issued
/// again by the CA named `signing_ca`, for `names`.
pub fn reissue_reason(
    current: Option<Result<&CertFacts, ()>>,
    names: &BTreeSet<String>,
    signing_ca: &[u8],
    now: Timestamp,
) -> Option<Reissue> {
    let facts = match current {
        None => return Some(Reissue::Missing),
        Some(Err(())) => return Some(Reissue::Unreadable),
        Some(Ok(facts)) => facts,
    };
    if facts.issuer != signing_ca {
        Some(Reissue::OtherCa)
    } else if !names.is_subset(&facts.names) {
        Some(Reissue::NamesChanged)
    } else if renewal_due(facts, now) {
        Some(Reissue::RenewalDue)
    } else {
        None
    }
}

/// Where a CA rotation stands, as the CA Secret records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaPhase {
    /// One CA signs and is trusted.
    Steady,
    /// A next CA is in the trust bundles beside the signing one, since `since`; nothing it
    /// signed is in use yet.
    Introducing { since: Timestamp },
    /// The next CA signs, and the previous one is still trusted, since `since`, for the
    /// certificates it signed that members may not have replaced yet.
    Retiring { since: Timestamp },
}

/// The next step of a CA rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaStep {
    /// Nothing to do; look again at the time given, if any.
    Wait(Option<Timestamp>),
    /// Make the next CA and add it to every trust bundle.
    Introduce,
    /// Sign with the next CA from now on (every certificate is issued again), keeping the
    /// previous one trusted.
    Promote,
    /// Remove the previous CA from the trust bundles.
    Retire,
}

/// The next step, given the phase, the signing CA, whether a rotation was asked for, and how
/// long a Secret takes to reach every member's files (the kubelet's sync period).
pub fn ca_step(
    phase: CaPhase,
    ca: &CertFacts,
    rotation_requested: bool,
    now: Timestamp,
    propagation: Duration,
) -> CaStep {
    let after = |since: Timestamp| {
        Timestamp::from_second(since.as_second() + propagation.as_secs() as i64).unwrap_or(since)
    };
    match phase {
        CaPhase::Steady if rotation_requested || renewal_due(ca, now) => CaStep::Introduce,
        CaPhase::Steady => CaStep::Wait(Some(renewal_time(ca))),
        CaPhase::Introducing { since } if now >= after(since) => CaStep::Promote,
        CaPhase::Retiring { since } if now >= after(since) => CaStep::Retire,
        CaPhase::Introducing { since } | CaPhase::Retiring { since } => {
            CaStep::Wait(Some(after(since)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    fn facts(not_before: i64, not_after: i64, names: &[&str], issuer: &[u8]) -> CertFacts {
        CertFacts {
            not_before: at(not_before),
            not_after: at(not_after),
            names: names.iter().map(|n| n.to_string()).collect(),
            subject: b"member".to_vec(),
            issuer: issuer.to_vec(),
        }
    }

    fn wanted(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// The certificate there is, the names wanted, the signing CA, the time, and the answer.
    type ReissueCase<'a> = (
        Option<Result<&'a CertFacts, ()>>,
        &'a [&'a str],
        &'a [u8],
        i64,
        Option<Reissue>,
    );

    #[test]
    fn reissue_decisions() {
        let good = facts(0, 900, &["a", "b"], b"ca1");
        let cases: [ReissueCase; 8] = [
            (None, &["a"], b"ca1", 10, Some(Reissue::Missing)),
            (Some(Err(())), &["a"], b"ca1", 10, Some(Reissue::Unreadable)),
            (Some(Ok(&good)), &["a", "b"], b"ca1", 10, None),
            // Extra names in the certificate are harmless; a missing one is not.
            (Some(Ok(&good)), &["a"], b"ca1", 10, None),
            (
                Some(Ok(&good)),
                &["a", "c"],
                b"ca1",
                10,
                Some(Reissue::NamesChanged),
            ),
            (Some(Ok(&good)), &["a"], b"ca2", 10, Some(Reissue::OtherCa)),
            // Two thirds of 900 seconds is 600.
            (Some(Ok(&good)), &["a"], b"ca1", 599, None),
            (
                Some(Ok(&good)),
                &["a"],
                b"ca1",
                600,
                Some(Reissue::RenewalDue),
            ),
        ];
        for (current, names, ca, now, expected) in cases {
            assert_eq!(
                reissue_reason(current, &wanted(names), ca, at(now)),
                expected,
                "names {names:?}, CA {ca:?}, at {now}"
            );
        }
    }

    #[test]
    fn renewal_falls_due_at_two_thirds_of_the_lifetime() {
        let cert = facts(1_000, 91_000, &[], b"ca");
        assert_eq!(renewal_time(&cert), at(61_000));
        assert!(!renewal_due(&cert, at(60_999)));
        assert!(renewal_due(&cert, at(61_000)));
    }

    #[test]
    fn ca_rotation_steps() {
        let ca = facts(0, 3_000, &[], b"root");
        let wait = Duration::from_secs(30);
        let cases = [
            (CaPhase::Steady, false, 100, CaStep::Wait(Some(at(2_000)))),
            (CaPhase::Steady, true, 100, CaStep::Introduce),
            (CaPhase::Steady, false, 2_000, CaStep::Introduce),
            (
                CaPhase::Introducing { since: at(100) },
                false,
                129,
                CaStep::Wait(Some(at(130))),
            ),
            (
                CaPhase::Introducing { since: at(100) },
                false,
                130,
                CaStep::Promote,
            ),
            // A request during a rotation is that rotation.
            (
                CaPhase::Retiring { since: at(200) },
                true,
                210,
                CaStep::Wait(Some(at(230))),
            ),
            (
                CaPhase::Retiring { since: at(200) },
                false,
                230,
                CaStep::Retire,
            ),
        ];
        for (phase, requested, now, expected) in cases {
            assert_eq!(
                ca_step(phase, &ca, requested, at(now), wait),
                expected,
                "{phase:?}, requested {requested}, at {now}"
            );
        }
    }
}
