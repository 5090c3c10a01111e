//! An admitted request's hold on its budgets: a concurrency slot and a
//! token reservation in every budget it was admitted against.
//!
//! It is released exactly once, on every path: [`Admission::settle`]
//! charges the real usage; dropping it unsettled (the client left before
//! the answer, the future was cancelled, a layer panicked, the connection
//! was cut at shutdown) charges what [`Admission::charge_on_drop`] says.
//! Nothing depends on a call that a dropped future could skip.

use std::sync::Arc;

use super::Check;
use super::store::QuotaStore;

/// Which store holds the admission.
#[derive(Debug)]
pub(super) enum Via {
    Local,
    /// Redis, under this lease id.
    Shared(String),
}

/// What a release needs.
#[derive(Debug)]
pub(super) struct Ticket {
    pub store: Arc<QuotaStore>,
    pub checks: Arc<[Check]>,
    pub via: Via,
    pub reserved: u64,
}

/// The RAII hold; see the module docs.
#[derive(Debug)]
#[must_use = "dropping an admission releases it at once"]
pub struct Admission {
    ticket: Option<Ticket>,
    charge_on_drop: u64,
}

impl Admission {
    pub(super) fn new(ticket: Ticket) -> Self {
        Self {
            ticket: Some(ticket),
            charge_on_drop: 0,
        }
    }

    /// What to charge if this is dropped unsettled (the prompt, once the
    /// request has gone to the model).
    pub fn charge_on_drop(&mut self, tokens: u64) {
        self.charge_on_drop = tokens;
    }

    /// Charges `tokens` in place of the reservation and frees the slot.
    pub fn settle(mut self, tokens: u64) {
        if let Some(ticket) = self.ticket.take() {
            let store = ticket.store.clone();
            store.release(ticket, tokens);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let store = ticket.store.clone();
            store.release(ticket, self.charge_on_drop);
        }
    }
}
