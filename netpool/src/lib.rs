//! Pools of pre-created network namespaces.
//!
//! Each slot is a network namespace with `lo` up and an `eth0` (the inner end of a veth pair
//! whose host end sits on a pool bridge) carrying an address, a MAC and a default route; VM
//! slots add a TAP device wired to `eth0`. The pool itself arrives with the netpool issue; this
//! crate is its place in the workspace.
