//! `decode` of provided-buffer and multishot requests, and `validate_buf_ring`.

use fastio_uapi::*;

const MAX_FILES_: u32 = 16;

fn recv_select(group: u16, multishot: bool) -> Sqe {
    Sqe {
        opcode: OP_RECV,
        flags: SQE_BUFFER_SELECT | if multishot { SQE_MULTISHOT } else { 0 },
        buf_group: group,
        slot: 3,
        ..Sqe::ZERO
    }
}

fn accept_multi(first: u32, count: u32) -> Sqe {
    Sqe {
        opcode: OP_ACCEPT,
        flags: SQE_MULTISHOT,
        slot: 1,
        aux: first,
        len: count,
        ..Sqe::ZERO
    }
}

#[test]
fn buffer_select_and_multishot_decode() {
    assert_eq!(
        decode(&recv_select(7, true), MAX_FILES_),
        Ok(Op::RecvSelect {
            slot: 3,
            group: 7,
            multishot: true
        })
    );
    assert_eq!(
        decode(&recv_select(0, false), MAX_FILES_),
        Ok(Op::RecvSelect {
            slot: 3,
            group: 0,
            multishot: false
        })
    );
    assert_eq!(
        decode(&accept_multi(8, 8), MAX_FILES_),
        Ok(Op::AcceptMulti {
            slot: 1,
            first: 8,
            count: 8,
            flags: 0
        })
    );
    let nb = Sqe {
        op_flags: ACCEPT_NONBLOCK,
        ..accept_multi(0, 1)
    };
    assert!(matches!(
        decode(&nb, MAX_FILES_),
        Ok(Op::AcceptMulti {
            flags: ACCEPT_NONBLOCK,
            ..
        })
    ));
}

#[test]
fn bad_flags_and_fields_are_refused() {
    let inval = Err(SqeError::Invalid);
    // Unknown flag bits, on any opcode.
    for bit in 2..8 {
        let s = Sqe {
            flags: 1 << bit,
            ..recv_select(0, false)
        };
        assert_eq!(decode(&s, MAX_FILES_), inval, "flag bit {bit}");
    }
    // BUFFER_SELECT or MULTISHOT on an opcode that takes neither.
    for op in [
        OP_NOP,
        OP_SEND,
        OP_READ,
        OP_WRITE,
        OP_CLOSE,
        OP_ASYNC_CANCEL,
        OP_LAST,
    ] {
        for flags in [SQE_BUFFER_SELECT, SQE_MULTISHOT, SQE_FLAGS] {
            let s = Sqe {
                opcode: op,
                flags,
                ..Sqe::ZERO
            };
            assert_eq!(decode(&s, MAX_FILES_), inval, "op {op} flags {flags}");
        }
    }
    // MULTISHOT RECV without BUFFER_SELECT; BUFFER_SELECT on ACCEPT.
    let s = Sqe {
        flags: SQE_MULTISHOT,
        ..recv_select(0, true)
    };
    assert_eq!(decode(&s, MAX_FILES_), inval);
    let s = Sqe {
        flags: SQE_MULTISHOT | SQE_BUFFER_SELECT,
        ..accept_multi(0, 1)
    };
    assert_eq!(decode(&s, MAX_FILES_), inval);
    // A group without BUFFER_SELECT, on any request.
    let s = Sqe {
        opcode: OP_RECV,
        buf_group: 1,
        ..Sqe::ZERO
    };
    assert_eq!(decode(&s, MAX_FILES_), inval);
    assert_eq!(
        decode(
            &Sqe {
                buf_group: 1,
                ..accept_multi(0, 1)
            },
            MAX_FILES_
        ),
        inval
    );
    // A group out of range.
    assert_eq!(
        decode(&recv_select(MAX_BUF_GROUPS as u16, true), MAX_FILES_),
        inval
    );
    // Fields a selected RECV does not use.
    let base = recv_select(1, true);
    for s in [
        Sqe { addr: 8, ..base },
        Sqe { len: 8, ..base },
        Sqe { off: 1, ..base },
        Sqe { aux: 1, ..base },
        Sqe {
            op_flags: MSG_WAITALL,
            ..base
        },
        Sqe { resv0: 1, ..base },
        Sqe {
            resv: [1, 0],
            ..base
        },
    ] {
        assert_eq!(decode(&s, MAX_FILES_), inval, "{s:?}");
    }
    // Multishot ACCEPT: a one-shot ACCEPT's fields, a range that must fit.
    let base = accept_multi(0, 4);
    for s in [
        Sqe { addr: 8, ..base },
        Sqe { off: 8, ..base },
        Sqe { len: 0, ..base },
        Sqe {
            op_flags: 1,
            ..base
        },
    ] {
        assert_eq!(decode(&s, MAX_FILES_), inval, "{s:?}");
    }
    let bad = Err(SqeError::BadSlot);
    assert_eq!(decode(&accept_multi(12, 5), MAX_FILES_), bad);
    assert_eq!(decode(&accept_multi(u32::MAX, 2), MAX_FILES_), bad);
    assert_eq!(decode(&accept_multi(1, u32::MAX), MAX_FILES_), bad);
    assert_eq!(
        decode(
            &Sqe {
                slot: MAX_FILES_,
                ..recv_select(0, true)
            },
            MAX_FILES_
        ),
        bad
    );
}

fn reg() -> BufRingReg {
    BufRingReg {
        ring_addr: 0x10000,
        bufs_addr: 0x20000,
        entries: 8,
        count: 8,
        buf_size: 4096,
        group: 3,
        resv: [0; 2],
    }
}

const USER_END: u64 = 0x7fff_ffff_f000;

#[test]
fn buf_rings_validate() {
    let r = validate_buf_ring(&reg(), USER_END).unwrap();
    assert_eq!(r.group, 3);
    assert_eq!(r.ids_addr, 0x10000 + 128);
    assert_eq!(r.buf_addr(0), Some(0x20000));
    assert_eq!(r.buf_addr(7), Some(0x20000 + 7 * 4096));
    assert_eq!(r.buf_addr(8), None);
    assert_eq!(r.buf_addr(u16::MAX), None);
    // Fewer buffers than entries is fine.
    assert!(validate_buf_ring(&BufRingReg { count: 1, ..reg() }, USER_END).is_ok());
    assert_eq!(buf_ring_size(8), 128 + 16);
}

#[test]
fn hostile_buf_rings_are_refused() {
    let bad = Err(BufRingError);
    let cases = [
        BufRingReg {
            entries: 0,
            ..reg()
        },
        BufRingReg {
            entries: 6,
            ..reg()
        },
        BufRingReg {
            entries: MAX_PBUF_ENTRIES * 2,
            count: 1,
            ..reg()
        },
        BufRingReg {
            entries: u32::MAX,
            ..reg()
        },
        BufRingReg { count: 0, ..reg() },
        BufRingReg { count: 9, ..reg() },
        BufRingReg {
            buf_size: 0,
            ..reg()
        },
        BufRingReg {
            buf_size: MAX_PBUF_SIZE + 1,
            ..reg()
        },
        // count * size above MAX_PBUF_BYTES.
        BufRingReg {
            entries: MAX_PBUF_ENTRIES,
            count: MAX_PBUF_ENTRIES,
            buf_size: MAX_PBUF_SIZE,
            ..reg()
        },
        BufRingReg {
            group: MAX_BUF_GROUPS,
            ..reg()
        },
        BufRingReg {
            resv: [0, 1],
            ..reg()
        },
        BufRingReg {
            ring_addr: 0,
            ..reg()
        },
        BufRingReg {
            ring_addr: 0x10001,
            ..reg()
        },
        BufRingReg {
            bufs_addr: 0,
            ..reg()
        },
        // Ranges that wrap or reach kernel addresses.
        BufRingReg {
            ring_addr: u64::MAX - 63,
            ..reg()
        },
        BufRingReg {
            bufs_addr: u64::MAX - 4095,
            ..reg()
        },
        BufRingReg {
            bufs_addr: USER_END - 4096,
            ..reg()
        },
        BufRingReg {
            ring_addr: 0xffff_8880_0000_0000,
            ..reg()
        },
    ];
    for c in cases {
        assert_eq!(validate_buf_ring(&c, USER_END), bad, "{c:?}");
    }
}
