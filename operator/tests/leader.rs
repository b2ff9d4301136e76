//! Leader election: never two leaders. A leader whose Lease renewals fail (401, 403, no answer)
//! stops leading within the renew deadline, before another replica can take the Lease.
#![allow(clippy::unwrap_used)]

#[path = "support/fake_api.rs"]
mod fake_api;

use std::time::Duration;

use fake_api::{Failure, FakeApi};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use postern_operator::leader::{Elector, Step, Timing, elect};
use tokio::sync::watch;
use tokio::time::Instant;

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/postern-system/leases/postern-operator";

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(200),
    }
}

fn start(client: Client, identity: &str) -> watch::Receiver<bool> {
    let api: Api<Lease> = Api::namespaced(client, "postern-system");
    elect(api, "postern-operator".into(), identity.into(), timing())
}

/// Waits until `leader` reads `value`, at most `limit`; returns when it did.
async fn until(leader: &mut watch::Receiver<bool>, value: bool, limit: Duration) -> Instant {
    tokio::time::timeout(limit, leader.wait_for(|v| *v == value))
        .await
        .unwrap_or_else(|_| panic!("not {value} within {limit:?}"))
        .unwrap();
    Instant::now()
}

async fn renewals_fail(failure: Failure) {
    let (first_client, first_api) = FakeApi::start();
    let (second_client, _) = first_api.second_client();
    let mut first = start(first_client, "operator-a");
    until(&mut first, true, Duration::from_secs(3)).await;
    let mut second = start(second_client, "operator-b");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!*second.borrow(), "the second replica took a held Lease");

    // The first replica's renewals fail from now on.
    let failed_at = Instant::now();
    first_api.fail(LEASE, failure);
    let stopped = until(&mut first, false, Duration::from_secs(3)).await;
    let started = until(&mut second, true, Duration::from_secs(5)).await;
    assert!(
        stopped < started,
        "{failure:?}: the old leader stopped {:?} after the new one started",
        stopped - started
    );
    assert!(
        stopped - failed_at <= timing().renew_deadline + timing().retry_period,
        "{failure:?}: leading went on for {:?}",
        stopped - failed_at
    );
    // Once stopped it stays stopped (the process exits), even when the API answers again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!*first.borrow());
    let lease = first_api.get(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "operator-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_token_was_revoked_stops_before_another_starts() {
    renewals_fail(Failure::Unauthorized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_permission_stops_before_another_starts() {
    renewals_fail(Failure::Forbidden).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_server_does_not_answer_stops_before_another_starts() {
    renewals_fail(Failure::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_for_a_free_lease_make_one_leader() {
    let (first_client, first_api) = FakeApi::start();
    let (second_client, _) = first_api.second_client();
    let mut first = start(first_client, "operator-a");
    let mut second = start(second_client, "operator-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leaders = [*first.borrow_and_update(), *second.borrow_and_update()];
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
}

fn spec(holder: &str, renewed: &str) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        renew_time: Some(MicroTime(renewed.parse().unwrap())),
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    }
}

#[test]
fn a_candidate_times_a_lease_by_its_own_clock() {
    let mut elector = Elector::new("b", Timing::default());
    let start = Instant::now();
    let wall: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
    // The record says it was renewed long ago (the holder's clock is behind): still held until
    // this replica has seen it unchanged for the lease duration.
    let held = spec("a", "2020-01-01T00:00:00Z");
    assert_eq!(elector.decide(Some(&held), start, wall), Step::Follow);
    let later = start + Duration::from_secs(14);
    assert_eq!(elector.decide(Some(&held), later, wall), Step::Follow);
    let expired = start + Duration::from_secs(15);
    let Step::Write(taken) = elector.decide(Some(&held), expired, wall) else {
        panic!("an expired Lease is taken");
    };
    assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    assert_eq!(taken.lease_transitions, Some(4));
    // A renewal seen in between restarts the wait.
    let mut elector = Elector::new("b", Timing::default());
    elector.decide(Some(&held), start, wall);
    let renewed = spec("a", "2020-01-01T00:00:10Z");
    elector.decide(Some(&renewed), later, wall);
    assert_eq!(elector.decide(Some(&renewed), expired, wall), Step::Follow);
}

#[test]
fn a_leader_leads_only_within_its_renew_deadline() {
    let timing = Timing::default();
    let mut elector = Elector::new("a", timing);
    let start = Instant::now();
    let wall: Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
    let Step::Write(created) = elector.decide(None, start, wall) else {
        panic!("a missing Lease is created");
    };
    elector.wrote(created, start);
    assert!(elector.is_leader(start + Duration::from_secs(9)));
    assert!(!elector.is_leader(start + timing.renew_deadline));
    assert!(timing.validate().is_ok());
    let equal = Timing {
        renew_deadline: timing.lease_duration,
        ..timing
    };
    assert!(equal.validate().is_err());
}
