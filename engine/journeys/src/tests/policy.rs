//! The delivery policy.
