//! Synthetic datasets with ground truth. STUB.
