//! Calls as they live: the call engine that answers and dials them, bridges them to their
//! agent and ends them the right way. The records they leave are in [`crate::model`].

pub mod engine;
pub mod leg;
pub mod rejection;

use crate::model;

/// What the HTTP API may ask of live calls. The call engine implements it; the API holds
/// it as `Arc<dyn CallControl>` so neither knows the other's insides.
pub trait CallControl: Send + Sync + 'static {
    /// Ends a live (dialled) call with `manual_stopped`, sending BYE or a final response.
    /// Returns false when no live call has this id; the API then settles the record itself.
    fn stop(&self, call_id: &str) -> bool;

    /// Dials an outbound call through `number`'s trunk. The record is already stored; the
    /// engine settles it. Returns false when nothing can dial (the API then fails the call).
    fn dial(&self, _call: model::Call, _number: model::number::PhoneNumber) -> bool {
        false
    }
}

/// A `CallControl` for when no call is live anywhere (tests, and the API before the engine
/// starts).
pub struct NoLiveCalls;

impl CallControl for NoLiveCalls {
    fn stop(&self, _call_id: &str) -> bool {
        false
    }
}
