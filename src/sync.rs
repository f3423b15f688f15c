//! Locking the few structures shared between tasks: the live calls and dialogs, the
//! transaction tables, the RTP port pool, pending webhook events, connection counts.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering from poison. Every critical section behind these locks makes
/// single inserts and removes or moves a few integers, so a panic elsewhere cannot leave
/// the data torn; and one task that panicked must not take every other call down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
