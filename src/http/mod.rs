//! HTTP (being written).
