//! `decode` of SENDFILE: its fields, its unused fields, its ranges.

mod common;

use common::{sqe, MAX_FILES_};
use fastio_uapi::*;

/// SENDFILE: destination `slot`, source `aux`, offset and nonzero length; `addr` and
/// `op_flags` are unused (must be 0); the range stays within `i64`; the length is
/// clamped like the other transfers.
#[test]
fn sendfile_fields_are_checked() {
    let sf = Sqe {
        slot: 1,
        aux: 2,
        off: 100,
        len: 4096,
        ..sqe(OP_SENDFILE)
    };
    let ok = |s: &Sqe| decode(s, MAX_FILES_);
    assert_eq!(
        ok(&sf),
        Ok(Op::Sendfile {
            slot: 1,
            src: 2,
            off: 100,
            len: 4096
        })
    );
    assert_eq!(ok(&sf).unwrap().direction(), Direction::Out);
    assert_eq!(ok(&sf).unwrap().slot(), Some(1));
    // OFF_CURRENT: the file position, whatever the length.
    let cur = Sqe {
        off: OFF_CURRENT,
        len: u32::MAX,
        ..sf
    };
    assert_eq!(
        ok(&cur),
        Ok(Op::Sendfile {
            slot: 1,
            src: 2,
            off: OFF_CURRENT,
            len: MAX_RW_LEN
        })
    );
    // The last offset whose range still ends at i64::MAX.
    let edge = Sqe {
        off: i64::MAX as u64 - 4096,
        ..sf
    };
    assert!(ok(&edge).is_ok());
    let inval = Err(SqeError::Invalid);
    for bad in [
        Sqe { len: 0, ..sf },
        Sqe { addr: 1, ..sf },
        Sqe { op_flags: 1, ..sf },
        Sqe {
            off: i64::MAX as u64 - 4095,
            ..sf
        },
        Sqe {
            off: i64::MAX as u64 + 1,
            ..sf
        },
        Sqe {
            off: OFF_CURRENT - 1,
            ..sf
        },
        Sqe {
            len: u32::MAX,
            ..edge
        },
        Sqe { resv0: 1, ..sf },
        Sqe { buf_group: 1, ..sf },
    ] {
        assert_eq!(ok(&bad), inval, "{bad:?}");
    }
    let badf = Err(SqeError::BadSlot);
    assert_eq!(ok(&Sqe { slot: 16, ..sf }), badf);
    assert_eq!(ok(&Sqe { aux: 16, ..sf }), badf);
    assert_eq!(
        ok(&Sqe {
            aux: u32::MAX,
            ..sf
        }),
        badf
    );
}
