//! RELION STAR files. STUB.
