// SPDX-License-Identifier: GPL-2.0
/*
 * Wrappers for what Linux 7.3 offers only as static inline functions, so that the
 * Rust part of fastio.ko can call them. Nothing else lives here.
 */
#include <linux/sched.h>

/* need_resched(): this CPU has a reschedule request pending (incl. the lazy one). */
bool fastio_need_resched(void)
{
	return need_resched();
}
