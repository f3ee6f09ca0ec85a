//! `redtail explain` (being written).
