// SPDX-License-Identifier: GPL-2.0
/*
 * Wrappers for what Linux 7.3 offers only as static inline functions, so that the
 * Rust part of fastio.ko can call them. Nothing else lives here.
 */
#include <linux/cred.h>
#include <linux/fs.h>
#include <linux/poll.h>
#include <linux/sched.h>
#include <linux/uio.h>
#include <linux/wait.h>

/* need_resched(): this CPU has a reschedule request pending (incl. the lazy one). */
bool fastio_need_resched(void)
{
	return need_resched();
}

/* get_current_cred(): a counted reference to the caller's credentials. */
const struct cred *fastio_get_current_cred(void)
{
	return get_current_cred();
}

/* override_creds()/revert_creds(): run as `cred` (no reference taken: the caller's
 * counted reference must outlive the window). */
const struct cred *fastio_override_creds(const struct cred *cred)
{
	return override_creds(cred);
}

void fastio_revert_creds(const struct cred *old)
{
	revert_creds(old);
}

/* init_waitqueue_func_entry() */
void fastio_init_wait_entry(struct wait_queue_entry *wq, wait_queue_func_t func)
{
	init_waitqueue_func_entry(wq, func);
}

/* vfs_poll() through `pt`, whose queue callback is `qproc` and key `events`; `pt` is
 * embedded in the caller's request so that `qproc` can find the request. */
__poll_t fastio_vfs_poll(struct file *file, struct poll_table_struct *pt,
			 poll_queue_proc qproc, __poll_t events)
{
	init_poll_funcptr(pt, qproc);
	pt->_key = events;
	return vfs_poll(file, pt);
}


/*
 * A read that only copies what is in the page cache (IOCB_NOWAIT | IOCB_NOIO), for the
 * polling workers' first attempt at a regular file. RWF_NOWAIT alone still starts
 * readahead, and submitting its bios may sleep (waiting for a free request when the
 * device's queue is full): a polling worker must never sleep. What is not cached is
 * read by a workqueue worker, readahead included. No RWF_* flag asks for IOCB_NOIO,
 * hence the kiocb built here.
 */
ssize_t fastio_read_cached(struct file *file, struct iov_iter *iter, loff_t *pos)
{
	struct kiocb kiocb;
	ssize_t ret;

	init_sync_kiocb(&kiocb, file);
	kiocb.ki_flags |= IOCB_NOWAIT | IOCB_NOIO;
	kiocb.ki_pos = *pos;
	ret = vfs_iocb_iter_read(file, &kiocb, iter);
	if (ret > 0)
		*pos = kiocb.ki_pos;
	return ret;
}
