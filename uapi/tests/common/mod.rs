//! What the decode tests share.

use fastio_uapi::Sqe;

/// The slot count the decode tests validate against.
pub const MAX_FILES_: u32 = 16;

/// An SQE of `opcode` with every other field zero.
pub fn sqe(opcode: u8) -> Sqe {
    Sqe {
        opcode,
        ..Sqe::ZERO
    }
}
