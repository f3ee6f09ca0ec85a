//! Publish (being written).
