//! The process-wide budget for message data in memory.
//!
//! Every byte of message content ingress holds is reserved here first: the read buffer of a
//! session receiving content, decoded content not yet stored, chunks on their way to the body
//! stream until JetStream acknowledged them, and the entries of a small message while they are
//! published. A session that cannot reserve more stops reading (the client waits: TCP
//! backpressure) after storing what it holds; while little is left, new transactions are
//! refused with `452 4.3.1`. Memory for message data therefore never exceeds the budget,
//! whatever clients send.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The unit of reservation.
const UNIT: usize = 1024;

/// The budget.
#[derive(Debug, Clone)]
pub struct MessageMemory {
    units: Arc<Semaphore>,
    total: usize,
}

/// Bytes reserved from the budget, returned when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl MessageMemory {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> MessageMemory {
        let total = (bytes / UNIT).max(1);
        MessageMemory {
            units: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// True while less than an eighth of the budget is free: no new transaction starts.
    pub fn low(&self) -> bool {
        self.units.available_permits() < self.total / 8
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }

    /// Grows `reservation` to at least `bytes` if the budget has room now.
    pub fn try_grow(&self, reservation: &mut Reservation, bytes: usize) -> bool {
        let Some(missing) = self.missing(reservation, bytes) else {
            return true;
        };
        match self.units.clone().try_acquire_many_owned(missing) {
            Ok(permit) => {
                reservation.merge(permit);
                true
            }
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => false,
        }
    }

    /// Grows `reservation` to at least `bytes`, waiting for room (at most the whole budget).
    pub async fn grow(&self, reservation: &mut Reservation, bytes: usize) {
        let Some(missing) = self.missing(reservation, bytes) else {
            return;
        };
        if let Ok(permit) = self.units.clone().acquire_many_owned(missing).await {
            reservation.merge(permit);
        }
    }

    /// Units `reservation` lacks to hold `bytes` (capped at the budget), `None` when none.
    fn missing(&self, reservation: &Reservation, bytes: usize) -> Option<u32> {
        let wanted = bytes.div_ceil(UNIT).min(self.total);
        let missing = wanted.saturating_sub(reservation.units());
        (missing > 0).then(|| u32::try_from(missing).unwrap_or(u32::MAX))
    }
}

impl Reservation {
    fn units(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.units() * UNIT
    }

    fn merge(&mut self, permit: OwnedSemaphorePermit) {
        match self.permit.as_mut() {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
    }

    /// Splits off a reservation for `bytes` (or all it holds, if less).
    pub fn split(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let units = bytes.div_ceil(UNIT).min(self.units());
        match self.permit.as_mut() {
            Some(held) if units == held.num_permits() => self.permit.take(),
            Some(held) if units > 0 => held.split(units),
            _ => None,
        }
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT);
        if self.units() > keep {
            drop(self.split((self.units() - keep) * UNIT));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_come_from_the_budget_and_go_back() {
        let memory = MessageMemory::new(64 * UNIT);
        let mut a = Reservation::default();
        assert!(memory.try_grow(&mut a, 40 * UNIT));
        assert_eq!(a.bytes(), 40 * UNIT);
        assert!(!memory.low());
        let mut b = Reservation::default();
        assert!(!memory.try_grow(&mut b, 30 * UNIT), "over the budget");
        assert!(memory.try_grow(&mut b, 20 * UNIT));
        assert!(memory.low(), "4 of 64 units free");
        let chunk = a.split(10 * UNIT).unwrap();
        assert_eq!((a.bytes(), chunk.num_permits()), (30 * UNIT, 10));
        drop(chunk);
        a.shrink_to(UNIT + 1);
        assert_eq!(a.bytes(), 2 * UNIT);
        drop(b);
        assert_eq!(memory.available(), 62 * UNIT);
        // A request larger than the budget is capped at the budget instead of waiting forever.
        let mut c = Reservation::default();
        drop(a);
        memory.grow(&mut c, 1000 * UNIT).await;
        assert_eq!(c.bytes(), 64 * UNIT);
    }
}
