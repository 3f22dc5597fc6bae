//! Leader election through a `coordination.k8s.io` Lease, so that only one of several operator
//! replicas reconciles at a time.
//!
//! The holder renews the Lease well within its duration; another replica takes it over only
//! once it has expired. Every write carries the Lease's resourceVersion, so two replicas racing
//! for an expired Lease cannot both win. A holder that fails to renew in time stops leading.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

use crate::error::Error;

/// One replica's claim on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// How often the holder renews, and a candidate retries.
    pub fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the Lease; `true` while this replica holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec_for_new_term(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !lease_expired(&spec, now) {
            return Ok(false);
        }
        lease.spec = Some(if ours {
            LeaseSpec {
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                ..spec
            }
        } else {
            self.spec_for_new_term(now, spec.lease_transitions.unwrap_or(0) + 1)
        });
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn spec_for_new_term(&self, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// A Lease nobody renewed within its duration, or that nobody holds.
pub fn lease_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(holder), Some(renewed), Some(seconds)) = (
        spec.holder_identity.as_deref(),
        spec.renew_time.as_ref(),
        spec.lease_duration_seconds,
    ) else {
        return true;
    };
    holder.is_empty() || now.as_second() >= renewed.0.as_second() + i64::from(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_expires_only_after_its_duration_without_renewal() {
        let at = |s| Timestamp::from_second(s).unwrap();
        assert!(!lease_expired(&spec("a", 100, 15), at(114)));
        assert!(lease_expired(&spec("a", 100, 15), at(115)));
        assert!(lease_expired(&spec("", 100, 15), at(101)));
        assert!(lease_expired(&LeaseSpec::default(), at(0)));
    }
}
