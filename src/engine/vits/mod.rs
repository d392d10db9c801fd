//! The VITS model (owned by the engine lead).
