//! Leader election on a `coordination.k8s.io` Lease, the way client-go's leader election does
//! it: a candidate takes the Lease once its holder has not renewed it for `lease_duration` (as
//! measured by the candidate's own clock from when it saw the record change), writes are
//! guarded by the Lease's resourceVersion, and a leader that has not renewed within
//! `renew_deadline` (shorter than `lease_duration`) stops leading before anyone else can start.
//!
//! [`Elector`] decides (no I/O, time passed in); [`elect`] runs it against the API server.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a Lease holds, how long a leader tries to renew it, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A Lease not renewed for this long may be taken over.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops leading. Shorter than
    /// `lease_duration`, so that it stops before another replica may start.
    pub renew_deadline: Duration,
    /// Pause between attempts to take or renew the Lease.
    pub retry_period: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks that a leader gives up before its Lease can be taken.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err("the renew deadline must be shorter than the lease duration".into());
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err("the retry period must be above zero and below the renew deadline".into());
        }
        Ok(())
    }
}

/// What a candidate does after reading the Lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Write this spec (create the Lease when there was none, else replace it).
    Write(LeaseSpec),
    /// Someone else holds the Lease: try again later.
    Follow,
}

/// The election state of one replica.
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    timing: Timing,
    /// The Lease spec last seen, and when (by this replica's clock) it was first seen.
    observed: Option<(LeaseSpec, Instant)>,
    /// When this replica last wrote the Lease as its holder.
    renewed: Option<Instant>,
}

impl Elector {
    pub fn new(identity: impl Into<String>, timing: Timing) -> Elector {
        Elector {
            identity: identity.into(),
            timing,
            observed: None,
            renewed: None,
        }
    }

    /// Whether this replica leads at `now`: it renewed within the renew deadline.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.duration_since(at) < self.timing.renew_deadline)
    }

    /// What to do with the Lease as read at `now` (`wall` is the time written into it).
    pub fn decide(&mut self, live: Option<&LeaseSpec>, now: Instant, wall: Timestamp) -> Step {
        let seconds = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(live) = live else {
            return Step::Write(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(wall)),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            });
        };
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != live) {
            self.observed = Some((live.clone(), now));
        }
        let holder = live.holder_identity.as_deref().unwrap_or("");
        let ours = holder == self.identity;
        let held_for = live
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timing.lease_duration, Duration::from_secs);
        let seen_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        if !ours && !holder.is_empty() && now.duration_since(seen_at) < held_for {
            // Someone else holds it: if this replica led, it leads no more.
            self.renewed = None;
            return Step::Follow;
        }
        Step::Write(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if ours {
                live.acquire_time.clone()
            } else {
                Some(MicroTime(wall))
            },
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(live.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 }),
            ..live.clone()
        })
    }

    /// The write of `spec`, started at `started`, succeeded.
    pub fn wrote(&mut self, spec: LeaseSpec, started: Instant) {
        self.observed = Some((spec, started));
        self.renewed = Some(started);
    }
}

/// Runs the election for `identity` on Lease `name`. The receiver turns true when this
/// replica leads, and false (for good) once it stopped leading; the task then ends.
pub fn elect(
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
) -> watch::Receiver<bool> {
    let (leading, receiver) = watch::channel(false);
    tokio::spawn(async move {
        let mut elector = Elector::new(identity, timing);
        loop {
            let started = Instant::now();
            // An attempt may take until the renew deadline runs out (or a retry period while
            // following), never longer.
            let budget = match elector.renewed {
                Some(at) => timing
                    .renew_deadline
                    .saturating_sub(started.duration_since(at)),
                None => timing.retry_period,
            };
            let attempt = tokio::time::timeout(budget, attempt(&api, &name, &mut elector, started));
            match attempt.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%err, lease = %name, "leader election"),
                Err(_) => {
                    tracing::warn!(lease = %name, "leader election: the API server did not answer in time")
                }
            }
            let now = Instant::now();
            let leads = elector.is_leader(now);
            if *leading.borrow() && !leads {
                tracing::error!(lease = %name, "could not renew the Lease within the renew deadline: no longer leading");
                let _ = leading.send(false);
                return;
            }
            if leads && !*leading.borrow() {
                let _ = leading.send(true);
            }
            if leading.is_closed() {
                return;
            }
            tokio::time::sleep_until(started + timing.retry_period).await;
        }
    });
    receiver
}

async fn attempt(
    api: &Api<Lease>,
    name: &str,
    elector: &mut Elector,
    started: Instant,
) -> Result<(), kube::Error> {
    let live = api.get_opt(name).await?;
    let spec = live.as_ref().and_then(|l| l.spec.as_ref());
    let Step::Write(next) = elector.decide(spec, started, Timestamp::now()) else {
        return Ok(());
    };
    // The resourceVersion read is the precondition: of two candidates, one write wins.
    let metadata = match &live {
        Some(live) => ObjectMeta {
            managed_fields: None,
            ..live.metadata.clone()
        },
        None => ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
    };
    let lease = Lease {
        metadata,
        spec: Some(next.clone()),
    };
    match live {
        None => api.create(&PostParams::default(), &lease).await?,
        Some(_) => api.replace(name, &PostParams::default(), &lease).await?,
    };
    elector.wrote(next, started);
    Ok(())
}
