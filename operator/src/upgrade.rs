//! Which image the members may run: the version rules of a roll-out.
//!
//! A cluster moves up one minor version at a time, as etcd's does: every member of a minor
//! version can run beside members of the next one, and nothing else is promised. So the
//! operator refuses, unless `spec.upgrade.force` is set, a change of `spec.version` (or the tag
//! of `spec.image`) that goes to an older minor version, skips a minor version, or changes the
//! major version other than to its first minor. A refused change leaves the StatefulSet's
//! template as it is: no member is touched, and the `Degraded` condition says why.
//!
//! Tags that are not versions (`latest`, a digest) cannot be judged and are let through.

use std::cmp::Ordering;
use std::fmt;

/// A `major.minor.patch` version, from an image tag such as `v0.3.1` or `0.3.1-rc.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// The version an image reference's tag names; `None` for a digest, no tag, or a tag that
    /// is not a version.
    pub fn of_image(image: &str) -> Option<Self> {
        if image.contains('@') {
            return None;
        }
        // The tag follows the last ':' after the last '/' (a registry host may have a port).
        let last = image.rsplit('/').next()?;
        let (_, tag) = last.rsplit_once(':')?;
        Self::parse(tag)
    }

    /// `v1.2.3`, `1.2.3`, `1.2.3-rc.1` or `1.2.3+build`; `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.strip_prefix('v').unwrap_or(text);
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let version = Self {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(version)
    }

    fn minor_line(self) -> (u64, u64) {
        (self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a change of version is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// To an older minor version than a member runs.
    Downgrade { from: Version, to: Version },
    /// More than one minor version up.
    SkipsMinor { from: Version, to: Version },
    /// To another major version, other than to the next one's first minor.
    MajorChange { from: Version, to: Version },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let force = "set spec.upgrade.force: true to roll it out anyway";
        match self {
            Self::Downgrade { from, to } => write!(
                f,
                "version {to} is refused: a member runs {from}, and moving to an older minor \
                 version is a downgrade its data may not survive; {force}"
            ),
            Self::SkipsMinor { from, to } => write!(
                f,
                "version {to} is refused: a member runs {from}, and an upgrade goes one minor \
                 version at a time (next: {}.{}); {force}",
                from.major,
                from.minor + 1
            ),
            Self::MajorChange { from, to } => write!(
                f,
                "version {to} is refused: a member runs {from}, and a new major version is \
                 reached through its first minor ({}.0); {force}",
                from.major + 1
            ),
        }
    }
}

/// Whether members running `from` may be moved to `to`.
pub fn check(from: Version, to: Version) -> Result<(), Refusal> {
    let (from_line, to_line) = (from.minor_line(), to.minor_line());
    match to_line.cmp(&from_line) {
        Ordering::Equal => Ok(()),
        Ordering::Less => Err(Refusal::Downgrade { from, to }),
        Ordering::Greater if to.major == from.major => {
            if to.minor == from.minor + 1 {
                Ok(())
            } else {
                Err(Refusal::SkipsMinor { from, to })
            }
        }
        Ordering::Greater if to.major == from.major + 1 && to.minor == 0 => Ok(()),
        Ordering::Greater => Err(Refusal::MajorChange { from, to }),
    }
}

/// The image the StatefulSet's template gets, and why the spec's is refused if it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDecision {
    pub image: String,
    pub refused: Option<Refusal>,
    /// The spec's image is allowed, but the backup taken before a roll-out has not succeeded
    /// yet: `image` stays the template's until it has (see `planner::image_decision`).
    pub awaits_backup: bool,
}

/// Decides between the `desired` image and the one the template has (`current`, `None`
/// before the StatefulSet exists), given every image a member runs or ran last (`running`).
pub fn decide<'a>(
    desired: &str,
    current: Option<&'a str>,
    running: impl IntoIterator<Item = &'a str>,
    force: bool,
) -> ImageDecision {
    let allowed = ImageDecision {
        image: desired.to_string(),
        refused: None,
        awaits_backup: false,
    };
    let Some(current) = current else {
        return allowed;
    };
    if force || current == desired {
        return allowed;
    }
    let Some(to) = Version::of_image(desired) else {
        return allowed;
    };
    let refused = running
        .into_iter()
        .chain([current])
        .filter_map(Version::of_image)
        .find_map(|from| check(from, to).err());
    match refused {
        None => allowed,
        Some(refusal) => ImageDecision {
            image: current.to_string(),
            refused: Some(refusal),
            awaits_backup: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_come_from_tags() {
        assert_eq!(
            Version::of_image("ghcr.io/ferrokv/ferrokv:v0.3.1"),
            Some(v("0.3.1"))
        );
        assert_eq!(
            Version::of_image("registry.local:5000/kv:1.2.3-rc.1"),
            Some(v("1.2.3"))
        );
        assert_eq!(Version::of_image("registry.local:5000/kv"), None);
        assert_eq!(Version::of_image("kv:latest"), None);
        assert_eq!(Version::of_image("kv:v1.2"), None);
        assert_eq!(Version::of_image("kv:1.2.3.4"), None);
        assert_eq!(Version::of_image("kv:v1.2.3@sha256:abcd"), None);
    }

    #[test]
    fn one_minor_at_a_time_and_never_down() {
        assert_eq!(
            check(v("0.2.1"), v("0.2.0")),
            Ok(()),
            "patch moves are free"
        );
        assert_eq!(check(v("0.2.1"), v("0.3.5")), Ok(()));
        assert_eq!(check(v("1.9.0"), v("2.0.3")), Ok(()));
        assert!(matches!(
            check(v("0.2.1"), v("0.4.0")),
            Err(Refusal::SkipsMinor { .. })
        ));
        assert!(matches!(
            check(v("0.3.0"), v("0.2.9")),
            Err(Refusal::Downgrade { .. })
        ));
        assert!(matches!(
            check(v("2.0.0"), v("1.9.0")),
            Err(Refusal::Downgrade { .. })
        ));
        assert!(matches!(
            check(v("1.2.0"), v("2.1.0")),
            Err(Refusal::MajorChange { .. })
        ));
        assert!(matches!(
            check(v("1.2.0"), v("3.0.0")),
            Err(Refusal::MajorChange { .. })
        ));
    }

    #[test]
    fn refusal_keeps_the_template_and_says_how_to_force() {
        let decision = decide("kv:v0.4.0", Some("kv:v0.2.0"), ["kv:v0.2.0"], false);
        assert_eq!(decision.image, "kv:v0.2.0");
        let message = decision.refused.unwrap().to_string();
        assert!(message.contains("0.4.0 is refused"), "{message}");
        assert!(message.contains("next: 0.3"), "{message}");
        assert!(message.contains("spec.upgrade.force"), "{message}");

        let forced = decide("kv:v0.4.0", Some("kv:v0.2.0"), ["kv:v0.2.0"], true);
        assert_eq!((forced.image.as_str(), forced.refused), ("kv:v0.4.0", None));
    }

    #[test]
    fn every_running_version_is_checked_during_a_roll_out() {
        // Halfway from 0.2 to 0.3, a further step to 0.4 would put 0.2 beside 0.4.
        let decision = decide(
            "kv:v0.4.0",
            Some("kv:v0.3.0"),
            ["kv:v0.2.0", "kv:v0.3.0"],
            false,
        );
        assert_eq!(decision.image, "kv:v0.3.0");
        assert!(matches!(
            decision.refused,
            Some(Refusal::SkipsMinor { from, .. }) if from == v("0.2.0")
        ));
    }

    #[test]
    fn a_new_cluster_and_unversioned_tags_are_not_judged() {
        assert_eq!(decide("kv:v9.0.0", None, [], false).refused, None);
        assert_eq!(
            decide("kv:latest", Some("kv:v0.2.0"), ["kv:v0.2.0"], false).image,
            "kv:latest"
        );
        assert_eq!(
            decide("kv:v0.1.0", Some("kv:latest"), ["kv:latest"], false).image,
            "kv:v0.1.0"
        );
    }
}
