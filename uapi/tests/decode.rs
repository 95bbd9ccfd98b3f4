//! `decode`: the one request validator the kernel module and the in-process workers share.

mod common;

use common::{sqe, MAX_FILES_};
use fastio_uapi::*;

#[test]
fn valid_requests_decode() {
    assert_eq!(decode(&sqe(OP_NOP), MAX_FILES_), Ok(Op::Nop));
    let s = Sqe {
        slot: 3,
        aux: 4,
        op_flags: ACCEPT_NONBLOCK,
        ..sqe(OP_ACCEPT)
    };
    assert_eq!(
        decode(&s, MAX_FILES_),
        Ok(Op::Accept {
            slot: 3,
            dest: 4,
            flags: ACCEPT_NONBLOCK
        })
    );
    let s = Sqe {
        slot: 1,
        addr: 0x1000,
        len: 10,
        op_flags: MSG_WAITALL,
        ..sqe(OP_RECV)
    };
    assert_eq!(
        decode(&s, MAX_FILES_),
        Ok(Op::Recv {
            slot: 1,
            addr: 0x1000,
            len: 10,
            flags: MSG_WAITALL
        })
    );
    let s = Sqe {
        slot: 2,
        addr: 0x2000,
        len: 3,
        off: OFF_CURRENT,
        ..sqe(OP_WRITEV)
    };
    assert_eq!(
        decode(&s, MAX_FILES_),
        Ok(Op::Writev {
            slot: 2,
            iov: 0x2000,
            count: 3,
            off: OFF_CURRENT
        })
    );
    assert_eq!(
        decode(
            &Sqe {
                slot: 5,
                ..sqe(OP_CLOSE)
            },
            MAX_FILES_
        ),
        Ok(Op::Close { slot: 5 })
    );
}

#[test]
fn lengths_above_max_rw_len_are_clamped() {
    for op in [OP_RECV, OP_SEND, OP_READ, OP_WRITE] {
        let s = Sqe {
            len: u32::MAX,
            ..sqe(op)
        };
        let len = match decode(&s, MAX_FILES_).unwrap() {
            Op::Recv { len, .. } | Op::Send { len, .. } | Op::Read { len, .. } => len,
            Op::Write { len, .. } => len,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(len, MAX_RW_LEN);
    }
}

#[test]
fn garbage_is_refused_with_the_right_errno() {
    let bad = [
        (sqe(OP_LAST), SqeError::Invalid),
        (sqe(255), SqeError::Invalid),
        (
            Sqe {
                flags: 1,
                ..sqe(OP_NOP)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                buf_group: 1,
                ..sqe(OP_NOP)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                resv0: 1,
                ..sqe(OP_RECV)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                resv: [0, 1],
                ..sqe(OP_SEND)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                len: 1,
                ..sqe(OP_NOP)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                slot: MAX_FILES_,
                ..sqe(OP_RECV)
            },
            SqeError::BadSlot,
        ),
        (
            Sqe {
                slot: u32::MAX,
                ..sqe(OP_CLOSE)
            },
            SqeError::BadSlot,
        ),
        (
            Sqe {
                aux: MAX_FILES_,
                ..sqe(OP_ACCEPT)
            },
            SqeError::BadSlot,
        ),
        (
            Sqe {
                op_flags: 1,
                ..sqe(OP_ACCEPT)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                op_flags: MSG_MORE,
                ..sqe(OP_RECV)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                op_flags: MSG_PEEK,
                ..sqe(OP_SEND)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                off: 1,
                ..sqe(OP_SEND)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                op_flags: 8,
                ..sqe(OP_READ)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                aux: 1,
                ..sqe(OP_WRITE)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                len: 0,
                ..sqe(OP_WRITEV)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                len: MAX_IOVECS + 1,
                ..sqe(OP_WRITEV)
            },
            SqeError::Invalid,
        ),
        (
            Sqe {
                addr: 8,
                ..sqe(OP_CLOSE)
            },
            SqeError::Invalid,
        ),
    ];
    for (s, want) in bad {
        assert_eq!(decode(&s, MAX_FILES_), Err(want), "{s:?}");
    }
    assert_eq!(SqeError::Invalid.errno(), libc::EINVAL);
    assert_eq!(SqeError::BadSlot.errno(), libc::EBADF);
}

/// Every byte pattern decodes without panicking, and whatever it accepts respects the
/// bounds (a cheap deterministic fuzz over the whole 64-byte entry).
#[test]
fn random_entries_never_escape_bounds() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut accepted = 0;
    for _ in 0..200_000u32 {
        let mut raw = [0u8; 64];
        for chunk in raw.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes());
        }
        // Zero each field with probability 3/4 so that valid requests are reached too;
        // field boundaries: opcode, flags, buf_group, slot, off, addr, len, op_flags,
        // user_data, aux, resv0, resv.
        let bounds = [0, 1, 2, 4, 8, 16, 24, 28, 32, 40, 44, 48, 64];
        for w in bounds.windows(2).skip(1) {
            if next() % 4 != 0 {
                raw[w[0]..w[1]].fill(0);
            }
        }
        raw[0] %= OP_LAST + 2;
        // SAFETY: Sqe is plain-old-data of exactly 64 bytes; every bit pattern is valid.
        let s: Sqe = unsafe { std::mem::transmute(raw) };
        if let Ok(op) = decode(&s, MAX_FILES_) {
            accepted += 1;
            if let Some(slot) = op.slot() {
                assert!(slot < MAX_FILES_);
            }
            match op {
                Op::Accept { dest, .. } => assert!(dest < MAX_FILES_),
                Op::Recv { len, .. } | Op::Send { len, .. } => assert!(len <= MAX_RW_LEN),
                Op::Read { len, .. } | Op::Write { len, .. } => assert!(len <= MAX_RW_LEN),
                Op::Writev { count, .. } => assert!((1..=MAX_IOVECS).contains(&count)),
                Op::Nop | Op::Close { .. } | Op::AsyncCancel { .. } => {}
                Op::OpenAt { dest, mode, .. } => {
                    assert!(dest < MAX_FILES_ && mode <= MAX_MODE)
                }
                Op::Fsync { off, len, .. } => assert!(off + len as u64 <= i64::MAX as u64),
                Op::Fallocate { off, len, .. } => {
                    assert!(len > 0 && off.checked_add(len).unwrap() <= i64::MAX as u64)
                }
                Op::Shutdown { how, .. } => assert!(how <= SHUT_RDWR),
                Op::Connect { len, .. } => assert!((2..=MAX_SOCKADDR_LEN).contains(&len)),
                Op::RecvSelect { group, .. } => assert!((group as u32) < MAX_BUF_GROUPS),
                Op::AcceptMulti { first, count, .. } => {
                    assert!(count >= 1 && first.checked_add(count).unwrap() <= MAX_FILES_)
                }
                Op::Sendfile { src, off, len, .. } => {
                    assert!(src < MAX_FILES_ && (1..=MAX_RW_LEN).contains(&len));
                    assert!(off == OFF_CURRENT || off + len as u64 <= i64::MAX as u64);
                }
            }
        }
    }
    assert!(
        accepted > 100,
        "the fuzz never reached valid requests ({accepted})"
    );
}

/// ASYNC_CANCEL takes its target from `addr`, uses no slot (a slot of any value is
/// `-EINVAL`, never `-EBADF`), and every other field must be zero.
#[test]
fn async_cancel_decodes_its_target_and_refuses_other_fields() {
    let cancel = Sqe {
        addr: u64::MAX - 3,
        user_data: 9,
        ..sqe(OP_ASYNC_CANCEL)
    };
    let op = decode(&cancel, MAX_FILES_).unwrap();
    assert_eq!(
        op,
        Op::AsyncCancel {
            target: u64::MAX - 3
        }
    );
    assert_eq!(op.slot(), None);
    assert_eq!(op.direction(), Direction::None);
    // Target 0 is a user_data like any other.
    assert_eq!(
        decode(&sqe(OP_ASYNC_CANCEL), MAX_FILES_),
        Ok(Op::AsyncCancel { target: 0 })
    );
    let bad = [
        Sqe { slot: 1, ..cancel },
        Sqe {
            slot: MAX_FILES_ + 1,
            ..cancel
        },
        Sqe { off: 1, ..cancel },
        Sqe { len: 1, ..cancel },
        Sqe {
            op_flags: 1,
            ..cancel
        },
        Sqe { aux: 1, ..cancel },
        Sqe { flags: 1, ..cancel },
        Sqe {
            resv: [1, 0],
            ..cancel
        },
    ];
    for s in bad {
        assert_eq!(decode(&s, MAX_FILES_), Err(SqeError::Invalid), "{s:?}");
    }
}

/// The ops of issue 13 (OPENAT, FSYNC, FALLOCATE, SHUTDOWN, CONNECT): valid forms.
#[test]
fn new_ops_decode() {
    let open = Sqe {
        slot: OPENAT_CWD,
        addr: 0x1000,
        op_flags: O_CREAT | 0o2,
        off: 0o644,
        aux: 5,
        ..sqe(OP_OPENAT)
    };
    assert_eq!(
        decode(&open, MAX_FILES_),
        Ok(Op::OpenAt {
            dir: None,
            path: 0x1000,
            flags: O_CREAT | 0o2,
            mode: 0o644,
            dest: 5
        })
    );
    let open_in = Sqe { slot: 3, ..open };
    assert!(matches!(
        decode(&open_in, MAX_FILES_),
        Ok(Op::OpenAt { dir: Some(3), .. })
    ));
    let fsync = Sqe {
        slot: 1,
        op_flags: FSYNC_DATASYNC,
        off: 4096,
        len: 8192,
        ..sqe(OP_FSYNC)
    };
    assert_eq!(
        decode(&fsync, MAX_FILES_),
        Ok(Op::Fsync {
            slot: 1,
            flags: FSYNC_DATASYNC,
            off: 4096,
            len: 8192
        })
    );
    let trim = Sqe {
        slot: 2,
        op_flags: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        off: 0,
        addr: 1 << 40,
        ..sqe(OP_FALLOCATE)
    };
    assert_eq!(
        decode(&trim, MAX_FILES_),
        Ok(Op::Fallocate {
            slot: 2,
            mode: 3,
            off: 0,
            len: 1 << 40
        })
    );
    let shut = Sqe {
        slot: 2,
        op_flags: SHUT_WR,
        ..sqe(OP_SHUTDOWN)
    };
    assert_eq!(
        decode(&shut, MAX_FILES_),
        Ok(Op::Shutdown { slot: 2, how: 1 })
    );
    let conn = Sqe {
        slot: 2,
        addr: 0x3000,
        len: 16,
        ..sqe(OP_CONNECT)
    };
    assert_eq!(
        decode(&conn, MAX_FILES_),
        Ok(Op::Connect {
            slot: 2,
            addr: 0x3000,
            len: 16
        })
    );
    assert_eq!(
        Op::Connect {
            slot: 2,
            addr: 0,
            len: 16
        }
        .direction(),
        Direction::Out
    );
    assert_eq!(shut.opcode, OP_SHUTDOWN);
}

/// Every unused field, bad flag, bad slot and overflowing range of the new ops.
#[test]
fn new_ops_refuse_bad_fields() {
    let inval = Err(SqeError::Invalid);
    let badf = Err(SqeError::BadSlot);
    let open = Sqe {
        slot: OPENAT_CWD,
        addr: 0x1000,
        aux: 1,
        ..sqe(OP_OPENAT)
    };
    assert!(decode(&open, MAX_FILES_).is_ok());
    assert_eq!(decode(&Sqe { len: 1, ..open }, MAX_FILES_), inval);
    assert_eq!(
        decode(
            &Sqe {
                op_flags: O_PATH,
                ..open
            },
            MAX_FILES_
        ),
        inval
    );
    assert_eq!(
        decode(
            &Sqe {
                op_flags: 1 << 30,
                ..open
            },
            MAX_FILES_
        ),
        inval
    );
    // A mode without O_CREAT/O_TMPFILE, or above 0o7777.
    assert_eq!(decode(&Sqe { off: 0o600, ..open }, MAX_FILES_), inval);
    let creat = Sqe {
        op_flags: O_CREAT,
        ..open
    };
    assert_eq!(
        decode(
            &Sqe {
                off: 0o10000,
                ..creat
            },
            MAX_FILES_
        ),
        inval
    );
    assert_eq!(
        decode(
            &Sqe {
                aux: MAX_FILES_,
                ..open
            },
            MAX_FILES_
        ),
        badf
    );
    assert_eq!(
        decode(
            &Sqe {
                slot: MAX_FILES_,
                ..open
            },
            MAX_FILES_
        ),
        badf
    );
    assert_eq!(decode(&Sqe { resv0: 1, ..open }, MAX_FILES_), inval);

    let fsync = Sqe {
        slot: 1,
        ..sqe(OP_FSYNC)
    };
    assert!(decode(&fsync, MAX_FILES_).is_ok());
    assert_eq!(decode(&Sqe { addr: 1, ..fsync }, MAX_FILES_), inval);
    assert_eq!(decode(&Sqe { aux: 1, ..fsync }, MAX_FILES_), inval);
    assert_eq!(
        decode(
            &Sqe {
                op_flags: 2,
                ..fsync
            },
            MAX_FILES_
        ),
        inval
    );
    assert_eq!(
        decode(
            &Sqe {
                off: 1 << 63,
                ..fsync
            },
            MAX_FILES_
        ),
        inval
    );
    let end = Sqe {
        off: i64::MAX as u64,
        len: 1,
        ..fsync
    };
    assert_eq!(decode(&end, MAX_FILES_), inval);
    assert_eq!(
        decode(
            &Sqe {
                slot: MAX_FILES_,
                ..fsync
            },
            MAX_FILES_
        ),
        badf
    );

    let fall = Sqe {
        slot: 1,
        addr: 4096,
        ..sqe(OP_FALLOCATE)
    };
    assert!(decode(&fall, MAX_FILES_).is_ok());
    assert_eq!(decode(&Sqe { addr: 0, ..fall }, MAX_FILES_), inval);
    assert_eq!(decode(&Sqe { len: 1, ..fall }, MAX_FILES_), inval);
    assert_eq!(decode(&Sqe { aux: 1, ..fall }, MAX_FILES_), inval);
    assert_eq!(
        decode(
            &Sqe {
                op_flags: 0x04,
                ..fall
            },
            MAX_FILES_
        ),
        inval
    );
    assert_eq!(
        decode(
            &Sqe {
                op_flags: 0x100,
                ..fall
            },
            MAX_FILES_
        ),
        inval
    );
    for (off, len) in [
        (u64::MAX, 1),
        (1, u64::MAX),
        (i64::MAX as u64, 1),
        (1 << 63, 4096),
        (0, 1 << 63),
    ] {
        assert_eq!(
            decode(
                &Sqe {
                    off,
                    addr: len,
                    ..fall
                },
                MAX_FILES_
            ),
            inval,
            "{off} + {len}"
        );
    }
    let max = Sqe {
        off: i64::MAX as u64 - 1,
        addr: 1,
        ..fall
    };
    assert!(decode(&max, MAX_FILES_).is_ok());

    let shut = Sqe {
        slot: 1,
        ..sqe(OP_SHUTDOWN)
    };
    assert!(decode(&shut, MAX_FILES_).is_ok());
    assert_eq!(
        decode(
            &Sqe {
                op_flags: 3,
                ..shut
            },
            MAX_FILES_
        ),
        inval
    );
    for bad in [
        Sqe { addr: 1, ..shut },
        Sqe { len: 1, ..shut },
        Sqe { off: 1, ..shut },
        Sqe { aux: 1, ..shut },
    ] {
        assert_eq!(decode(&bad, MAX_FILES_), inval);
    }

    let conn = Sqe {
        slot: 1,
        addr: 0x1000,
        len: 16,
        ..sqe(OP_CONNECT)
    };
    assert!(decode(&conn, MAX_FILES_).is_ok());
    for bad in [
        Sqe { len: 0, ..conn },
        Sqe { len: 1, ..conn },
        Sqe { len: 129, ..conn },
        Sqe {
            len: u32::MAX,
            ..conn
        },
        Sqe { off: 1, ..conn },
        Sqe {
            op_flags: 1,
            ..conn
        },
        Sqe { aux: 1, ..conn },
    ] {
        assert_eq!(decode(&bad, MAX_FILES_), inval);
    }
    assert_eq!(decode(&sqe(OP_LAST), MAX_FILES_), inval);
}
