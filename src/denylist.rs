//! Denylist (being written).
