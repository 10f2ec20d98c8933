//! Durable state (arrives with the store issue).
