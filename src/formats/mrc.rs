//! MRC stacks and volumes. STUB.
