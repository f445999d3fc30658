//! CryoSPARC .cs files. STUB.
