//! Sales channels on the node: their definitions in the store's records.

pub mod definitions;
