//! proactor_server (being written).
